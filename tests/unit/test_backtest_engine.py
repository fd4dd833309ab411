"""The backtester over (ts, symbol, close, volume, revision) rows decides what it decides over Bar
records, and the column-wise rows of a bar file are what its Bar records hold."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from connectors.bar_columns import BarColumns
from connectors.replay import load_bar_columns
from schemas.records import Bar
from trading.backtest import Backtester, BacktestResult
from trading.calendar import TradingCalendar
from trading.gates import DEFAULT_ACCOUNTS

T0 = datetime(2024, 3, 12, 13, 30, tzinfo=UTC)  # the open, Tuesday
SYMBOLS = ("AAA", "BBB", "CCC")


def walk(minutes: int, seed: int = 3) -> list[Bar]:
    """Trending random walks (signals, entries and exits happen), with an updated bar, an exact
    repeat, an older bar and a non-finite close among them."""
    rng = random.Random(seed)
    price = dict.fromkeys(SYMBOLS, 100.0)
    bars: list[Bar] = []
    for m in range(minutes):
        ts = T0 + timedelta(minutes=m)
        for s in SYMBOLS:
            o = round(price[s], 4)
            price[s] *= math.exp(rng.gauss(0.0008 * math.sin(m / 40), 0.002))
            c = round(price[s], 4)
            bars.append(Bar(s, ts, o, max(o, c) * 1.02, min(o, c), c, rng.randint(100, 5000), None, None,
                            "replay", 0))
        if m % 37 == 5:
            b = bars[-1]
            bars.append(Bar(b.symbol, ts, b.open, b.high, b.low, b.close * 1.01, b.volume, None, None,
                            "replay", 1))
            bars.append(bars[-1])  # an exact repeat
        if m % 53 == 7:
            bars.append(Bar("AAA", ts - timedelta(minutes=2), 1.0, 1.0, 1.0, 1.0, 1, None, None, "replay", 0))
            bars.append(Bar("BBB", ts, 1.0, 1.0, 1.0, float("nan"), 1, None, None, "replay", 5))
    return bars


def backtester() -> Backtester:
    cal = TradingCalendar()
    cal.session(T0.date())
    return Backtester(DEFAULT_ACCOUNTS, cal)


def decided(res: BacktestResult) -> tuple[object, ...]:
    return (res.features, res.signals, res.executions, res.bars, res.skipped_bars,
            [led.summary(bars=0, seconds=0) for led in res.ledgers.values()])


def test_rows_decide_what_bar_records_decide() -> None:
    bars = walk(700)
    told: list[int] = []
    by_records = backtester().run(bars)
    rows = [(b.ts, b.symbol, b.close, b.volume, b.revision) for b in bars]
    by_rows = backtester().run_rows(rows, progress=told.append)
    assert by_records.executions and by_records.skipped_bars  # the case is not trivial
    assert decided(by_rows) == decided(by_records)
    assert told and told[-1] == by_rows.bars  # progress ends on the bars processed


def test_rows_of_columns_are_what_their_bar_records_hold(tmp_path: Path) -> None:
    bars = walk(60)
    path = tmp_path / "bars.csv"
    lines = ["symbol,ts,open,high,low,close,volume,revision"]
    lines += [f"{b.symbol},{b.ts.isoformat()},{b.open},{b.high},{b.low},{b.close},{b.volume},{b.revision}"
              for b in bars]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    columns = load_bar_columns(path).columns
    records = columns.bars()
    assert list(columns.rows()) == [(b.ts, b.symbol, b.close, b.volume, b.revision) for b in records]
    assert columns.first_ts() == records[0].ts
    empty = BarColumns.from_bars([], [])
    assert list(empty.rows()) == [] and empty.first_ts() is None
