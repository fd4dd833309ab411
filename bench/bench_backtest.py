"""Backtest speed: in-process bars/s over N bars (default 1,000,000 for 50 symbols), with the engine
of a git ref (default HEAD: the code before the working tree's changes) over the same bars in the
same run, the same read from a topic end to end, and backtrader running an equivalent SMA-crossover.

    python bench/bench_backtest.py [--bars 1000000] [--symbols 50] [--skip-topic] [--skip-backtrader]
        [--baseline-ref HEAD] [--rounds 2] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schemas.records import Bar  # noqa: E402
from schemas.topics import ALL_TOPICS  # noqa: E402


def make_bars(n: int, symbols: int, seed: int = 7) -> list[Bar]:
    """Random-walk minute bars in XNYS regular sessions, every symbol every minute, time order."""
    from trading.calendar import TradingCalendar

    rng = random.Random(seed)
    cal = TradingCalendar()
    names = [f"S{i:03d}" for i in range(symbols)]
    price = {s: 50.0 + 5 * i for i, s in enumerate(names)}
    minutes_needed = -(-n // symbols)
    minutes: list[datetime] = []
    day = datetime(2026, 1, 2, tzinfo=UTC).date()
    while len(minutes) < minutes_needed:
        s = cal.session(day)
        if s is not None:
            t = s[0]
            while t < s[1] and len(minutes) < minutes_needed:
                minutes.append(t)
                t += timedelta(minutes=1)
        day += timedelta(days=1)
    out: list[Bar] = []
    for ts in minutes:
        for sym in names:
            p = price[sym]
            c = round(p * math.exp(rng.gauss(0.0005 * math.sin(len(out) / 5e4), 0.0015)), 4)
            hi, lo = max(p, c) * 1.0005, min(p, c) * 0.9995
            out.append(Bar(sym, ts, p, hi, lo, c, int(rng.lognormvariate(7.5, 0.6)), None, None, "replay", 0))
            price[sym] = c
            if len(out) == n:
                return out
    return out


def run_inprocess(bars: list[Bar]) -> tuple[float, Any]:
    from trading.backtest import Backtester
    from trading.calendar import TradingCalendar
    from trading.gates import DEFAULT_ACCOUNTS

    cal = TradingCalendar()
    cal.session(bars[0].ts.date())
    bt = Backtester(DEFAULT_ACCOUNTS, cal, keep_features=False)
    res = bt.run(bars)
    return res.bars_per_s or 0.0, res


# The engine of one source tree over pickled bars, in a fresh process: both trees are measured alike.
_ENGINE = """
import gc, json, pickle, sys, time
sys.path.insert(0, sys.argv[1])
from trading.backtest import Backtester
from trading.calendar import TradingCalendar
from trading.gates import DEFAULT_ACCOUNTS
with open(sys.argv[2], "rb") as fh:
    bars = pickle.load(fh)
cal = TradingCalendar()
cal.session(bars[0].ts.date())
cpu = time.process_time()
res = Backtester(DEFAULT_ACCOUNTS, cal, keep_features=False).run(bars)
cpu = time.process_time() - cpu
print(json.dumps({"rate": res.bars_per_s, "cpu_rate": res.bars / cpu, "signals": len(res.signals),
                  "executions": len(res.executions)}))
"""


def engine_in(tree: Path, bars_file: Path) -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-c", _ENGINE, str(tree), str(bars_file)],
                          capture_output=True, text=True, check=True)
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def same_run_baseline(bars: list[Bar], ref: str, rounds: int) -> None:
    """The engine of this tree and of `ref`, each in a fresh process over the same bars, alternated
    `rounds` times: the medians, and their ratio (wall clock and CPU time)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tree = tmp / "ref"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        bars_file = tmp / "bars.pickle"
        bars_file.write_bytes(pickle.dumps(bars, protocol=pickle.HIGHEST_PROTOCOL))
        runs: dict[str, list[dict[str, float]]] = {"new": [], "old": []}
        for _ in range(rounds):
            runs["old"].append(engine_in(tree, bars_file))
            runs["new"].append(engine_in(ROOT, bars_file))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("rate", "cpu_rate")} for k, v in runs.items()}
    same = {(r["signals"], r["executions"]) for v in runs.values() for r in v}
    print(f"engine, this tree: {med['new']['rate']:,.0f} bars/s ({med['new']['cpu_rate']:,.0f} per CPU-s); "
          f"same-run baseline, {ref}'s engine: {med['old']['rate']:,.0f} bars/s "
          f"({med['old']['cpu_rate']:,.0f} per CPU-s); ratio {med['new']['rate'] / med['old']['rate']:.2f}x "
          f"(CPU {med['new']['cpu_rate'] / med['old']['cpu_rate']:.2f}x), medians of {rounds} alternated "
          f"runs; {'same' if len(same) == 1 else 'DIFFERENT'} signals and executions")


def run_topic(bars: list[Bar]) -> tuple[float, float]:
    """Produce the bars to a topic on an embedded broker, then time read + decode + backtest."""
    import tempfile

    from confluent_kafka.admin import AdminClient

    from connectors.replay import prepare_bars
    from opsinfra.embedded import TansuBroker
    from opsinfra.kafka_admin import create_topics
    from opsinfra.kafka_io import read_to_end
    from opsinfra.settings import Settings
    from schemas.codec import HeaderCodec, decode
    from schemas.topic_io import RecordProducer
    from schemas.topics import BARS
    from trading.backtest import Backtester
    from trading.calendar import TradingCalendar
    from trading.gates import DEFAULT_ACCOUNTS

    with tempfile.TemporaryDirectory() as tmp:
        broker = TansuBroker(Path(tmp))
        broker.start()
        try:
            settings = Settings(_env_file=None, kafka_bootstrap_servers=broker.bootstrap)  # type: ignore[call-arg]
            create_topics(AdminClient({"bootstrap.servers": broker.bootstrap}), ALL_TOPICS)
            codec = HeaderCodec()
            with RecordProducer(settings, broker.bootstrap, codec) as producer:
                for b in bars:
                    producer.send(BARS, b)
            cal = TradingCalendar()
            cal.session(bars[0].ts.date())
            t0 = time.perf_counter()
            topic = BARS.name
            read = [
                decode(codec, Bar, m.value, m.headers, topic=topic, partition=m.partition, offset=m.offset)
                for m in read_to_end(settings, broker.bootstrap, topic, quiet_s=0.5, timeout_s=900)
            ]
            ordered = prepare_bars(read).bars
            t_read = time.perf_counter() - t0
            Backtester(DEFAULT_ACCOUNTS, cal, keep_features=False).run(ordered)
            total = time.perf_counter() - t0
            return len(ordered) / total, len(ordered) / t_read
        finally:
            broker.stop()


def run_backtrader(bars: list[Bar], symbols: int) -> float:
    import backtrader as bt
    import pandas as pd

    class SmaCross(bt.Strategy):
        params = (("fast", 20), ("slow", 50))

        def __init__(self) -> None:
            self.cross = {
                d._name: bt.ind.CrossOver(
                    bt.ind.SMA(d, period=self.p.fast), bt.ind.SMA(d, period=self.p.slow)
                )
                for d in self.datas
            }

        def next(self) -> None:
            for d in self.datas:
                c = self.cross[d._name][0]
                if c > 0 and not self.getposition(d):
                    self.buy(data=d, size=10)
                elif c < 0 and self.getposition(d):
                    self.close(data=d)

    cerebro = bt.Cerebro(stdstats=False)
    by_symbol: dict[str, list[Bar]] = {}
    for b in bars:
        by_symbol.setdefault(b.symbol, []).append(b)
    for sym, rows in by_symbol.items():
        df = pd.DataFrame(
            {
                "open": [r.open for r in rows],
                "high": [r.high for r in rows],
                "low": [r.low for r in rows],
                "close": [r.close for r in rows],
                "volume": [r.volume for r in rows],
            },
            index=pd.DatetimeIndex([r.ts.replace(tzinfo=None) for r in rows]),
        )
        cerebro.adddata(bt.feeds.PandasData(dataname=df, timeframe=bt.TimeFrame.Minutes), name=sym)
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(1e9)
    t0 = time.perf_counter()
    cerebro.run(runonce=False, preload=True)
    return len(bars) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--skip-topic", action="store_true")
    ap.add_argument("--skip-backtrader", action="store_true")
    ap.add_argument("--baseline-ref", default="HEAD", help="git ref whose engine is the same-run baseline")
    ap.add_argument("--rounds", type=int, default=2, help="alternated runs of each engine")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bars = make_bars(args.bars, args.symbols)
    print(f"generated {len(bars):,} bars for {args.symbols} symbols in {time.perf_counter() - t0:.1f}s")
    rate, res = run_inprocess(bars)
    print(
        f"in-process backtest (features + signals + gates + fills + positions): {rate:,.0f} bars/s "
        f"({len(res.signals):,} signals, {len(res.executions):,} executions)"
    )
    if not args.no_baseline:
        same_run_baseline(bars, args.baseline_ref, args.rounds)
    if not args.skip_topic:
        total, read_rate = run_topic(bars)
        print(
            f"from a topic, end to end (read + decode + order + backtest): {total:,.0f} bars/s "
            f"(read + decode alone: {read_rate:,.0f} bars/s)"
        )
    if not args.skip_backtrader:
        bt_rate = run_backtrader(bars, args.symbols)
        print(
            f"backtrader, SMA(20/50) crossover on the same bars: {bt_rate:,.0f} bars/s; "
            f"ops-pipeline in-process is {rate / bt_rate:.1f}x"
        )


if __name__ == "__main__":
    main()
