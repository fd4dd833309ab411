"""Throughput of trading.indicators and FeatureEngine in pure Python, next to talipp if installed.

Run: python bench/bench_indicators.py [--bars N] [--talipp-bars M]. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from trading.features import FeatureEngine
from trading.indicators import MACD, RSI, SMA, Bollinger


def random_walk(n: int, seed: int = 42) -> tuple[list[float], list[int]]:
    rng = random.Random(seed)
    closes, volumes = [], []
    price = 100.0
    for _ in range(n):
        price = max(0.01, price * (1.0 + rng.gauss(0.0, 0.001)))
        closes.append(price)
        volumes.append(int(rng.expovariate(1 / 800)))
    return closes, volumes


def rate(run: Callable[[], None], n: int, repeat: int = 3) -> float:
    """Best of `repeat` runs, in items per second (the machine is shared, the best is the truth)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return n / best


def feed(make: Callable[[], Any], xs: Sequence[float]) -> Callable[[], None]:
    def run() -> None:
        update = make().update
        for x in xs:
            update(x)

    return run


def bench_ours(closes: list[float], volumes: list[int]) -> list[tuple[str, float]]:
    n = len(closes)
    rows = [
        ("SMA(20)", rate(feed(lambda: SMA(20), closes), n)),
        ("SMA(50)", rate(feed(lambda: SMA(50), closes), n)),
        ("RSI(14)", rate(feed(RSI, closes), n)),
        ("MACD(12,26,9)", rate(feed(MACD, closes), n)),
        ("Bollinger(20,2)", rate(feed(Bollinger, closes), n)),
    ]
    t0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    stamps = [t0 + timedelta(minutes=i) for i in range(n)]

    def engine() -> None:
        update = FeatureEngine("AAPL").update
        for ts, c, v in zip(stamps, closes, volumes, strict=True):
            update(ts, c, v)

    rows.append((f"FeatureEngine ({n:,} bars)", rate(engine, n, repeat=2)))
    return rows


def bench_talipp(closes: list[float], volumes: list[int]) -> list[tuple[str, float]] | None:
    try:
        from talipp.indicators import BB as TBB
        from talipp.indicators import MACD as TMACD
        from talipp.indicators import RSI as TRSI
        from talipp.indicators import SMA as TSMA
    except ImportError:
        return None

    def talipp_feed(make: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            add = make().add
            for x in closes:
                add(x)

        return run

    n = len(closes)

    def engine() -> None:
        sma20, sma50, vol20 = TSMA(20), TSMA(50), TSMA(20)
        rsi, macd, bb = TRSI(14), TMACD(12, 26, 9), TBB(20, 2.0)
        for c, v in zip(closes, volumes, strict=True):
            sma20.add(c)
            sma50.add(c)
            vol20.add(v)
            rsi.add(c)
            macd.add(c)
            bb.add(c)

    return [
        ("SMA(20)", rate(talipp_feed(lambda: TSMA(20)), n, repeat=1)),
        ("SMA(50)", rate(talipp_feed(lambda: TSMA(50)), n, repeat=1)),
        ("RSI(14)", rate(talipp_feed(lambda: TRSI(14)), n, repeat=1)),
        ("MACD(12,26,9)", rate(talipp_feed(lambda: TMACD(12, 26, 9)), n, repeat=1)),
        ("Bollinger(20,2)", rate(talipp_feed(lambda: TBB(20, 2.0)), n, repeat=1)),
        (f"6 indicators ({n:,} bars)", rate(engine, n, repeat=1)),
    ]


def exactness(closes: list[float]) -> list[tuple[str, str, str]] | None:
    """Largest relative difference from TA-Lib after TA-Lib's warm-up: ours vs talipp."""
    try:
        import numpy as np
        import talib
        from talipp.indicators import BB as TBB
        from talipp.indicators import MACD as TMACD
        from talipp.indicators import RSI as TRSI
        from talipp.indicators import SMA as TSMA
    except ImportError:
        return None
    a = np.asarray(closes, dtype=float)
    macd_ref = talib.MACD(a, 12, 26, 9)
    bb_ref = talib.BBANDS(a, 20, 2.0, 2.0, talib.MA_Type.SMA)

    def worst(got: Sequence[float | None], ref: Any) -> str:
        err, warm_up_differs = 0.0, False
        for g, r in zip(got, ref, strict=True):
            if math.isnan(r) or g is None:
                warm_up_differs |= (g is None) != math.isnan(r)
                continue
            err = max(err, abs(g - r) / max(abs(r), 1e-300))
        return f"{err:.1e}" + (" (warm-up differs)" if warm_up_differs else "")

    def ours(make: Callable[[], Any], read: Callable[[Any], float | None]) -> list[float | None]:
        ind, out = make(), []
        for x in closes:
            ind.update(x)
            out.append(read(ind))
        return out

    def theirs(ind: Any, read: Callable[[Any], float | None]) -> list[float | None]:
        out = []
        for x in closes:
            ind.add(x)
            v = ind[-1]
            out.append(None if v is None else read(v))
        return out

    cases: list[tuple[str, Any, Callable[[], Any], Callable[[Any], Any], Any, Callable[..., Any]]]
    cases = [
        ("SMA(20)", talib.SMA(a, 20), lambda: SMA(20), lambda i: i.value, TSMA(20), float),
        ("RSI(14)", talib.RSI(a, 14), RSI, lambda i: i.value, TRSI(14), float),
        ("MACD line", macd_ref[0], MACD, lambda i: i.value, TMACD(12, 26, 9), lambda v: v.macd),
        ("MACD signal", macd_ref[1], MACD, lambda i: i.signal, TMACD(12, 26, 9), lambda v: v.signal),
        ("BB upper", bb_ref[0], Bollinger, lambda i: i.upper, TBB(20, 2.0), lambda v: v.ub),
    ]
    return [
        (name, worst(ours(make, read), ref), worst(theirs(tind, tread), ref))
        for name, ref, make, read, tind, tread in cases
    ]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [header, *rows]
    ]
    return "\n".join([lines[0], line, *lines[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--talipp-bars", type=int, default=100_000)
    args = parser.parse_args()

    closes, volumes = random_walk(args.bars)
    ours = bench_ours(closes, volumes)
    print(f"trading.indicators, {args.bars:,} random-walk bars, best of 3 (updates/s)\n")
    print(
        table(["indicator", "updates/s", "ns/update"], [(n, f"{r:,.0f}", f"{1e9 / r:,.0f}") for n, r in ours])
    )

    theirs = bench_talipp(closes[: args.talipp_bars], volumes[: args.talipp_bars])
    if theirs is None:
        print("\ntalipp not installed: no comparison")
        return
    print(f"\ntalipp, {args.talipp_bars:,} bars, one run (updates/s)\n")
    print(
        table(
            ["indicator", "updates/s", "ns/update"], [(n, f"{r:,.0f}", f"{1e9 / r:,.0f}") for n, r in theirs]
        )
    )
    exact = exactness(closes[:10_000])
    if exact is not None:
        print("\nlargest relative difference from TA-Lib after its warm-up, 10,000 bars\n")
        print(table(["output", "trading.indicators", "talipp"], exact))


if __name__ == "__main__":
    main()
