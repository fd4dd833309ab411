"""`status` against the real broker and PostgreSQL: stale symbols, lagging groups, tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from opsinfra.endpoints import resolve
from opsinfra.kafka_config import consumer_config
from opsinfra.settings import Settings
from pipeline.status import HeldPosition, ReconcileOutcome, Thresholds, account_tables, collect
from schemas.codec import HeaderCodec
from schemas.records import (
    Bar,
    BrokerAccount,
    BrokerPosition,
    EquityPoint,
    Execution,
    GateResult,
    ReconcileEvent,
)
from schemas.topic_io import RecordProducer
from schemas.topics import BARS, BROKER_ACCOUNTS, BROKER_POSITIONS, EQUITY, EXECUTIONS, RECONCILE

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
    later = datetime.now(UTC) + timedelta(seconds=5)  # the records were written just now
    report = collect(scoped, resolve(scoped), now=later, thresholds=Thresholds(max_wait_s=1.0))
    mine = next(g for g in report.groups if g.group == group)
    assert mine.partitions_behind >= 1 and mine.oldest_wait_s is not None and mine.oldest_wait_s >= 5.0
    assert any(group in p and "not committing" in p for p in report.problems)


def test_cli_json_and_exit_code(scoped: Settings, kafka_bootstrap: str, database_url: str) -> None:
    """The verdict of `status --now`: healthy with AAPL's last bar a minute old, unhealthy ten
    minutes later (the market open both times), whatever the real clock says."""
    with RecordProducer(scoped, kafka_bootstrap, HeaderCodec()) as producer:
        for m in range(30):  # AAPL complete to 14:59
            producer.send(BARS, _bar("AAPL", m))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DATABASE_URL=database_url,
        PIPELINE_TOPIC_PREFIX=scoped.pipeline_topic_prefix,
        PIPELINE_SYMBOLS="AAPL",
        PYTHONWARNINGS="ignore",
    )
    env.pop("SCHEMA_REGISTRY_URL", None)

    def status(now: datetime) -> tuple[int, dict[str, Any]]:
        res = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "status", "--json", "--now", now.isoformat()],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.stdout.strip(), res.stderr[-3000:]
        return res.returncode, json.loads(res.stdout)

    code, data = status(NOW)
    assert (code, data["healthy"], data["problems"]) == (0, True, []), data["problems"]
    assert data["now"] == NOW.isoformat() and data["market_open"] is True
    assert {t["topic"] for t in data["topics"]} >= {scoped.topic(BARS.name)}
    assert "lane_telemetry" in data["tables"]
    code, data = status(NOW + timedelta(minutes=10))
    assert (code, data["healthy"], data["market_open"]) == (1, False, True)
    assert [p for p in data["problems"] if p.startswith("AAPL: no bar for")], data["problems"]


def _snapshot(account: str, ago_s: float, equity: float, cash: float, bp: float) -> BrokerAccount:
    return BrokerAccount(account, NOW - timedelta(seconds=ago_s), "ACTIVE", "USD", cash, bp, cash, equity,
                         equity - 500, None, None, 2, False, [], "poll")


def _held(account: str, symbol: str, ago_s: float, qty: float, upl: float, origin: str = "pipeline",
          asset_class: str = "us_equity") -> BrokerPosition:
    return BrokerPosition(account, symbol, NOW - timedelta(seconds=ago_s), asset_class, qty, 3.1,
                          abs(qty) * 4.2 * (100 if asset_class == "us_option" else 1), None, upl, None, 4.2,
                          origin, multiplier=100.0 if asset_class == "us_option" else 1.0)


def test_each_account_shows_its_money_positions_and_last_reconcile(
    scoped: Settings, kafka_bootstrap: str
) -> None:
    accounts = [{"base": "large-100k", "mode": "alpaca-paper"}, {"base": "tiny-1k"},
                {"base": "tiny-1k", "name": "idle"},
                {"base": "large-100k", "name": "stale", "mode": "alpaca-paper"}]
    settings = scoped.model_copy(update={"pipeline_accounts": json.dumps(accounts)})
    call = "QCOM260206C00150000"
    fill = Execution("4b9d1c5e-0000-5000-8000-000000000014", "tiny-1k", "AAPL", "BUY", "SIMULATED",
                     [GateResult("confidence", True, 0.8, 0.7, "ok")], None, 2.0, 10.0, OPEN,
                     None, None, "simulate", OPEN + timedelta(seconds=5))
    with RecordProducer(settings, kafka_bootstrap, HeaderCodec()) as producer:
        for m in range(30):
            producer.send(BARS, _bar("AAPL", m))  # the last close, 10.5, marks tiny-1k's AAPL
        producer.send(EXECUTIONS, fill)
        for record in (
            _snapshot("large-100k", 45, 121_000.0, 95_000.0, 190_000.0),
            _snapshot("large-100k", 600, 120_000.0, 96_000.0, 192_000.0),  # older, read later
            _snapshot("stale", 600, 50_000.0, 50_000.0, 100_000.0),
        ):
            producer.send(BROKER_ACCOUNTS, record)
        for record in (
            _held("large-100k", "AAPL", 600, 10.0, 9.5), _held("large-100k", "AAPL", 45, 0.0, 0.0),  # closed
            _held("large-100k", call, 45, 2.0, 220.0, "external", "us_option"),
            _held("large-100k", "MSFT", 45, -5.0, -12.5),
        ):
            producer.send(BROKER_POSITIONS, record)
        for record in (
            ReconcileEvent("large-100k", NOW - timedelta(seconds=60), NOW - timedelta(seconds=59),
                           "closed_at_broker", "AAPL", "OPEN 10", "flat", "adopted", "sold by hand"),
            ReconcileEvent("large-100k", NOW - timedelta(seconds=300), NOW - timedelta(seconds=299),
                           "quantity", "MSFT", "-4", "-5", "adopted", ""),
        ):
            producer.send(RECONCILE, record)
        for ago, equity in ((120, 1_005.0), (60, 1_010.5), (600, 999.0)):
            producer.send(EQUITY, EquityPoint("tiny-1k", NOW - timedelta(seconds=ago), equity, 990.0, 0.0,
                                              equity - 1_000, 1, "desk"))
        producer.send(EQUITY, EquityPoint("large-100k", NOW, 1.0, 1.0, 0.0, 0.0, 0, "broker"))  # not shown
    report = collect(settings, resolve(settings), now=NOW)
    by = {a.account: a for a in report.accounts}
    large, tiny, idle = by["large-100k"], by["tiny-1k"], by["idle"]
    assert (large.source, large.equity, large.cash, large.buying_power) == ("broker", 121_000.0, 95_000.0,
                                                                             190_000.0)
    assert large.age_s == pytest.approx(45.0) and large.as_of == (NOW - timedelta(seconds=45)).isoformat()
    assert large.positions == [
        HeldPosition("MSFT", -5.0, "pipeline", "us_equity", 3.1, 21.0, -12.5),
        HeldPosition(call, 2.0, "external", "us_option", 3.1, 840.0, 220.0),
    ]
    assert large.last_reconcile == ReconcileOutcome(
        "closed_at_broker", "AAPL", "adopted", (NOW - timedelta(seconds=59)).isoformat())
    # a simulate account: the desk's latest equity point, its book marked at the last bar's close
    assert (tiny.source, tiny.equity, tiny.cash, tiny.buying_power) == ("equity", 1_010.5, 990.0, None)
    assert tiny.age_s == pytest.approx(60.0) and tiny.last_reconcile is None
    assert tiny.positions == [HeldPosition("AAPL", 2.0, "pipeline", "us_equity", 10.0, 21.0, 1.0)]
    assert (idle.source, idle.equity, idle.age_s, idle.positions) == ("none", None, None, [])
    # an account whose gates read the broker, with a snapshot older than its limit (90 s)
    assert "account stale: broker snapshot 600s old, over 90s (its entries fail closed)" in report.problems
    assert not any("large-100k" in p for p in report.problems)
    # the JSON output carries the same figures, the text output names the missing snapshot
    data = json.loads(json.dumps(report.to_json()))
    assert data["accounts"][0]["positions"][1] == {
        "symbol": call, "qty": 2.0, "origin": "external", "asset_class": "us_option", "avg_price": 3.1,
        "market_value": 840.0, "unrealized_pl": 220.0}
    money, held = account_tables(report)
    assert money.row_count == 4 and held.row_count == 3
    assert list(money.columns[4].cells) == ["broker snapshot", "no broker snapshot; desk equity point",
                                            "no broker snapshot", "broker snapshot"]
