"""`ops-pipeline backtest` end to end, process start to outputs written, over N bars (default
1,000,000 for 50 symbols) from a CSV, a Parquet file and a topic on an embedded broker; each figure
with its phase split and same-run baselines: the engine alone over the same bars in this process,
and the command of a git ref (default HEAD, the code before the working tree's changes) on a prefix
of the same input, or on the same topic.

    python bench/bench_backtest_e2e.py [--bars 1000000] [--symbols 50] [--format csv|parquet]
        [--skip-topic] [--baseline-ref HEAD] [--baseline-bars 200000] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bar_table(n: int, symbols: int, seed: int = 7) -> Any:
    """Random-walk minute bars of XNYS regular sessions, every symbol every minute, in time order."""
    import numpy as np
    import pyarrow as pa

    from trading.calendar import TradingCalendar

    cal = TradingCalendar()
    minutes: list[datetime] = []
    day = datetime(2026, 1, 2, tzinfo=UTC).date()
    while len(minutes) * symbols < n:
        session = cal.session(day)
        if session is not None:
            t = session.open
            while t < session.close:
                minutes.append(t)
                t += timedelta(minutes=1)
        day += timedelta(days=1)
    rng = np.random.default_rng(seed)
    m = len(minutes)
    base = 50.0 + 5 * np.arange(symbols)
    drift = 0.0005 * np.sin(np.arange(m) * symbols / 5e4)
    close = np.round(base * np.exp(np.cumsum(rng.normal(drift[:, None], 0.0015, (m, symbols)), axis=0)), 4)
    open_ = np.vstack([base, close[:-1]])
    high = np.round(np.maximum(open_, close) * 1.0005, 4)
    low = np.round(np.minimum(open_, close) * 0.9995, 4)
    volume = rng.lognormal(7.5, 0.6, (m, symbols)).astype(np.int64)
    stamps = np.array([int(t.timestamp()) * 1_000_000 for t in minutes], np.int64)

    def flat(a: Any) -> Any:
        return a.reshape(-1)[:n]

    return pa.table({
        "symbol": np.tile(np.array([f"S{i:03d}" for i in range(symbols)]), m)[:n],
        "ts": pa.array(np.repeat(stamps, symbols)[:n], pa.timestamp("us", tz="UTC")),
        "open": flat(open_), "high": flat(high), "low": flat(low), "close": flat(close),
        "volume": flat(volume), "trade_count": flat(np.maximum(1, volume // 100)),
        "vwap": flat(np.round((high + low + close) / 3, 4)), "revision": np.zeros(n, np.int64),
    })  # fmt: skip


def write_files(table: Any, directory: Path) -> tuple[Path, Path]:
    """The bars as a CSV (ISO-8601 times with an offset, no quotes) and as a Parquet file."""
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    parquet = directory / "bars.parquet"
    pq.write_table(table, parquet)
    text = table.set_column(1, "ts", pc.strftime(table["ts"], format="%Y-%m-%dT%H:%M:00+00:00"))
    csv_path = directory / "bars.csv"
    pcsv.write_csv(text, csv_path, pcsv.WriteOptions(quoting_style="none", quoting_header="none"))
    return csv_path, parquet


def engine_alone(table: Any) -> float:
    """The engine's own bars/s over the same bars, in this process (the ceiling of the command)."""
    from trading.backtest import Backtester
    from trading.calendar import TradingCalendar
    from trading.gates import DEFAULT_ACCOUNTS

    bars = _columns(table).bars()
    cal = TradingCalendar()
    cal.session(bars[0].ts.date())
    result = Backtester(DEFAULT_ACCOUNTS, cal).run(bars)
    return result.bars_per_s or 0.0


def _columns(table: Any) -> Any:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from connectors.replay import BarColumns

    enc = pc.dictionary_encode(table["symbol"]).combine_chunks()
    n = table.num_rows

    def col(name: str) -> Any:
        return table[name].to_numpy()

    return BarColumns(
        symbol=enc.indices.to_numpy().astype(np.int32), symbols=enc.dictionary.to_pylist(),
        ts=table["ts"].cast(pa.int64()).to_numpy(), open=col("open"), high=col("high"), low=col("low"),
        close=col("close"), volume=col("volume"), trade_count=col("trade_count"),
        trade_count_null=np.zeros(n, bool), vwap=col("vwap"), vwap_null=np.zeros(n, bool),
        revision=col("revision"), seq=np.arange(n),
    )  # fmt: skip


def run_cli(args: list[str], env_extra: dict[str, str], cwd: Path, out: Path) -> dict[str, Any]:
    """The command as a user runs it: wall time from spawning the process to its exit, and the
    CPU time of the process (the steadier figure on a shared machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "PIPELINE_"))}
    env.update(PYTHONPATH=str(cwd), COLUMNS="160", PIPELINE_DATA_DIR=str(out.parent / "data"), **env_extra)
    before = os.times()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "backtest", *args, "--out", str(out)],
        cwd=cwd, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    after = os.times()
    cpu = after.children_user - before.children_user + after.children_system - before.children_system
    if proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise SystemExit(f"backtest failed ({proc.returncode}):\n{tail}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall": wall, "cpu": cpu, "bars": summary["bars_processed"],
        "phases": summary.get("phases_s", {}), "phases_cpu": summary.get("phases_cpu_s", {}),
    }  # fmt: skip


def line(what: str, run: dict[str, Any]) -> str:
    rate = run["bars"] / run["wall"]
    head = (f"{what}: {run['bars']:,} bars in {run['wall']:.2f} s = {rate:,.0f} bars/s "
            f"(process CPU {run['cpu']:.2f} s = {run['bars'] / run['cpu']:,.0f} bars per CPU-s)")  # fmt: skip
    phases, cpu = run["phases"], run["phases_cpu"]
    if not phases:
        return head
    split = ", ".join(f"{k} {v:.2f}/{cpu.get(k, 0):.2f}" for k, v in phases.items())
    rest = (run["wall"] - sum(phases.values()), run["cpu"] - sum(cpu.values()))
    return f"{head}\n    phases wall/CPU s: {split}, start-up and the rest {rest[0]:.2f}/{rest[1]:.2f}"


def extract_ref(ref: str, into: Path) -> Path:
    """The tree of a git ref (the code before these changes), to run its command as the baseline."""
    tree = into / f"ref-{ref.replace('/', '_')}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def produce_topic(table: Any, bootstrap: str, prefix: str) -> None:
    from dataclasses import replace

    from confluent_kafka.admin import AdminClient

    from opsinfra.kafka_admin import create_topics
    from opsinfra.settings import Settings
    from schemas.avro_fast import RecordWriter
    from schemas.codec import HeaderCodec
    from schemas.topic_io import RecordProducer
    from schemas.topics import ALL_TOPICS, BARS

    create_topics(
        AdminClient({"bootstrap.servers": bootstrap}), [replace(s, name=prefix + s.name) for s in ALL_TOPICS]
    )
    settings = Settings(_env_file=None, kafka_bootstrap_servers=bootstrap)  # type: ignore[call-arg]
    bars = _columns(table).bars()
    codec = HeaderCodec()
    topic = prefix + BARS.name
    writer = RecordWriter.build(codec, topic, bars[:3])
    assert writer is not None
    with RecordProducer(settings, bootstrap, codec) as producer:
        for bar in bars:
            producer.send_raw(topic, bar.symbol.encode(), writer.encode(bar), writer.headers)


def consume_ceiling(bootstrap: str, topic: str) -> float:
    """librdkafka alone: messages/s reading the whole topic in batches, no decoding."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    parts = consumer.list_topics(topic, timeout=15).topics[topic].partitions
    started = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    n, last = 0, time.perf_counter()
    while time.perf_counter() - last < 0.5:
        batch = consumer.consume(10_000, 0.1)
        if batch:
            n += sum(1 for m in batch if m.error() is None)
            last = time.perf_counter()
    consumer.close()
    return n / (last - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--format", default="csv", choices=("csv", "parquet"), help="the command's output tables")
    ap.add_argument("--skip-topic", action="store_true")
    ap.add_argument("--baseline-ref", default="HEAD", help="git ref whose command is the baseline")
    ap.add_argument("--baseline-bars", type=int, default=200_000, help="bars of the files the baseline reads")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        table = bar_table(args.bars, args.symbols)
        csv_path, parquet = write_files(table, tmp)
        print(
            f"{table.num_rows:,} bars, {args.symbols} symbols: {csv_path.stat().st_size / 1e6:.0f} MB CSV, "
            f"{parquet.stat().st_size / 1e6:.0f} MB Parquet (made in {time.perf_counter() - t0:.1f} s)"
        )
        print(f"same-run baseline, the engine alone in this process: {engine_alone(table):,.0f} bars/s")
        fmt = ["--format", args.format]
        ref = None if args.no_baseline else extract_ref(args.baseline_ref, tmp)
        if ref is not None:
            small = tmp / "small"
            small.mkdir()
            small_csv, small_parquet = write_files(table.slice(0, args.baseline_bars), small)
        for name, path in (("CSV", csv_path), ("Parquet", parquet)):
            run = run_cli(["--bars", str(path), *fmt], {}, ROOT, tmp / f"out-{name}")
            print(line(f"backtest --bars {name} --format {args.format}", run))
            if ref is not None:
                base_input = small_csv if name == "CSV" else small_parquet
                base = run_cli(["--bars", str(base_input), *fmt], {}, ref, tmp / f"base-{name}")
                print(
                    line(
                        f"  same-run baseline, {args.baseline_ref}'s command on the first "
                        f"{args.baseline_bars:,} bars",
                        base,
                    )
                    + f"; ratio {run['bars'] / run['wall'] / (base['bars'] / base['wall']):.1f}x"
                )
        if args.skip_topic:
            return
        from opsinfra.embedded import TansuBroker

        broker = TansuBroker(tmp)
        broker.start()
        try:
            prefix = "bench."
            t0 = time.perf_counter()
            produce_topic(table, broker.bootstrap, prefix)
            print(
                f"produced {table.num_rows:,} bars to {prefix}market.bars.1m "
                f"in {time.perf_counter() - t0:.1f} s"
            )
            ceiling = consume_ceiling(broker.bootstrap, prefix + "market.bars.1m")
            print(
                "same-run baseline, librdkafka alone reading the topic (no decoding): "
                f"{ceiling:,.0f} messages/s"
            )
            env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "PIPELINE_TOPIC_PREFIX": prefix}
            run = run_cli(["--topic", "market.bars.1m", *fmt], env, ROOT, tmp / "out-topic")
            print(line(f"backtest --topic --format {args.format}", run))
            if ref is not None:
                base = run_cli(["--topic", "market.bars.1m", *fmt], env, ref, tmp / "base-topic")
                print(
                    line(f"  same-run baseline, {args.baseline_ref}'s command on the same topic", base)
                    + f"; ratio {run['bars'] / run['wall'] / (base['bars'] / base['wall']):.1f}x"
                )
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
