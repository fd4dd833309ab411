"""Bounded reads of market.bars.1m: the tail at start-up, and a time range for replay/backfill.

Time ranges come from the records' own `ts`, never from offsets_for_times (Tansu answers 0 for
every timestamp). The high watermark can be a lower bound (Tansu reports the last batch's base
offset), so a read goes on past it until the partition has been quiet for `quiet_s`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.clients import read_to_end
from pipeline.errors import ConfigError, DecodeError, PipelineError
from pipeline.kafka import consumer_config
from pipeline.settings import Settings
from schemas.codec import Codec, decode
from schemas.records import Bar


def read_tail(
    settings: Settings,
    bootstrap: str,
    codec: Codec,
    topic: str,
    *,
    per_partition: int,
    quiet_s: float = 0.5,
    timeout_s: float = 60.0,
) -> list[Bar]:
    """About the last `per_partition` bars of each partition (more when the watermark lags)."""
    conf = consumer_config(
        settings,
        bootstrap,
        group_id=f"ops-pipeline-bars-tail-{time.monotonic_ns()}",
        **{"enable.partition.eof": True, "fetch.queue.backoff.ms": 10},
    )
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ConfigError(f"no topic {topic!r}: run `ops-pipeline topics create`")
        parts = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            parts.append(TopicPartition(topic, p, max(low, high - per_partition)))
        consumer.assign(parts)
        return list(_drain(consumer, codec, topic, len(parts), quiet_s, timeout_s))
    finally:
        consumer.close()


def _drain(
    consumer: Consumer, codec: Codec, topic: str, n_parts: int, quiet_s: float, timeout_s: float
) -> Iterator[Bar]:
    reached: set[int] = set()
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is None:
            if len(reached) == n_parts and time.monotonic() - last >= quiet_s:
                return
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                reached.add(msg.partition() or 0)
                continue
            raise PipelineError(f"reading {topic}: {err}")
        last = time.monotonic()
        try:
            headers: Any = msg.headers()
            yield decode(codec, Bar, msg.value(), headers, topic=topic,
                         partition=msg.partition(), offset=msg.offset())
        except DecodeError:
            continue  # not ours to judge here; the topic's consumers route it to the DLQ
    raise PipelineError(f"reading the tail of {topic}: not at its end after {timeout_s}s")


def read_range(
    settings: Settings,
    bootstrap: str,
    codec: Codec,
    topic: str,
    start: datetime,
    end: datetime,
    *,
    symbols: set[str] | None = None,
    quiet_s: float = 0.5,
) -> list[Bar]:
    """Every decodable bar of `topic` with start <= ts < end, in topic order per partition."""
    out = []
    for m in read_to_end(settings, bootstrap, topic, quiet_s=quiet_s, timeout_s=600.0):
        try:
            bar = decode(codec, Bar, m.value, m.headers, topic=topic, partition=m.partition, offset=m.offset)
        except DecodeError:
            continue
        if start <= bar.ts < end and (symbols is None or bar.symbol in symbols):
            out.append(bar)
    return out
