"""The report's figures from a backtest's records: day boundaries on trading time, the buy-and-hold
benchmark, daily returns, P&L by symbol, skips by first failing gate, Sortino."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest

from schemas.records import GateResult
from trading.report_metrics import (
    benchmark,
    daily_returns,
    day_starts,
    max_drawdown,
    pnl_by_symbol,
    skips_by_gate,
)


def t(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def test_day_starts_mark_each_day_s_first_minute_across_a_weekend() -> None:
    times = [t(6, 20, 58), t(6, 20, 59), t(9, 14, 30), t(9, 14, 31), t(10, 14, 30)]  # Fri, Mon, Tue
    assert day_starts(times) == [(0, date(2026, 3, 6)), (2, date(2026, 3, 9)), (4, date(2026, 3, 10))]
    assert day_starts([]) == []


def test_benchmark_holds_the_universe_equally_from_each_symbol_s_first_close() -> None:
    closes = [
        (t(9, 14, 30), "A", 100.0),
        (t(9, 14, 30), "B", 50.0),
        (t(9, 14, 31), "A", 110.0),  # A +10 %
        (t(9, 14, 32), "B", 40.0),  # B -20 %
    ]
    times = [t(9, 14, 30), t(9, 14, 31), t(9, 14, 32), t(9, 14, 33)]  # the last minute: no new close
    got = benchmark(closes, times, 1000.0)
    assert got == pytest.approx([1000.0, 1050.0, 950.0, 950.0])


def test_benchmark_holds_cash_for_a_symbol_not_yet_priced_and_without_closes() -> None:
    closes = [(t(9, 14, 30), "A", 10.0), (t(9, 14, 31), "A", 12.0), (t(9, 14, 31), "B", 7.0)]
    assert benchmark(closes, [t(9, 14, 30), t(9, 14, 31)], 100.0) == pytest.approx([100.0, 110.0])
    assert benchmark([], [t(9, 14, 30)], 100.0) == [100.0]


def test_daily_returns_chain_each_day_s_last_equity() -> None:
    curve = [(t(6, 15), 1010.0), (t(6, 20), 1020.0), (t(9, 15), 900.0), (t(9, 20), 1071.0)]
    got = daily_returns(curve, 1000.0)
    assert [d for d, _ in got] == [date(2026, 3, 6), date(2026, 3, 9)]
    assert [r for _, r in got] == pytest.approx([0.02, 1071.0 / 1020.0 - 1])
    assert daily_returns([], 1000.0) == []


def test_pnl_by_symbol_sums_round_trips_best_first() -> None:
    trades = [SimpleNamespace(symbol=s, pnl=p) for s, p in (("A", 5.0), ("B", -3.0), ("A", -1.0), ("C", 9.5))]
    assert pnl_by_symbol(trades) == [("C", 9.5, 1), ("A", 4.0, 2), ("B", -3.0, 1)]


def _exec(account: str, status: str, *passed: bool) -> SimpleNamespace:
    gates = [GateResult(f"g{i}", ok, None, None, "") for i, ok in enumerate(passed)]
    return SimpleNamespace(account=account, status=status, gates=gates)


def test_skips_count_the_first_failing_gate_per_account() -> None:
    execs = [
        _exec("x", "SKIPPED", True, False, False),
        _exec("x", "SKIPPED", False, True),
        _exec("x", "SKIPPED", True, False),
        _exec("x", "SIMULATED", True, True),
        _exec("x", "SKIPPED"),  # no gates: skipped for another reason
        _exec("y", "SKIPPED", False),
    ]
    assert skips_by_gate(execs) == {"x": Counter({"g1": 2, "g0": 1, "-": 1}), "y": Counter({"g0": 1})}



def test_drawdown_of_a_hand_checked_curve() -> None:
    assert max_drawdown([100.0, 110.0, 99.0, 108.9, 120.0]) == pytest.approx(0.1)
    assert max_drawdown([100.0, 101.0]) == 0.0
