"""`ops-pipeline backtest`: files named after the records, deterministic, and a topic gives what the
file gives."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.replay import load_bar_file, prepare_rows
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Execution, Features, Recommendation
from schemas.topic_io import RecordProducer
from schemas.topics import BARS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BARS_FILE = ROOT / "data" / "sample_session" / "bars.csv"
NEWS_FILE = ROOT / "data" / "sample_session" / "news.jsonl"


def _backtest(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", COLUMNS="160", **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "backtest", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _header(path: Path) -> list[str]:
    with path.open() as fh:
        return next(csv.reader(fh))


def test_files_summary_and_determinism(tmp_path: Path) -> None:
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        res = _backtest(
            ["--bars", str(BARS_FILE), "--news", str(NEWS_FILE), "--out", str(out)],
            {"PIPELINE_DATA_DIR": str(tmp_path / "data")},
            tmp_path,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        outs.append(out)
    a, b = outs
    assert _header(a / "features.csv") == list(Features.field_names())
    assert _header(a / "signals.csv") == list(Recommendation.field_names())
    assert _header(a / "executions.csv") == list(Execution.field_names())
    assert _header(a / "trades.csv")[:4] == ["account", "symbol", "side", "qty"]
    for name in ("features.csv", "signals.csv", "executions.csv", "trades.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    summary = json.loads((a / "summary.json").read_text())
    assert summary["bars_processed"] == 2719
    for acc in summary["accounts"]:
        assert {
            "return",
            "pnl",
            "sharpe",
            "max_drawdown",
            "win_rate",
            "trades",
            "exposure",
            "bars_processed",
            "bars_per_s",
        } <= set(acc)
    with (a / "executions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(json.loads(r["gates"]) for r in rows)  # every decision carries its gates
    assert "data:image/png;base64," in (a / "report.html").read_text()


def test_topic_gives_what_the_file_gives(provisioned: Settings, kafka_bootstrap: str, tmp_path: Path) -> None:
    bars = prepare_rows(load_bar_file(BARS_FILE)).bars
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for bar in bars:
            producer.send(BARS, bar)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_TOPIC_PREFIX": provisioned.pipeline_topic_prefix,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
    }
    from_topic = _backtest(
        ["--topic", "market.bars.1m", "--symbols", "AAPL,NVDA", "--out", str(tmp_path / "t")], env, tmp_path
    )
    from_file = _backtest(
        ["--bars", str(BARS_FILE), "--symbols", "AAPL,NVDA", "--out", str(tmp_path / "f")], env, tmp_path
    )
    assert from_topic.returncode == 0 and from_file.returncode == 0, from_topic.stderr + from_file.stderr
    for name in ("features.csv", "signals.csv", "executions.csv"):
        assert (tmp_path / "t" / name).read_bytes() == (tmp_path / "f" / name).read_bytes(), name
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["bars_processed"] == 391 * 2 - 1
