"""The typed adapter around confluent-kafka: a producer and bounded reads that trust no high
watermark, bytes in and out (schemas.topic_io puts the contract's codec on top).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Self

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from opsinfra.errors import PipelineError
from opsinfra.kafka_config import admin_config, consumer_config, producer_config
from opsinfra.settings import Settings

log = logging.getLogger(__name__)
_STAMP = itemgetter(1)  # of a message's (timestamp type, timestamp)
BATCH_SIZE = 10_000  # messages a consume() call hands over at most
FETCH_BYTES = 8 << 20  # per partition and fetch when reading a topic through (librdkafka's default: 1 MiB)
FETCH_WAIT_MS = 50  # an empty fetch (which tells a partition's end on Tansu) in 50 ms, not 500


class DeliveryError(PipelineError):
    """The broker did not acknowledge a produced message."""

    hint = "is the broker running? check KAFKA_BOOTSTRAP_SERVERS"


class BytesProducer:
    """Produces raw messages; idempotent and acks=all (see kafka_config), delivery errors kept for
    `flush` to raise. schemas.topic_io.RecordProducer adds the codec on top."""

    def __init__(self, settings: Settings, bootstrap: str, **overrides: Any) -> None:
        self._errors: list[str] = []
        self._producer = Producer(producer_config(settings, bootstrap, **overrides))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        self._produce(topic, key, value, list(headers))

    def _produce(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        hdrs: list[tuple[str, str | bytes | None]] = list(headers)
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=hdrs, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} message(s) not delivered within {timeout}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError(f"{len(errors)} message(s) failed: {errors[:3]}")

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Consumed:
    """One raw message as read from the broker."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)


def _drain_batches(
    consumer: Consumer,
    ends: dict[tuple[str, int], int],
    what: str,
    *,
    quiet_s: float,
    timeout_s: float,
    finished: set[tuple[str, int]] | None = None,
    poll_s: float = 0.1,
    strict: bool = True,
    batch_size: int = BATCH_SIZE,
) -> Iterator[list[Message]]:
    """The messages of an assigned consumer (with `enable.partition.eof`), a consume() call's worth
    at a time, until every partition of `ends` has reported EOF at or past its end there (the
    broker's end offsets as read before, so a partition that reports EOF early, at an end it has
    since moved past, is not taken as done) and nothing has arrived for `quiet_s`: the reported end
    is a lower bound on some brokers (Tansu: its last batch's base offset + 1), the quiet period
    covers the rest. Partitions the caller adds to `finished` count as ended and their further
    messages are skipped. After `timeout_s`: PipelineError, or (not `strict`) the end."""
    finished = set() if finished is None else finished
    partitions = set(ends)
    reached: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline:
        if finished >= partitions:
            return
        batch = consumer.consume(batch_size, poll_s)
        now = time.monotonic()
        if not batch:
            if (reached | finished) >= partitions and now - last >= quiet_s:
                return
            continue
        if any(map(Message.error, batch)) or finished:  # EOFs, errors or skips: message by message
            kept = []
            for msg in batch:
                key = (msg.topic() or "", msg.partition() or 0)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if (msg.offset() or 0) >= ends.get(key, 0):
                            reached.add(key)
                        continue
                    raise PipelineError(f"{what}: {err}")
                if key not in finished:
                    kept.append(msg)
            batch = kept
        if batch:
            last = now
            yield batch
        elif (reached | finished) >= partitions and now - last >= quiet_s:
            return  # only messages of finished partitions go on arriving (a topic being written)
    if strict:
        raise PipelineError(f"{what}: not at its end after {timeout_s}s")


def _drain(consumer: Consumer, ends: dict[tuple[str, int], int], what: str, **kwargs: Any) -> Iterator[Any]:
    """`_drain_batches`, one message at a time."""
    for batch in _drain_batches(consumer, ends, what, **kwargs):
        yield from batch


def _consumed(msg: Any) -> Consumed:
    raw_headers: Any = msg.headers() or []
    return Consumed(
        msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1], msg.key(), msg.value(),
        list(raw_headers),
    )  # fmt: skip


class MessageBatch:
    """Messages of one topic as librdkafka handed them over, their parts taken out column-wise
    (one C call per message and part, no object per message): for readers that decode columns."""

    __slots__ = ("messages", "timestamps_ms")

    def __init__(self, messages: list[Message], timestamps_ms: list[int]) -> None:
        self.messages = messages
        self.timestamps_ms = timestamps_ms  # taken out already, to find the messages past until_ms

    def __len__(self) -> int:
        return len(self.messages)

    def values(self) -> list[bytes | None]:
        return list(map(Message.value, self.messages))

    def headers(self) -> list[Any]:
        """Each message's headers: a list of (name, value) pairs, or None."""
        return list(map(Message.headers, self.messages))

    def keys(self) -> list[bytes | None]:
        return list(map(Message.key, self.messages))

    def partitions(self) -> list[int]:
        return list(map(Message.partition, self.messages))  # type: ignore[arg-type]

    def offsets(self) -> list[int]:
        return list(map(Message.offset, self.messages))  # type: ignore[arg-type]


def read_batches(
    settings: Settings,
    bootstrap: str,
    topic: str,
    *,
    quiet_s: float = 1.0,
    timeout_s: float = 120.0,
    until_ms: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> Iterator[MessageBatch]:
    """Every message of a topic from the beginning to its end as of now, without a group commit,
    in batches (`read_to_end`, without a Python object per message: see it for the end and
    `until_ms`)."""
    conf = consumer_config(
        settings,
        bootstrap,
        group_id=f"ops-pipeline-reader-{time.monotonic_ns()}",
        **{"enable.partition.eof": True, "fetch.queue.backoff.ms": 10,
           "max.partition.fetch.bytes": FETCH_BYTES, "fetch.wait.max.ms": FETCH_WAIT_MS},
    )  # fmt: skip
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=15)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None:
            raise PipelineError(f"no such topic {topic!r}")
        parts = [TopicPartition(topic, p, 0) for p in sorted(tmeta.partitions)]
        consumer.assign(parts)
        past: set[tuple[str, int]] = set()  # partitions past until_ms
        known = end_offsets(settings, bootstrap, [topic])
        for batch in _drain_batches(
            consumer, {(topic, tp.partition): known.get((topic, tp.partition), 0) for tp in parts},
            f"reading {topic}",
            quiet_s=quiet_s, timeout_s=timeout_s, finished=past, batch_size=batch_size,
            poll_s=min(0.1, quiet_s / 4),  # the quiet period ends within a quarter of itself
        ):  # fmt: skip
            stamps = list(map(_STAMP, map(Message.timestamp, batch)))
            if until_ms is not None and max(stamps) > until_ms:  # a partition ends at its first later one
                keep = []
                for msg, stamp in zip(batch, stamps, strict=True):
                    key = (topic, msg.partition() or 0)
                    if key not in past and stamp > until_ms:
                        past.add(key)
                    if key not in past:
                        keep.append(msg)
                if not keep:
                    continue
                batch, stamps = keep, list(map(_STAMP, map(Message.timestamp, keep)))
            yield MessageBatch(batch, stamps)
    finally:
        consumer.close()


def read_to_end(
    settings: Settings,
    bootstrap: str,
    topic: str,
    *,
    quiet_s: float = 1.0,
    timeout_s: float = 120.0,
    limit: int | None = None,
    until_ms: int | None = None,
) -> Iterator[Consumed]:
    """Every message of a topic from the beginning to its end as of now, without a group commit.

    The reported high watermark is a lower bound on some brokers (Tansu reports the base offset of
    the last batch), so after reaching it we keep reading until nothing arrives for `quiet_s`.
    With `until_ms`, a partition is also done at its first message timestamped later than that, so
    a read of a topic that is being written to still ends (those later messages are not returned).
    """
    count = 0
    for batch in read_batches(
        settings, bootstrap, topic, quiet_s=quiet_s, timeout_s=timeout_s, until_ms=until_ms,
        batch_size=BATCH_SIZE if limit is None else max(1, min(BATCH_SIZE, limit)),
    ):  # fmt: skip
        for msg in batch.messages:
            yield _consumed(msg)
            count += 1
            if limit is not None and count >= limit:
                return


def end_offsets(settings: Settings, bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The broker-reported end offset of every partition of `topics`, in one admin round trip.

    On some brokers (Tansu) this is a lower bound: see `read_to_end`; lag computed from it can be
    too small, so callers judge "drained" by what was consumed and committed.
    """
    admin = AdminClient(admin_config(settings, bootstrap))
    meta = admin.list_topics(timeout=15)
    request = {
        TopicPartition(name, p): OffsetSpec.latest()
        for name in topics
        if name in meta.topics
        for p in meta.topics[name].partitions
    }
    if not request:
        return {}
    result = admin.list_offsets(request, request_timeout=15)
    return {(tp.topic, tp.partition): fut.result().offset for tp, fut in result.items()}


def read_tail(
    settings: Settings,
    bootstrap: str,
    topic: str,
    *,
    per_partition: int,
    quiet_s: float = 0.3,
    timeout_s: float = 60.0,
) -> list[Consumed]:
    """About the last `per_partition` messages of each partition (more where the watermark lags)."""
    ends = end_offsets(settings, bootstrap, [topic])
    if not ends:
        return []
    conf = consumer_config(
        settings,
        bootstrap,
        group_id=f"ops-pipeline-tail-{time.monotonic_ns()}",
        **{"enable.partition.eof": True, "fetch.queue.backoff.ms": 10},
    )
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(t, p, max(0, end - per_partition)) for (t, p), end in ends.items()])
        return [
            _consumed(msg)
            for msg in _drain(
                consumer, ends, f"reading the tail of {topic}", quiet_s=quiet_s, timeout_s=timeout_s
            )
        ]
    finally:
        consumer.close()


def true_end_offsets(
    settings: Settings, bootstrap: str, topics: Sequence[str], *, quiet_s: float = 0.3
) -> dict[tuple[str, int], int]:
    """End offsets as `end_offsets` reports them, corrected by reading past them to the real end.

    On Redpanda, Kafka and MSK nothing lies past the reported end and this costs one quiet period;
    on Tansu the last batch does, and this finds it.
    """
    ends = end_offsets(settings, bootstrap, topics)
    if not ends:
        return ends
    conf = consumer_config(
        settings,
        bootstrap,
        group_id=f"ops-pipeline-ends-{time.monotonic_ns()}",
        **{"enable.partition.eof": True, "fetch.queue.backoff.ms": 10},
    )
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(t, p, end) for (t, p), end in ends.items()])
        messages = _drain(
            consumer, dict(ends), "reading to the end",
            quiet_s=quiet_s, timeout_s=30, poll_s=0.05, strict=False,
        )  # fmt: skip
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            ends[key] = max(ends.get(key, 0), msg.offset() + 1)
    except PipelineError as exc:  # a consumer error: the ends found so far, still lower bounds
        log.warning("true end offsets of %s: %s", ", ".join(topics), exc)
    finally:
        consumer.close()
    return ends
