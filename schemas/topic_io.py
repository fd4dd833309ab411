"""Contract records onto and off topics: the codec over the Kafka layer's producer and reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opsinfra.errors import DecodeError
from opsinfra.kafka_io import BytesProducer, Consumed, read_to_end
from opsinfra.settings import Settings
from schemas.codec import Codec, decode
from schemas.records import DeadLetter, Record
from schemas.topics import TopicSpec


class RecordProducer(BytesProducer):
    """Produces contract records with the codec, under the settings' topic prefix (or `prefix`)."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        codec: Codec,
        *,
        prefix: str | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(settings, bootstrap, **overrides)
        self.codec = codec
        self.prefix = settings.pipeline_topic_prefix if prefix is None else prefix

    def send(self, spec: TopicSpec, record: Record, *, key: str | None = None) -> None:
        topic = self.prefix + spec.name
        value, headers = self.codec.encode(topic, record)
        self._produce(topic, (key if key is not None else record.key()).encode(), value, headers)

    def send_dlq(self, spec: TopicSpec, letter: DeadLetter) -> None:
        topic = self.prefix + spec.dlq.name
        value, headers = self.codec.encode(topic, letter)
        self._produce(topic, letter.original_key, value, headers)


def read_decoded(
    settings: Settings, bootstrap: str, codec: Codec, record_type: type[Record], topic: str, **kwargs: Any
) -> Iterator[tuple[Consumed, Record | DecodeError]]:
    """`read_to_end` of a (physical) topic, each message decoded as `record_type`; an undecodable
    message comes back as its DecodeError."""
    for m in read_to_end(settings, bootstrap, topic, **kwargs):
        try:
            rec: Record | DecodeError = decode(
                codec, record_type, m.value, m.headers, topic=topic, partition=m.partition, offset=m.offset
            )
        except DecodeError as exc:
            rec = exc
        yield m, rec


def read_records(
    settings: Settings,
    bootstrap: str,
    codec: Codec,
    spec: TopicSpec,
    *,
    prefix: str | None = None,
    **kwargs: Any,
) -> list[tuple[Consumed, Record | DecodeError]]:
    """A bounded read of one contract topic, decoded; undecodable messages come back as errors."""
    topic = (settings.pipeline_topic_prefix if prefix is None else prefix) + spec.name
    return list(read_decoded(settings, bootstrap, codec, spec.record, topic, **kwargs))
