"""`ops-pipeline backtest`: files named after the records, deterministic, and a topic gives what the
file gives."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    with (a / "trades.csv").open() as fh:
        trades = list(csv.DictReader(fh))
    assert_pnl_is_the_trades(summary["accounts"], trades, rows)
    report = (a / "report.html").read_text()
    assert "data:image/png;base64," in report
    assert not re.search(r"(src|href)=[\"']?https?:", report), "report.html loads an asset from the network"
    assert "buy and hold" in report and "skips by gate" in report and "P&amp;L by symbol" in report


def assert_pnl_is_the_trades(
    accounts: list[dict[str, Any]], trades: list[dict[str, str]], executions: list[dict[str, str]]
) -> None:
    """Each trade is an entry and an exit from executions.csv and its P&L theirs; an account's
    realized P&L is the sum of its trades, and (flat at the close) its P&L is its cash flows."""
    filled = [r for r in executions if r["status"] in ("SIMULATED", "FILLED")]
    by_id = {(r["account"], r["recommendation_id"]): r for r in filled}
    assert accounts
    for acc in accounts:
        name = acc["account"]
        mine = [t for t in trades if t["account"] == name]
        assert len(mine) == acc["trades"] > 0, name
        for t in mine:
            entry, exit_ = by_id[(name, t["entry_id"])], by_id[(name, t["exit_id"])]
            assert (entry["intent"], exit_["intent"], entry["symbol"]) == ("entry", "exit", t["symbol"])
            assert (float(t["entry_price"]), float(t["exit_price"])) == (float(entry["price"]),
                                                                      float(exit_["price"]))
            sign = 1 if t["side"] == "long" else -1
            assert float(t["pnl"]) == pytest.approx(
                (float(exit_["price"]) - float(entry["price"])) * float(t["qty"]) * sign, abs=1e-6
            ), t
        realized = sum(float(t["pnl"]) for t in mine)
        assert acc["realized_pnl"] == pytest.approx(realized, abs=0.005), name
        assert acc["win_rate"] == sum(float(t["pnl"]) > 0 for t in mine) / len(mine)
        assert acc["open_positions"] == 0, name  # flat before the close
        cash = sum((-1 if r["action"] == "BUY" else 1) * float(r["qty"]) * float(r["price"])
                   for r in filled if r["account"] == name)
        assert acc["pnl"] == pytest.approx(cash, abs=0.005), name
        assert acc["pnl"] == pytest.approx(realized, abs=0.01), name
        assert acc["ending_equity"] == pytest.approx(acc["starting_cash"] + acc["pnl"], abs=0.005)


def test_parquet_tables_hold_what_the_csv_tables_hold(tmp_path: Path) -> None:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    runs = {}
    for fmt in ("csv", "parquet"):
        res = _backtest(["--bars", str(BARS_FILE), "--news", str(NEWS_FILE), "--format", fmt, "--out",
                         str(tmp_path / fmt)], {"PIPELINE_DATA_DIR": str(tmp_path / "data")}, tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "phases (wall / CPU): load" in res.stdout
        runs[fmt] = tmp_path / fmt
    summary = json.loads((runs["parquet"] / "summary.json").read_text())
    assert set(summary["phases_s"]) == {"load", "decode", "engine", "write"}
    for name in ("features", "signals", "executions", "trades"):
        table = pq.read_table(runs["parquet"] / f"{name}.parquet")
        text = pcsv.read_csv(runs["csv"] / f"{name}.csv",
                             convert_options=pcsv.ConvertOptions(column_types=table.schema))
        assert table.column_names == text.column_names, name

        def cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # CSV writes None as ""
            return [{k: "" if v is None else v for k, v in r.items()} for r in rows]

        assert cells(table.to_pylist()) == cells(text.to_pylist()), name
    assert not list(runs["parquet"].glob("*s.csv"))  # no CSV tables beside the Parquet ones


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
