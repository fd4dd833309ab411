"""The watchdog on the real broker and PostgreSQL: a stage that never started is an alert (on the
alerts topic, in the alerts table) that resolves once it starts; the bar stream stopping in market
hours is an alert; a notifier that is down changes nothing for the rounds."""

from __future__ import annotations

import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from pipeline.watchdog import Watchdog, WatchdogConfig
from schemas.records import Alert, Bar
from schemas.topic_io import RecordProducer
from schemas.topics import ALERTS, BARS
from tests.integration.test_trading_helpers import read
from trading.calendar import TradingCalendar

pytestmark = pytest.mark.integration

CAL = TradingCalendar()


def _dog(settings: Settings, bootstrap: str, database_url: str, produce: RecordProducer, *,
         clock: Any = None, **config: Any) -> tuple[Watchdog, list[Alert]]:
    sent: list[Alert] = []

    def publish(alert: Alert) -> None:
        sent.append(alert)
        produce.send(ALERTS, alert)
        produce.flush()

    endpoints = Endpoints(bootstrap, database_url, None, embedded=False)
    dog = Watchdog(settings, endpoints, WatchdogConfig(**config), publish=publish, clock=clock, calendar=CAL)
    return dog, sent


def test_a_stage_never_started_alerts_and_resolves_once_it_runs(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, produce: RecordProducer
) -> None:
    from streams import features_agent

    dog, sent = _dog(provisioned, kafka_bootstrap, database_url, produce, stages=("features",),
                     stage_missing_for_s=3.0, market_rules=False)
    dog.round()
    assert sent == []  # pending: the condition must hold for its time first
    time.sleep(3.5)
    dog.round()
    assert [(a.rule, a.subject, a.state) for a in sent] == [("stage_missing", "features", "firing")]
    # the stage starts: its consumer group appears once it has committed something
    produce.send(BARS, Bar("AAPL", datetime(2026, 11, 20, 15, 0, tzinfo=UTC), 1, 1, 1, 1, 10))
    produce.flush()
    stop = threading.Event()
    endpoints = Endpoints(kafka_bootstrap, database_url, None, embedded=False)
    worker = threading.Thread(target=features_agent.run, args=(provisioned, endpoints, stop), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while len(sent) < 2:
            assert time.monotonic() < deadline, "the alert did not resolve"
            time.sleep(2.0)
            dog.round()
    finally:
        stop.set()
        worker.join(60)
    resolved = sent[1]
    assert (resolved.rule, resolved.subject, resolved.state) == ("stage_missing", "features", "resolved")
    assert resolved.started_at == sent[0].started_at
    on_topic = [a for a in read(provisioned, kafka_bootstrap, ALERTS) if isinstance(a, Alert)]
    assert [a.state for a in on_topic] == ["firing", "resolved"]


def _session_day() -> date:
    day = datetime.now(UTC).date() - timedelta(days=3)
    while CAL.session(day) is None:
        day -= timedelta(days=1)
    return day


def test_the_bar_stream_stopping_in_market_hours_is_an_alert(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, produce: RecordProducer
) -> None:
    session = CAL.session(_session_day())
    assert session is not None
    now = session.open + timedelta(hours=1)
    settings = provisioned.model_copy(update={"pipeline_symbols": ("AAPL", "MSFT")})
    for symbol in ("AAPL", "MSFT"):  # the last bars five minutes before `now`
        produce.send(BARS, Bar(symbol, now - timedelta(minutes=5), 100, 100, 100, 100, 10))
    produce.flush()
    dog, sent = _dog(settings, kafka_bootstrap, database_url, produce, clock=lambda: now, stages=())
    dog.round()
    assert [(a.rule, a.subject, a.severity) for a in sent] == [("bars_stopped", "market.bars.1m", "critical")]
    assert sent[0].details["symbols"] == "AAPL,MSFT"
    # the same facts on a closed day: nothing
    closed, sent_closed = _dog(settings, kafka_bootstrap, database_url, produce,
                               clock=lambda: now.replace(hour=2), stages=())
    closed.round()
    assert sent_closed == []


def test_alerts_reach_the_alerts_table_through_the_sink(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, produce: RecordProducer
) -> None:
    from sinks import postgres

    at = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    produce.send(ALERTS, Alert("stage_missing", "dispatch", "firing", "critical", at, at, "stage dispatch: missing",
                               {"group": "g"}))
    produce.send(ALERTS, Alert("stage_missing", "dispatch", "resolved", "critical", at, at + timedelta(minutes=3),
                               "resolved: stage dispatch: missing", {"group": "g"}))
    produce.flush()
    stop = threading.Event()
    endpoints = Endpoints(kafka_bootstrap, database_url, None, embedded=False)
    worker = threading.Thread(target=postgres.run, args=(provisioned, endpoints, stop), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        rows: list[Any] = []
        while len(rows) < 2 and time.monotonic() < deadline:
            time.sleep(1.0)
            with psycopg.connect(database_url) as conn:
                rows = conn.execute("SELECT rule, subject, state, details->>'group' FROM alerts "
                                    "ORDER BY at").fetchall()
    finally:
        stop.set()
        worker.join(60)
    assert rows == [("stage_missing", "dispatch", "firing", "g"), ("stage_missing", "dispatch", "resolved", "g")]


def test_operator_commands_publish_check_and_show_control(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, tmp_path: Any
) -> None:
    import json
    import os
    import subprocess
    import sys

    from pipeline import status
    from schemas.records import ControlEvent
    from schemas.topics import CONTROL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_"))}
    env.update(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DATABASE_URL=database_url, PYTHONWARNINGS="ignore",
               PIPELINE_TOPIC_PREFIX=provisioned.pipeline_topic_prefix, COLUMNS="200")

    def ops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    assert ops("halt", "--account", "tiny-1k", "--reason", "earnings week").returncode == 0
    assert ops("config", "set", "--account", "large-100k", "min_confidence=0.65").returncode == 0
    bad = ops("config", "set", "min_confidance=0.5")
    assert bad.returncode == 2 and "unknown setting 'min_confidance'" in bad.stderr
    unknown = ops("halt", "--account", "nope", "--reason", "x")
    assert unknown.returncode == 2 and "unknown account 'nope'" in unknown.stderr
    events = sorted((e for e in read(provisioned, kafka_bootstrap, CONTROL) if isinstance(e, ControlEvent)),
                    key=lambda e: e.at)
    assert [(e.account, e.action) for e in events] == [("tiny-1k", "halt"), ("large-100k", "set")]
    shown = json.loads(ops("config", "show", "--json").stdout)
    by_name = {a["account"]: a for a in shown["accounts"]}
    assert by_name["tiny-1k"]["halted"]["reason"] == "earnings week"
    assert by_name["large-100k"]["config"]["min_confidence"] == 0.65 and by_name["large-100k"]["halted"] is None
    report = status.collect(provisioned, Endpoints(kafka_bootstrap, database_url, None, embedded=False))
    assert [c["account"] for c in report.control if c["halted"]] == ["tiny-1k"]
    assert any("tiny-1k: HALTED by the operator" in p for p in report.problems)
    assert ops("resume", "--account", "tiny-1k").returncode == 0
    shown = json.loads(ops("config", "show", "--json").stdout)
    assert {a["account"]: a["halted"] for a in shown["accounts"]}["tiny-1k"] is None
