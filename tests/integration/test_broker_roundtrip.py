"""Every contract record through the real broker, in both framings; topics created as specified."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient

from opsinfra.errors import DecodeError
from opsinfra.kafka_admin import create_topics, describe_topics, list_topics
from opsinfra.kafka_config import admin_config
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec, RegistryCodec
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import ALL_TOPICS, BARS, CONTRACT, SYMBOL_PARTITIONS
from tests.samples import sample_records

pytestmark = pytest.mark.integration
TS = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


def test_contract_topics_are_created_once_with_their_config(settings: Settings, kafka_bootstrap: str) -> None:
    admin = AdminClient(admin_config(settings, kafka_bootstrap))
    prefix = settings.pipeline_topic_prefix
    created = create_topics(admin, ALL_TOPICS, prefix=prefix)
    assert sorted(created) == sorted(prefix + t.name for t in ALL_TOPICS)
    assert create_topics(admin, ALL_TOPICS, prefix=prefix) == []  # idempotent
    found = list_topics(admin)
    for spec in ALL_TOPICS:
        assert found[prefix + spec.name] == spec.partitions
    infos = describe_topics(admin, [prefix + BARS.name, prefix + BARS.dlq.name])
    assert infos[0].config["retention.ms"] == str(BARS.retention_ms)
    assert infos[0].config["cleanup.policy"] == "delete"
    assert infos[0].partitions == SYMBOL_PARTITIONS
    assert infos[1].partitions == 1


@pytest.mark.parametrize("framing", ["headers", "mock_registry"])
def test_every_contract_record_round_trips_through_the_broker(
    provisioned: Settings, kafka_bootstrap: str, framing: str
) -> None:
    codec = HeaderCodec() if framing == "headers" else RegistryCodec("mock://broker-roundtrip")
    samples = sample_records(TS)
    with RecordProducer(provisioned, kafka_bootstrap, codec) as producer:
        for spec in CONTRACT:
            producer.send(spec, samples[spec.name])
    for spec in CONTRACT:
        got = read_records(provisioned, kafka_bootstrap, codec, spec, quiet_s=0.3)
        assert [r for _, r in got] == [samples[spec.name]], spec.name
        msg = got[0][0]
        assert msg.key == samples[spec.name].key().encode()
        assert msg.topic == provisioned.pipeline_topic_prefix + spec.name


def test_same_key_lands_on_one_partition_in_order(provisioned: Settings, kafka_bootstrap: str) -> None:
    codec = HeaderCodec()
    base = sample_records(TS)["market.bars.1m"]
    bars = [
        type(base)(sym, TS.replace(minute=m), 1.0, 2.0, 0.5, 1.5, 10 + m, None, None, "replay", 0)
        for sym in ("AAPL", "MSFT", "NVDA")
        for m in range(20)
    ]
    with RecordProducer(provisioned, kafka_bootstrap, codec) as producer:
        for bar in bars:
            producer.send(BARS, bar)
    got = read_records(provisioned, kafka_bootstrap, codec, BARS, quiet_s=0.3)
    assert len(got) == len(bars)
    for sym in ("AAPL", "MSFT", "NVDA"):
        mine = [(m, r) for m, r in got if r.symbol == sym]  # type: ignore[union-attr]
        assert len({m.partition for m, _ in mine}) == 1
        assert [r.ts.minute for _, r in sorted(mine, key=lambda x: x[0].offset)] == list(range(20))  # type: ignore[union-attr]


def test_a_poison_message_comes_back_as_a_typed_error(provisioned: Settings, kafka_bootstrap: str) -> None:
    codec = HeaderCodec()
    topic = provisioned.pipeline_topic_prefix + BARS.name
    with RecordProducer(provisioned, kafka_bootstrap, codec) as producer:
        producer.send_raw(
            topic, b"AAPL", b"not avro", [("ops.schema", b"ops.pipeline.Bar"), ("ops.schema.version", b"1")]
        )
        producer.send(BARS, sample_records(TS)["market.bars.1m"])
    got = read_records(provisioned, kafka_bootstrap, codec, BARS, quiet_s=0.3)
    errors = [r for _, r in got if isinstance(r, DecodeError)]
    assert len(errors) == 1 and len(got) == 2
    assert errors[0].topic == topic and errors[0].offset is not None and errors[0].partition is not None
