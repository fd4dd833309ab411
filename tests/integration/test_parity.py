"""Parity, the first-class test: the sample session through the live stages on the broker (bar
clock) makes exactly the decisions an in-process backtest of the same bars and news makes.

It runs `ops-pipeline demo` against the fixtures' broker and PostgreSQL; the demo compares the live
recommendations and executions (ids, actions, confidences, statuses, gate outcomes) with the
backtest's and exits 1 if any differs, and checks the old runbook queries.
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

pytestmark = pytest.mark.integration


def test_live_stages_and_backtest_decide_identically(
    settings: Settings, kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_"))}
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
    assert summary["runbook"] == {
        "status PROCESSING": 0,
        "executions without sim_json.bar_used.timestamp": 0,
        "executions topic: (recommendation, account) without exactly one final decision": 0,
        "signals without a dispatch_recommendations row": 0,
        "(signal, account) without a dispatch_executions row": 0,
        "dispatch_executions rows without a dispatch_recommendations row": 0,
    }
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
