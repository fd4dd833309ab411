"""Live latency through the real stages (features, signals, dispatch) on the embedded broker: bar ->
feature, bar -> signal, bar -> execution and bar -> decision (the equity point a desk publishes when
it decides a minute's first bar), p50/p99/max. A minute of bars every few seconds (`--every`), or
one minute per minute (`--realtime`: bars stamped with the wall minute that just ended).

`--baseline DIR` runs the same bench on the code in DIR (a `git worktree add DIR HEAD` of the old
code) right after, in a subprocess, so both figures come from the same machine state.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if "--code" in sys.argv:  # the code under test (a baseline worktree) comes before the installed one
    sys.path.insert(0, sys.argv[sys.argv.index("--code") + 1])

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from opsinfra.embedded import TansuBroker  # noqa: E402
from opsinfra.endpoints import Endpoints  # noqa: E402
from opsinfra.kafka_admin import create_topics  # noqa: E402
from opsinfra.kafka_config import admin_config, consumer_config  # noqa: E402
from opsinfra.settings import Settings  # noqa: E402
from schemas.codec import HeaderCodec, decode  # noqa: E402
from schemas.records import Bar, EquityPoint, Execution, Features, Recommendation  # noqa: E402
from schemas.topic_io import RecordProducer  # noqa: E402
from schemas.topics import ALL_TOPICS, BARS, EQUITY, EXECUTIONS, FEATURES, SIGNALS  # noqa: E402
from streams import dispatch_agent, features_agent, signal_agent  # noqa: E402
from streams.app import create_app, run_app  # noqa: E402

SYMBOLS = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA")
T0 = datetime(2026, 1, 6, 14, 30, tzinfo=UTC)
WARM = 60  # minutes sent at once first (indicator warm-up), not measured


def walk(minutes: int, start: datetime, seed: int = 11) -> dict[int, list[Bar]]:
    """Trending, turning prices (the rule fires now and then), log-normal volumes."""
    rnd = random.Random(seed)
    price = dict.fromkeys(SYMBOLS, 100.0)
    out: dict[int, list[Bar]] = {}
    for m in range(minutes):
        ts = start + timedelta(minutes=m)
        for i, s in enumerate(SYMBOLS):
            price[s] *= math.exp(0.003 * math.sin((m + 13 * i) / 6.0) + rnd.gauss(0, 0.001))
            p = price[s]
            volume = int(rnd.lognormvariate(8, 0.4))
            out.setdefault(m, []).append(Bar(s, ts, p, p, p, p, volume, 10, p, "live", 0))
    return out


class Reader:
    """Notes when each output arrives (wall time), keyed by the bar it came from."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings, self.bootstrap = settings, bootstrap
        self.seen: dict[str, dict[tuple[Any, ...], float]] = {
            "features": {}, "signals": {}, "executions": {}, "decisions": {}}
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        specs = {self.settings.topic(s.name): s for s in (FEATURES, SIGNALS, EXECUTIONS, EQUITY)}
        conf = consumer_config(self.settings, self.bootstrap, group_id=f"bench-{time.monotonic_ns()}",
                               **{"fetch.wait.max.ms": 5, "fetch.queue.backoff.ms": 1})
        consumer = Consumer(conf)
        consumer.assign([TopicPartition(t, p, 0) for t, s in specs.items() for p in range(s.partitions)])
        codec = HeaderCodec()
        self.ready.set()
        while not self.stop.is_set():
            msg = consumer.poll(0.05)
            if msg is None or msg.error() is not None:
                continue
            now = time.time()
            topic = msg.topic() or ""
            headers: Any = msg.headers()
            rec = decode(codec, specs[topic].record, msg.value(), headers, topic=topic)
            if isinstance(rec, Features):
                self.seen["features"].setdefault((rec.symbol, rec.ts), now)
            elif isinstance(rec, Recommendation):
                self.seen["signals"].setdefault((rec.symbol, rec.ts), now)
            elif isinstance(rec, Execution) and rec.bar_used_ts is not None:
                self.seen["executions"].setdefault((rec.account, rec.symbol, rec.bar_used_ts), now)
            elif isinstance(rec, EquityPoint):
                self.seen["decisions"].setdefault((rec.account, rec.ts), now)
        consumer.close()


def stages(settings: Settings, endpoints: Endpoints) -> list[Callable[[threading.Event], None]]:
    def stage(app_id: str, register: Callable[[Any], object]) -> Callable[[threading.Event], None]:
        return lambda stop: run_app(create_app(settings, endpoints, app_id=app_id, agents=[register]), stop)

    return [
        stage(features_agent.APP_ID, lambda p: features_agent.register(p)),
        stage(signal_agent.APP_ID, lambda p: signal_agent.register(p, endpoints=endpoints)),
        stage(dispatch_agent.APP_ID, lambda p: dispatch_agent.register(p, endpoints=endpoints)),
    ]


def figures(name: str, lat: list[float]) -> str:
    if len(lat) < 2:
        return f"{name}: {len(lat)} sample(s)"
    lat = sorted(lat)
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return f"{name}: n={len(lat)} p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms, max {lat[-1]:.0f} ms"


def run(minutes: int, every_s: float, realtime: bool, label: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        broker = TansuBroker(data)
        broker.start()
        try:
            settings = Settings(_env_file=None,  # type: ignore[call-arg]
                                kafka_bootstrap_servers=broker.bootstrap,
                                database_url=SecretStr("postgresql://unused@127.0.0.1/unused"),
                                pipeline_topic_prefix="live.", pipeline_data_dir=data,
                                schema_registry_url=None,
                                pipeline_symbols=SYMBOLS, pipeline_clock="wall")
            create_topics(AdminClient(admin_config(settings, broker.bootstrap)), ALL_TOPICS, prefix="live.")
            endpoints = Endpoints(broker.bootstrap, "postgresql://unused@127.0.0.1/unused", None, False)
            _measure(settings, endpoints, broker.bootstrap, minutes, every_s, realtime, label)
        finally:
            broker.stop()


def _measure(settings: Settings, endpoints: Endpoints, bootstrap: str, minutes: int, every_s: float,
             realtime: bool, label: str) -> None:
    if realtime:  # the paced minutes are the wall's: the first one ends at the next minute boundary
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        start = now - timedelta(minutes=WARM)
    else:
        start = T0
    bars = walk(WARM + minutes, start)
    reader = Reader(settings, bootstrap)
    reader.thread.start()
    reader.ready.wait(30)
    stop = threading.Event()
    threads = [threading.Thread(target=s, args=(stop,), daemon=True) for s in stages(settings, endpoints)]
    for t in threads:
        t.start()
    sent: dict[datetime, float] = {}
    with RecordProducer(settings, bootstrap, HeaderCodec()) as producer:
        for m in range(WARM):
            for b in bars[m]:
                producer.send(BARS, b)
        producer.flush()
        deadline = time.time() + 180
        while len(reader.seen["features"]) < WARM * len(SYMBOLS) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # the warm-up decided, every stage idle
        t0 = time.time()
        for m in range(WARM, WARM + minutes):
            ts = start + timedelta(minutes=m)
            due = (ts + timedelta(minutes=1)).timestamp() if realtime else t0 + (m - WARM + 1) * every_s
            while time.time() < due:
                time.sleep(0.002)
            sent[ts] = time.time()
            for b in bars[m]:
                producer.send(BARS, b)
            producer.flush()
    time.sleep(max(8.0, every_s * 2))  # the last minute: closed by its deadline (or, old code, silence)
    stop.set()
    for t in threads:
        t.join(60)
    reader.stop.set()
    reader.thread.join(10)
    seen = reader.seen
    lat: dict[str, list[float]] = {k: [] for k in seen}
    for key, at in seen["features"].items():
        if key[1] in sent:
            lat["features"].append((at - sent[key[1]]) * 1000)
    for key, at in seen["signals"].items():
        if key[1] in sent:
            lat["signals"].append((at - sent[key[1]]) * 1000)
    for key, at in seen["executions"].items():
        if key[2] in sent:
            lat["executions"].append((at - sent[key[2]]) * 1000)
    for key, at in seen["decisions"].items():
        if key[1] in sent and key[1] != start + timedelta(minutes=WARM):  # the first: the desk's first bar
            lat["decisions"].append((at - sent[key[1]]) * 1000)
    mode = "one minute per minute" if realtime else f"a minute every {every_s:g} s"
    print(f"[{label}] {len(SYMBOLS)} symbols, {mode}, {minutes} minutes:")
    for name, what in (("features", "bar -> feature"), ("signals", "bar -> signal"),
                       ("executions", "bar -> execution"), ("decisions", "bar -> decision (equity point)")):
        print("  " + figures(what, lat[name]))
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=int, default=40)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between minutes")
    parser.add_argument("--realtime", action="store_true", help="one minute per minute (wall minutes)")
    parser.add_argument("--baseline", type=Path, help="also run the old code of this worktree, after")
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)  # set by --baseline
    parser.add_argument("--label", default="new")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    run(args.minutes, args.every, args.realtime, args.label)
    if args.baseline is not None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--code", str(args.baseline.resolve()),
               "--label", f"baseline {args.baseline}", "--minutes", str(args.minutes),
               "--every", str(args.every)]
        if args.realtime:
            cmd.append("--realtime")
        env = dict(os.environ, PYTHONPATH=str(args.baseline.resolve()))
        subprocess.run(cmd, check=True, env=env, cwd=args.baseline)


if __name__ == "__main__":
    main()
