"""`status` against the real broker and PostgreSQL: stale symbols, lagging groups, tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition

from opsinfra.endpoints import resolve
from opsinfra.kafka_config import consumer_config
from opsinfra.settings import Settings
from pipeline.status import Thresholds, collect
from schemas.codec import HeaderCodec
from schemas.records import Bar
from schemas.topic_io import RecordProducer
from schemas.topics import BARS

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 20, 15, 0, 30, tzinfo=UTC)  # a Friday, market open since 14:30
OPEN = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def _bar(sym: str, minute: int) -> Bar:
    return Bar(sym, OPEN + timedelta(minutes=minute), 10.0, 11.0, 9.0, 10.5, 100, None, None, "live", 0)


@pytest.fixture
def scoped(provisioned: Settings) -> Settings:
    return provisioned.model_copy(update={"pipeline_symbols": ("AAPL", "MSFT")})


def test_fresh_symbols_are_healthy_and_a_stale_one_is_named(scoped: Settings, kafka_bootstrap: str) -> None:
    with RecordProducer(scoped, kafka_bootstrap, HeaderCodec()) as producer:
        for m in range(30):  # AAPL complete to 14:59
            producer.send(BARS, _bar("AAPL", m))
        for m in [*range(0, 12), *range(14, 20)]:  # MSFT stopped at 14:49, two minutes missing
            producer.send(BARS, _bar("MSFT", m))
    report = collect(scoped, resolve(scoped), now=NOW)
    by = {s.symbol: s for s in report.symbols}
    assert by["AAPL"].missing_minutes == 0 and by["AAPL"].age_s == pytest.approx(30.0)
    assert by["MSFT"].missing_minutes == 2 + 10  # 14:42, 14:43 and 14:50..14:59
    assert report.market_open
    assert any(p.startswith("MSFT: no bar for") for p in report.problems)
    assert not any(p.startswith("AAPL") for p in report.problems)
    bars = next(t for t in report.topics if t.topic.endswith(BARS.name))
    assert bars.last_hour == 48  # produced just now
    assert report.tables["lane_telemetry"] == 0
    assert [(a.account, a.kill_switch, a.trades_today) for a in report.accounts] == [
        ("large-100k", False, 0),
        ("tiny-1k", False, 0),
    ]


def test_closed_market_is_not_stale(scoped: Settings) -> None:
    saturday = datetime(2026, 11, 21, 15, 0, tzinfo=UTC)
    report = collect(scoped, resolve(scoped), now=saturday)
    assert not report.market_open
    assert not any("no bar" in p for p in report.problems)


def test_a_group_that_does_not_commit_is_unhealthy(
    scoped: Settings, kafka_bootstrap: str, group_prefix: str
) -> None:
    with RecordProducer(scoped, kafka_bootstrap, HeaderCodec()) as producer:
        for m in range(30):
            producer.send(BARS, _bar("AAPL", m))
    group = f"{group_prefix}stuck"
    consumer = Consumer(consumer_config(scoped, kafka_bootstrap, group))
    topic = scoped.topic(BARS.name)
    consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in range(BARS.partitions)], asynchronous=False)
    consumer.close()
    time.sleep(1.5)
    report = collect(scoped, resolve(scoped), thresholds=Thresholds(max_wait_s=1.0))
    mine = next(g for g in report.groups if g.group == group)
    assert mine.partitions_behind >= 1 and mine.oldest_wait_s is not None and mine.oldest_wait_s >= 1.0
    assert any(group in p and "not committing" in p for p in report.problems)


def test_cli_json_and_exit_code(scoped: Settings, kafka_bootstrap: str, database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DATABASE_URL=database_url,
        PIPELINE_TOPIC_PREFIX=scoped.pipeline_topic_prefix,
        PIPELINE_SYMBOLS="AAPL",
        PYTHONWARNINGS="ignore",
    )
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    data = json.loads(res.stdout)
    assert res.returncode == (0 if data["healthy"] else 1)
    assert {t["topic"] for t in data["topics"]} >= {scoped.topic(BARS.name)}
    assert "lane_telemetry" in data["tables"]
