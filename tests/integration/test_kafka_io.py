"""Bounded reads against the real broker, in the batches librdkafka hands over: a partition ends at its
first message past `until_ms` (later ones skipped, even when older), `limit` is exact, and a batch's
parts taken out column-wise are the messages' own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from opsinfra.kafka_io import read_batches, read_to_end
from opsinfra.settings import Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

# (partition, timestamp ms) in the order produced; until_ms = 2500
MESSAGES = [(0, 1000), (0, 2000), (0, 3000), (0, 1500), (1, 1000), (1, 1100), (1, 2500)]
UNTIL_MS = 2500
EXPECTED = [(0, 0, 1000), (0, 1, 2000), (1, 0, 1000), (1, 1, 1100), (1, 2, 2500)]


@pytest.fixture
def topic(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> tuple[Settings, str, str]:
    settings = make_settings(kafka_bootstrap, "postgresql://unused", topic_prefix, tmp_path)
    name = f"{topic_prefix}reads"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)]).values():
        future.result(15)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i, (partition, stamp) in enumerate(MESSAGES):
        producer.produce(name, value=f"v{i}".encode(), key=f"k{i}".encode(), partition=partition,
                         timestamp=stamp, headers=[("h", str(i).encode())])  # fmt: skip
    assert producer.flush(15) == 0
    return settings, kafka_bootstrap, name


def test_a_partition_ends_at_its_first_message_past_until_ms(topic: tuple[Settings, str, str]) -> None:
    settings, bootstrap, name = topic
    one_by_one = read_to_end(settings, bootstrap, name, quiet_s=0.3, until_ms=UNTIL_MS)
    assert sorted((m.partition, m.offset, m.timestamp_ms) for m in one_by_one) == EXPECTED

    batches = read_batches(settings, bootstrap, name, quiet_s=0.3, until_ms=UNTIL_MS)
    rows: list[tuple[Any, ...]] = []
    for batch in batches:
        assert len(batch) == len(batch.values()) == len(batch.timestamps_ms)
        rows += zip(batch.partitions(), batch.offsets(), batch.timestamps_ms, batch.values(), batch.keys(),
                    batch.headers(), strict=True)  # fmt: skip
    assert sorted(r[:3] for r in rows) == EXPECTED
    for partition, _, stamp, value, key, headers in rows:  # each part is its own message's
        i = MESSAGES.index((partition, stamp))
        assert (value, key, headers) == (f"v{i}".encode(), f"k{i}".encode(), [("h", str(i).encode())])


def test_without_until_ms_everything_and_limit_is_exact(topic: tuple[Settings, str, str]) -> None:
    settings, bootstrap, name = topic
    everything = list(read_to_end(settings, bootstrap, name, quiet_s=0.3))
    assert len(everything) == len(MESSAGES)
    assert len(list(read_to_end(settings, bootstrap, name, quiet_s=0.3, limit=3))) == 3
