"""Bars per second through the pure trading path: FeatureEngine -> SignalRule -> desks -> watchlist.

The backtester (issue 8) runs exactly these objects in-process; its budget is 150,000 bars/s.
Prints figures; not part of the test run.
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime, timedelta

from trading.accounts import AccountDesk
from trading.calendar import TradingCalendar
from trading.features import FeatureEngine
from trading.gates import DEFAULT_ACCOUNTS
from trading.signals import SignalRule, StrategyConfig
from trading.watchlist import WatchlistBuilder, WatchlistConfig

SYMBOLS = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA")
DAYS = 20


def bars() -> list[tuple[str, datetime, float, int]]:
    rnd = random.Random(7)
    out = []
    price = dict.fromkeys(SYMBOLS, 100.0)
    day = datetime(2024, 3, 4, 14, 30, tzinfo=UTC)
    for d in range(DAYS):
        start = day + timedelta(days=d + 2 * (d // 5))  # skip weekends
        for m in range(390):
            ts = start + timedelta(minutes=m)
            for s in SYMBOLS:
                price[s] *= math.exp(rnd.gauss(0.00002, 0.0012))
                out.append((s, ts, price[s], int(rnd.lognormvariate(7, 1))))
    return out


def run(data: list[tuple[str, datetime, float, int]], cal: TradingCalendar, rule: SignalRule
        ) -> tuple[float, int, int, int]:
    engines = {s: FeatureEngine(s) for s in SYMBOLS}
    desks = [AccountDesk(a, cal) for a in DEFAULT_ACCOUNTS]
    watch = WatchlistBuilder(WatchlistConfig(universe=SYMBOLS))
    minute = timedelta(minutes=1)
    recs = execs = entries = 0
    t = time.perf_counter()
    for s, ts, c, v in data:
        f = engines[s].update(ts, c, v)
        if f is None:
            continue
        now = ts + minute
        rec = rule.on_features(f)
        for desk in desks:
            if rec is not None:
                if desk.on_recommendation(rec, now) is not None:
                    execs += 1
            execs += len(desk.on_bar(s, ts, c, now))
        if rec is not None:
            recs += 1
        entries += len(watch.on_features(f))
    return time.perf_counter() - t, recs, execs, entries


def main() -> None:
    data = bars()
    cal = TradingCalendar()
    cal.session(data[0][1].date())  # load the calendar outside the timing

    engines = {s: FeatureEngine(s) for s in SYMBOLS}
    t = time.perf_counter()
    for s, ts, c, v in data:
        engines[s].update(ts, c, v)
    features_only = time.perf_counter() - t

    full, recs, execs, entries = run(data, cal, SignalRule())
    # the per-bar path alone: the rule evaluates every bar but never fires (it wants a watchlist)
    quiet, *_ = run(data, cal, SignalRule(StrategyConfig(require_watchlist=True)))
    n = len(data)
    print(f"bars: {n:,} ({len(SYMBOLS)} symbols x {DAYS} days x 390 minutes)")
    print(f"FeatureEngine only:                {n / features_only:>12,.0f} bars/s")
    print(f"+ signals + {len(DEFAULT_ACCOUNTS)} desks + watchlist:  {n / full:>12,.0f} bars/s "
          f"({recs} recommendations, {execs} executions, {entries} watchlist entries)")
    print(f"trading core alone: {(full - features_only) / n * 1e6:.2f} us/bar")
    print(f"per-bar path without signals:      {n / quiet:>12,.0f} bars/s "
          f"(trading core {(quiet - features_only) / n * 1e6:.2f} us/bar)")


if __name__ == "__main__":
    main()
