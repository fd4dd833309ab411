"""What the features agent does below faust: per-partition engine state, rebuilt from market.bars.1m
through the same `bar_inputs` + `apply` as live bars (so the two cannot drift apart), and the batch
sender that keeps the agent near faust's own per-message ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, KafkaError, TopicPartition

from opsinfra.errors import DecodeError, PipelineError
from opsinfra.kafka_config import consumer_config
from opsinfra.settings import Settings
from schemas.codec import Codec, RawHeaders, header_pairs
from schemas.records import Bar, Features
from trading.features import FeatureEngine, InvalidBar

BarInputs = tuple[str, Any, float, int, int]  # symbol, ts, close, volume, revision


def bar_inputs(
    codec: Codec,
    key: bytes | None,
    value: bytes | None,
    headers: RawHeaders,
    *,
    topic: str,
    partition: int,
    offset: int,
) -> BarInputs:
    """What the engine needs from one market.bars.1m message.

    Raises DecodeError for an undecodable value and InvalidBar for a bar whose key is not its
    symbol (it would sit in another symbol's partition and break per-symbol order).
    """
    data = codec.decode_dict(Bar, value, headers, topic=topic, partition=partition, offset=offset)
    try:
        symbol = data["symbol"]
        inputs = (symbol, data["ts"], data["close"], data["volume"], data.get("revision", 0))
    except KeyError as exc:
        raise DecodeError(f"record: missing {exc}", topic=topic, partition=partition, offset=offset) from exc
    if key is None or key.decode("utf-8", "replace") != symbol:
        raise InvalidBar(f"key {key!r} is not the bar's symbol {symbol!r}")
    return inputs


@dataclass
class PartitionState:
    """The engines of the symbols of one partition, after applying every bar below next_offset."""

    engines: dict[str, FeatureEngine] = field(default_factory=dict)
    next_offset: int = 0
    generation: int | None = None  # the consumer generation that last delivered to it

    def apply(self, inputs: BarInputs) -> Features | None:
        """FeatureEngine.update on the bar's symbol (raises OutOfOrderBar / InvalidBar likewise)."""
        symbol, ts, close, volume, revision = inputs
        engine = self.engines.get(symbol)
        if engine is None:
            engine = self.engines[symbol] = FeatureEngine(symbol)
        return engine.update(ts, close, volume, revision)


@dataclass(frozen=True)
class Replayed:
    bars: int
    skipped: int  # undecodable, invalid or out of order: the live run dead-lettered them
    seconds: float


def replay_into(
    state: PartitionState,
    codec: Codec,
    messages: Iterator[tuple[int, bytes | None, bytes | None, RawHeaders]],
    *,
    topic: str,
    partition: int,
    end: int,
) -> Replayed:
    """Apply replayed messages (offset, key, value, headers) below `end`; outputs are dropped."""
    start = time.monotonic()
    bars = skipped = 0
    for offset, key, value, headers in messages:
        if offset < state.next_offset:
            continue
        try:
            state.apply(
                bar_inputs(codec, key, value, headers, topic=topic, partition=partition, offset=offset)
            )
            bars += 1
        except Exception:  # what the live agent dead-lettered, the replay skips
            skipped += 1
        state.next_offset = offset + 1
    state.next_offset = end
    return Replayed(bars, skipped, time.monotonic() - start)


def read_partition(
    settings: Settings,
    bootstrap: str,
    topic: str,
    partition: int,
    start: int,
    end: int,
    *,
    timeout_s: float = 120.0,
) -> Iterator[tuple[int, bytes | None, bytes | None, RawHeaders]]:
    """The messages of one partition with start <= offset < end, where offset `end` is known to exist.

    Stops on the first message at or past end - 1 rather than on the reported high watermark, which
    some brokers under-report (Tansu: the base offset of the last batch). Reads uncommitted data,
    as faust's consumer does, so the replay sees exactly what the live agent saw.
    """
    if start >= end:
        return
    conf = consumer_config(
        settings,
        bootstrap,
        group_id=f"ops-pipeline-features-replay-{time.monotonic_ns()}",
        **{
            "isolation.level": "read_uncommitted",
            "fetch.queue.backoff.ms": 10,
            "fetch.wait.max.ms": 10,  # the end is known to exist: no reason to wait for more
            "enable.partition.eof": False,
        },
    )
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout_s
        while True:
            msgs = consumer.consume(num_messages=1000, timeout=0.5)
            if not msgs and time.monotonic() > deadline:
                raise PipelineError(
                    f"replaying {topic}[{partition}] {start}..{end}: stalled for {timeout_s}s"
                )
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise PipelineError(f"replaying {topic}[{partition}]: {err}")
                offset = msg.offset()
                assert offset is not None
                if offset >= end:
                    return
                raw_headers: Any = msg.headers()
                yield offset, msg.key(), msg.value(), header_pairs(raw_headers)
                if offset >= end - 1:
                    return
            if msgs:
                deadline = time.monotonic() + timeout_s
    finally:
        consumer.close()


class BatchSender:
    """Sends records to one topic as one aiokafka batch per partition and call, one future a batch.

    faust's `producer.send` goes through two layers per record; the batch API costs a fraction of
    that. Partitions come from the same murmur2 partitioner faust and librdkafka use for keyed
    records, so a symbol lands on the same partition in every topic.
    """

    def __init__(self, app: Any, topic: str) -> None:
        self.app = app
        self.topic = topic
        self._producer: Any = None
        self._partitions: list[int] = []
        self._by_key: dict[bytes, int] = {}
        self._partitioner = DefaultPartitioner()

    async def start(self) -> None:
        # faust exposes no public handle on its aiokafka producer; this is the one it sends with.
        self._producer = self.app.producer._ensure_producer()
        self._partitions = sorted(await self._producer.partitions_for(self.topic))

    def partition(self, key: bytes) -> int:
        part = self._by_key.get(key)
        if part is None:
            part = self._by_key[key] = self._partitioner(key, self._partitions, self._partitions)
        return part

    async def send(self, records: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]]) -> list[Any]:
        """Queue `records` (partition -> [(key, value, headers)]); returns delivery futures."""
        if self._producer is None:
            await self.start()
        producer = self._producer
        futures = []
        for part, rows in records.items():
            batch = producer.create_batch()
            for key, value, headers in rows:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(batch, self.topic, partition=part))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        raise ValueError(f"a {len(value)}-byte record does not fit in a batch")
            futures.append(await producer.send_batch(batch, self.topic, partition=part))
        return futures
