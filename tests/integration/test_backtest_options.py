"""`ops-pipeline backtest --synthetic-iv`: an options account over bars only buys whole contracts of
a Black-Scholes chain (calls on BUY, puts on SELL), and the summary labels the results modelled."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.integration.test_backtest_cli import BARS_FILE, NEWS_FILE, _backtest
from trading.options import parse_occ

pytestmark = pytest.mark.integration

ACCOUNTS = [
    {"name": "opts-25k", "starting_cash": 25000, "instrument": "option", "min_confidence": 0.6,
     "options": {"min_open_interest": 0, "max_spread_pct": 25}},
    {"name": "large-100k"},
]


def test_an_options_account_trades_a_synthetic_chain(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps(ACCOUNTS))
    out = tmp_path / "out"
    res = _backtest(["--bars", str(BARS_FILE), "--news", str(NEWS_FILE), "--accounts", str(accounts),
                     "--synthetic-iv", "0.3", "--out", str(out)], {"PIPELINE_DATA_DIR": str(tmp_path / "d")},
                    tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    with (out / "executions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    mine = [r for r in rows if r["account"] == "opts-25k"]
    filled = [r for r in mine if r["status"] == "SIMULATED" and r["intent"] == "entry"]
    assert filled, [(r["status"], r["failure_reason"]) for r in mine][:10]
    for r in filled:
        occ = parse_occ(r["symbol"])
        assert occ is not None, r["symbol"]  # a contract, not the underlying
        assert float(r["qty"]) == int(float(r["qty"])) >= 1  # whole contracts
    assert {parse_occ(r["symbol"]).option_type for r in filled} <= {"call", "put"}  # type: ignore[union-attr]
    stock = [r for r in rows if r["account"] == "large-100k" and r["status"] == "SIMULATED"]
    assert stock and all(parse_occ(r["symbol"]) is None for r in stock)
    summary = {s["account"]: s for s in json.loads((out / "summary.json").read_text())["accounts"]}
    assert summary["opts-25k"].get("modelled") is True
    assert "modelled" not in summary["large-100k"]


def test_a_bad_implied_volatility_is_one_error_line(tmp_path: Path) -> None:
    res = _backtest(["--bars", str(BARS_FILE), "--synthetic-iv", "-1", "--out", str(tmp_path / "o")],
                    {"PIPELINE_DATA_DIR": str(tmp_path / "d")}, tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "error: --synthetic-iv -1.0: not an implied volatility" in res.stderr
