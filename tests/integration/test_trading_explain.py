"""`ops-pipeline explain`: the bar, features, news and every gate outcome per account, read back
from the tables (rows inserted directly: the sink that fills them is tested on its own)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import structlog
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from db import migrate
from pipeline.cli import app
from schemas.records import GateResult
from trading.gates import GATE_ORDER
from trading.signals import recommendation_id

pytestmark = pytest.mark.integration

TS = datetime(2024, 3, 12, 14, 0, tzinfo=UTC)  # 10:00 New York
RID = recommendation_id("trend-sentiment-v1", "AAPL", TS, "BUY")


def gates(failing: str | None) -> list[dict[str, object]]:
    out = []
    for name in GATE_ORDER:
        ok = name != failing
        out.append(GateResult(name, ok, 0.61 if name == "confidence" else 1.0,
                              0.7 if name == "confidence" else 2.0,
                              "ok" if ok else "confidence below minimum").to_avro())
    return out


@pytest.fixture
def filled(database_url: str) -> str:
    migrate.apply(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO lane_telemetry (ticker, ts, open, high, low, close, volume, source)"
            " VALUES ('AAPL', %s, 100.1, 101.2, 99.8, 101.0, 12345, 'live')", (TS,))
        conn.execute(
            "INSERT INTO lane_features (ticker, ts, close, sma_20, sma_50, volume_current, volume_avg_20,"
            " volume_ratio, volume_surge, rsi_14, macd_hist, bars_seen)"
            " VALUES ('AAPL', %s, 101.0, 100.5, 100.0, 12345, 6000, 2.0575, false, 61.5, 0.12, 60)", (TS,))
        for event, ticker, label, published in (
            ("news-in", "AAPL", "positive", TS - timedelta(minutes=30)),
            ("news-later", "AAPL", "negative", TS + timedelta(minutes=5)),  # after the bar: not seen
            ("news-old", "AAPL", "negative", TS - timedelta(hours=6)),
            ("news-other", "MSFT", "negative", TS),
        ):
            conn.execute(
                "INSERT INTO inbound_events_classified (event_id, ticker, tickers, sentiment, score, model,"
                " published) VALUES (%s, %s, %s, %s, 0.9, 'finbert', %s)",
                (event, ticker, [ticker], label, published))
        conn.execute(
            "INSERT INTO dispatch_recommendations (recommendation_id, ts, ticker, action, base_confidence,"
            " volume_multiplier, confidence, sentiment, reason, features, strategy_version, status)"
            " VALUES (%s, %s, 'AAPL', 'BUY', 0.61, 1.0, 0.61, 0.42, 'BUY: close 101 > sma20 > sma50',"
            " %s, 'trend-sentiment-v1', 'SIMULATED')", (RID, TS, Jsonb({"close": 101.0})))
        for account, status, failing, qty, price in (
            ("large-100k", "SKIPPED", "confidence", 49.0, None),
            ("tiny-1k", "SIMULATED", None, 2.47, 101.05),
        ):
            conn.execute(
                "INSERT INTO dispatch_executions (recommendation_id, account_name, ticker, action, status,"
                " intent, mode, qty, price, failure_reason, simulated_ts, sim_json, risk_gate_json)"
                " VALUES (%s, %s, 'AAPL', 'BUY', %s, 'entry', 'simulate', %s, %s, %s, %s, %s, %s)",
                (RID, account, status, qty, price,
                 "confidence: confidence below minimum" if failing else None, TS + timedelta(minutes=1),
                 Jsonb({"bar_used": {"timestamp": TS.isoformat()}}), Jsonb(gates(failing))))
    return database_url


def invoke(database_url: str, tmp_path: Path, *args: str) -> object:
    env = {"DATABASE_URL": database_url, "PIPELINE_DATA_DIR": str(tmp_path), "COLUMNS": "220",
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    try:
        return CliRunner().invoke(app, ["explain", *args], env=env)
    finally:
        structlog.reset_defaults()  # the CLI bound structlog to its own (captured, now closed) stderr


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the repository


def test_explain_prints_bar_features_news_and_every_gate(filled: str, tmp_path: Path) -> None:
    result = invoke(filled, tmp_path, RID)
    out = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 0, out  # type: ignore[attr-defined]
    assert f"recommendation {RID}: BUY AAPL" in out
    assert "2024-03-12 10:00:00 ET" in out
    assert "confidence 0.61 = base 0.61 x volume multiplier 1" in out
    assert "12345" in out and "2.0575" in out and "61.5" in out  # bar volume, volume ratio, RSI
    assert "news-in" in out
    assert "news-later" not in out and "news-old" not in out and "news-other" not in out
    assert "large-100k: SKIPPED" in out and "tiny-1k: SIMULATED" in out
    assert "failed gate: confidence: confidence below minimum" in out
    for name in GATE_ORDER:
        assert out.count(name) >= 2, name  # in both accounts' gate tables


def test_explain_json_and_errors(filled: str, tmp_path: Path) -> None:
    result = invoke(filled, tmp_path, RID, "--json")
    assert result.exit_code == 0  # type: ignore[attr-defined]
    data = json.loads(result.output)  # type: ignore[attr-defined]
    assert data["symbol"] == "AAPL" and [n["event_id"] for n in data["news"]] == ["news-in"]
    by_account = {e["account_name"]: e for e in data["executions"]}
    gate = by_account["large-100k"]["risk_gate_json"][0]
    assert gate == {"name": "confidence", "passed": False, "value": 0.61, "limit": 0.7,
                    "reason": "confidence below minimum"}
    assert invoke(filled, tmp_path, "not-a-uuid").exit_code == 2  # type: ignore[attr-defined]
    missing = invoke(filled, tmp_path, recommendation_id("v", "X", TS, "BUY"))
    assert missing.exit_code == 1  # type: ignore[attr-defined]
