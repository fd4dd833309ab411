"""Parity, the first-class test: the sample session through the live stages on the broker (bar
clock) makes exactly the decisions an in-process backtest of the same bars and news makes.

It runs `ops-pipeline demo` against the fixtures' broker and PostgreSQL; the demo compares the live
recommendations (ids, actions, confidences) and executions (action, status, intent, failure reason,
quantity, price, bar used, every gate's outcome, value and limit) with the backtest's and exits 1
if any differs, and runs the runbook checks; this test runs the executions topic's own checks
(a decision twice, no bar used, an order left SUBMITTED) on what the live stages wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from opsinfra.settings import Settings
from pipeline.runbook import LiveRecords, execution_checks
from schemas.codec import make_codec

pytestmark = pytest.mark.integration


def test_live_stages_and_backtest_decide_identically(
    settings: Settings, kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_", "SCHEMA_REGISTRY_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DATABASE_URL=database_url,
        PIPELINE_TOPIC_PREFIX=settings.pipeline_topic_prefix,
        PIPELINE_DATA_DIR=str(tmp_path / "data"),
        HF_HUB_OFFLINE="1",
        COLUMNS="160",
        PYTHONWARNINGS="ignore",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "reports" / "demo" / "demo_summary.json").read_text())
    parity = summary["parity"]
    assert parity["identical"] is True
    assert parity["live_decisions"] == parity["backtest_decisions"] > 100
    assert parity["live_recommendations"] == parity["backtest_recommendations"] > 50
    runbook = summary["runbook"]
    assert {
        "executions topic: (recommendation, account) without exactly one final decision",
        "signals without a dispatch_recommendations row",
        "(signal, account) without a dispatch_executions row",
        "dispatch_executions rows without a dispatch_recommendations row",
    } <= set(runbook)
    assert not any(runbook.values()), runbook
    live = LiveRecords.read(settings, kafka_bootstrap, make_codec(None))
    assert len(live.executions) == parity["live_decisions"]  # simulated: one record a decision
    assert set(execution_checks(live.executions).values()) == {0}, execution_checks(live.executions)
    with psycopg.connect(database_url) as conn:
        bars = conn.execute("SELECT count(*) FROM lane_telemetry").fetchone()
        executions = conn.execute("SELECT count(*) FROM dispatch_executions").fetchone()
    assert bars is not None and bars[0] == 2718  # 2719 bars, one an updated bar of a minute
    assert executions is not None and executions[0] == parity["live_decisions"]
    for name in (
        "report.html",
        "executions.csv",
        "signals.csv",
        "features.csv",
        "trades.csv",
        "summary.json",
    ):
        assert (tmp_path / "reports" / "demo" / name).stat().st_size > 0
