"""The report's figures from a backtest's records, pure: the trading-time axis (day boundaries), an
equal-weighted buy-and-hold benchmark of the universe, daily returns, P&L by symbol and skips by
first failing gate."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from trading.execution import SKIPPED


def day_starts(times: Sequence[datetime]) -> list[tuple[int, date]]:
    """(index, date) of each trading day's first point: an x axis of trading minutes marks these."""
    out: list[tuple[int, date]] = []
    last: date | None = None
    for i, ts in enumerate(times):
        d = ts.date()
        if d != last:
            out.append((i, d))
            last = d
    return out


def benchmark(
    closes: Iterable[tuple[datetime, str, float]], times: Sequence[datetime], cash: float
) -> list[float]:
    """Equity at each of `times` of `cash` split equally over the universe's symbols, each bought at
    its first close and held (a symbol not yet priced is held as cash). `closes`: (ts, symbol, close)
    in time order."""
    first: dict[str, float] = {}
    ratio: dict[str, float] = {}
    by_ts: dict[datetime, float] = {}
    total = 0.0  # sum over priced symbols of (close / first close - 1)
    for ts, sym, close in closes:
        base = first.get(sym)
        if base is None:
            if close <= 0:
                continue
            first[sym] = base = close
            ratio[sym] = 0.0
        r = close / base - 1
        total += r - ratio[sym]
        ratio[sym] = r
        by_ts[ts] = total
    n = len(first)
    out, gain = [], 0.0
    for ts in times:
        gain = by_ts.get(ts, gain)
        out.append(cash * (1 + gain / n) if n else cash)
    return out


def max_drawdown(values: Sequence[float]) -> float:
    peak, worst = -float("inf"), 0.0
    for v in values:
        peak = max(peak, v)
        if peak > 0:
            worst = max(worst, 1 - v / peak)
    return worst


def daily_returns(curve: Sequence[tuple[datetime, float]], start: float) -> list[tuple[date, float]]:
    """Each day's return: its last equity over the previous day's last (the first day: over `start`)."""
    out: list[tuple[date, float]] = []
    prev, day, last = start, None, start
    for ts, v in curve:
        d = ts.date()
        if day is not None and d != day:
            out.append((day, last / prev - 1 if prev else 0.0))
            prev = last
        day, last = d, v
    if day is not None:
        out.append((day, last / prev - 1 if prev else 0.0))
    return out


def pnl_by_symbol(trades: Iterable[Any]) -> list[tuple[str, float, int]]:
    """(symbol, realised P&L, round trips), best first."""
    pnl: dict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    for t in trades:
        pnl[t.symbol] += t.pnl
        count[t.symbol] += 1
    return sorted(((s, pnl[s], count[s]) for s in pnl), key=lambda r: (-r[1], r[0]))


def skips_by_gate(executions: Iterable[Any]) -> dict[str, Counter[str]]:
    """Per account, the skipped decisions counted by their first failing gate ("-" when none failed)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for e in executions:
        if e.status != SKIPPED:
            continue
        gate = next((g.name for g in e.gates if not g.passed), "-")
        out[e.account][gate] += 1
    return dict(out)

