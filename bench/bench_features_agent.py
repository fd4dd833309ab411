"""Features agent on an embedded Tansu broker: catch-up throughput and bar-to-feature latency.

Catch-up: N bars of S symbols already on market.bars.1m, one worker, from the first bar consumed
to the last feature acknowledged by the broker. Latency: S symbols, one bar each per second for
D seconds, from `produce()` of a bar to its feature read by a consumer. Also the pure
FeatureEngine rate, for scale. Run: python bench/bench_features_agent.py [--bars N] [--seconds D].
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from opsinfra.embedded import TansuBroker
from opsinfra.endpoints import Endpoints
from opsinfra.kafka_admin import create_topics
from opsinfra.kafka_config import admin_config, consumer_config
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Bar
from schemas.topic_io import RecordProducer
from schemas.topics import ALL_TOPICS, BARS, FEATURES
from streams.app import create_app, run_app
from streams.features_agent import APP_ID, FeaturesConfig, FeaturesHandler, register
from streams.features_state import PartitionState, read_partition, replay_into
from trading.features import FeatureEngine

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def symbols(n: int) -> list[str]:
    return [f"S{i:03d}" for i in range(n)]


def walk_bars(n_bars: int, syms: Sequence[str], seed: int = 7) -> list[Bar]:
    rng = random.Random(seed)
    price = dict.fromkeys(syms, 100.0)
    out = []
    for minute in range(n_bars // len(syms)):
        ts = T0 + timedelta(minutes=minute)
        for s in syms:
            price[s] = max(0.01, price[s] * (1 + rng.gauss(0, 0.001)))
            out.append(
                Bar(
                    s,
                    ts,
                    price[s],
                    price[s],
                    price[s],
                    price[s],
                    int(rng.expovariate(1 / 800)),
                    None,
                    None,
                    "replay",
                    0,
                )
            )
    return out


class Timed(FeaturesHandler):
    """The real handler, noting when the first batch arrived and when outputs were delivered."""

    first: float | None = None
    cpu_first = 0.0
    delivered = 0
    last = cpu_last = 0.0

    async def handle(self, events: Sequence[Any], ack: Any) -> None:
        if self.first is None:
            self.first, self.cpu_first = time.perf_counter(), time.process_time()
        await super().handle(events, ack)

    async def _ack_when_delivered(self, futures: list[Any], events: list[Any], ack: Any) -> None:
        await super()._ack_when_delivered(futures, events, ack)
        self.delivered += len(events)  # every bar of the bench yields a feature
        self.last, self.cpu_last = time.perf_counter(), time.process_time()


class Stage:
    """One features worker on its own thread, with the Timed handler."""

    def __init__(self, settings: Settings, endpoints: Endpoints, config: FeaturesConfig) -> None:
        self.handler: Timed | None = None

        def registrar(papp: Any) -> None:
            import streams.features_agent as fa

            original = fa.FeaturesHandler
            fa.FeaturesHandler = Timed  # type: ignore[misc]
            try:
                self.handler = register(papp, config=config)  # type: ignore[assignment]
            finally:
                fa.FeaturesHandler = original  # type: ignore[misc]

        self.papp = create_app(settings, endpoints, app_id=APP_ID, agents=[registrar])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_app, args=(self.papp, self.stop), daemon=True)

    def __enter__(self) -> Stage:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(60)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def make_settings(broker: TansuBroker, data: Path, prefix: str) -> tuple[Settings, Endpoints]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers=broker.bootstrap,
        database_url=SecretStr("postgresql://unused@127.0.0.1/unused"),
        pipeline_topic_prefix=prefix,
        pipeline_data_dir=data,
        schema_registry_url=None,
    )
    create_topics(AdminClient(admin_config(settings, broker.bootstrap)), ALL_TOPICS, prefix=prefix)
    return settings, Endpoints(broker.bootstrap, "postgresql://unused@127.0.0.1/unused", None, False)


def catch_up(broker: TansuBroker, data: Path, n_bars: int, n_syms: int, config: FeaturesConfig) -> None:
    settings, endpoints = make_settings(broker, data, "catchup.")
    bars = walk_bars(n_bars, symbols(n_syms))
    t = time.perf_counter()
    with RecordProducer(settings, broker.bootstrap, HeaderCodec()) as producer:
        for bar in bars:
            producer.send(BARS, bar)
    print(f"produced {len(bars):,} bars of {n_syms} symbols in {time.perf_counter() - t:.1f}s")
    with Stage(settings, endpoints, config) as stage:
        wait_for(lambda: stage.handler is not None and stage.handler.delivered >= len(bars), 900, "catch-up")
        h = stage.handler
        assert h is not None and h.first is not None
        elapsed, cpu = h.last - h.first, h.cpu_last - h.cpu_first
        print(
            f"catch-up: {len(bars):,} bars in {elapsed:.2f}s = {len(bars) / elapsed:,.0f} bars/s; "
            f"worker CPU {cpu / len(bars) * 1e6:.0f} us/bar (= {len(bars) / cpu:,.0f} bars per CPU-second); "
            f"load average {os.getloadavg()[0]:.1f}"
        )
    rebuild(settings, broker.bootstrap, bars)
    ceiling(settings, endpoints, len(bars))


def ceiling(settings: Settings, endpoints: Endpoints, n_bars: int) -> None:
    """faust's own consume-only rate on the same topic and machine: an agent that only acks.

    The catch-up figure depends on the machine (6.5k bars/s on one of the project's machines,
    11k on another); its ratio to this ceiling does not, much."""
    state = {"n": 0, "first": 0.0, "last": 0.0}

    def registrar(papp: Any) -> None:
        async def consume_only(stream: Any) -> None:
            async for events in stream.noack_take(1000, within=0.01):
                if not state["n"]:
                    state["first"] = time.perf_counter()
                for event in events:
                    await stream.ack(event)
                state["n"] += len(events)
                state["last"] = time.perf_counter()

        papp.app.agent(papp.topic(BARS), name="consume-only", concurrency=1)(consume_only)

    papp = create_app(settings, endpoints, app_id="bench-consume-only", agents=[registrar])
    stop = threading.Event()
    thread = threading.Thread(target=run_app, args=(papp, stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: state["n"] >= n_bars, 600, "the consume-only agent")
    finally:
        stop.set()
        thread.join(60)
    elapsed = state["last"] - state["first"]
    print(f"faust consume-only ceiling (ack, no work): {n_bars / elapsed:,.0f} messages/s")


def rebuild(settings: Settings, bootstrap: str, bars: Sequence[Bar]) -> None:
    """A cold worker's state rebuild: every partition replayed from offset 0, outputs dropped."""
    parts = list(range(BARS.partitions))
    ends = Counter(DefaultPartitioner()(b.symbol.encode(), parts, parts) for b in bars)
    topic, codec = settings.topic(BARS.name), HeaderCodec()
    t = time.perf_counter()
    replayed = 0
    for p, end in ends.items():
        state = PartitionState()
        messages = read_partition(settings, bootstrap, topic, p, 0, end)
        replayed += replay_into(state, codec, messages, topic=topic, partition=p, end=end).bars
    elapsed = time.perf_counter() - t
    print(
        f"state rebuild from the topic: {replayed:,} bars in {elapsed:.2f}s "
        f"= {replayed / elapsed:,.0f} bars/s"
    )


def latency(broker: TansuBroker, data: Path, n_syms: int, seconds: int, config: FeaturesConfig) -> None:
    settings, endpoints = make_settings(broker, data, "latency.")
    syms = symbols(n_syms)
    sent: dict[tuple[str, int], float] = {}
    seen: dict[tuple[str, int], float] = {}
    reader_stop = threading.Event()
    reader_ready = threading.Event()
    topic = settings.topic(FEATURES.name)

    def read() -> None:
        conf = consumer_config(
            settings,
            broker.bootstrap,
            group_id=f"bench-{time.monotonic_ns()}",
            **{"fetch.wait.max.ms": 5, "fetch.queue.backoff.ms": 1},
        )
        consumer = Consumer(conf)
        consumer.assign([TopicPartition(topic, p, 0) for p in range(FEATURES.partitions)])
        codec = HeaderCodec()
        from schemas.codec import decode
        from schemas.records import Features

        reader_ready.set()
        while not reader_stop.is_set():
            msg = consumer.poll(0.05)
            if msg is None or msg.error() is not None:
                continue
            now = time.perf_counter()
            headers: Any = msg.headers()
            rec = decode(codec, Features, msg.value(), headers, topic=topic)
            seen[(rec.symbol, int(rec.ts.timestamp()))] = now
        consumer.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader_ready.wait(30)
    with (
        Stage(settings, endpoints, config) as stage,
        RecordProducer(settings, broker.bootstrap, HeaderCodec()) as producer,
    ):
        # one warm-up bar per symbol: the worker joins the group and compiles its paths
        for s in syms:
            producer.send(
                BARS, Bar(s, T0 - timedelta(minutes=1), 100, 100, 100, 100, 100, None, None, "live", 0)
            )
        producer.flush()
        wait_for(lambda: stage.handler is not None and stage.handler.delivered >= n_syms, 120, "warm-up")
        rng = random.Random(3)
        start = time.perf_counter()
        for second in range(seconds):
            wait = start + second - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            ts = T0 + timedelta(minutes=second)
            for s in syms:
                close = 100 + rng.random()
                sent[(s, int(ts.timestamp()))] = time.perf_counter()
                producer.send(BARS, Bar(s, ts, close, close, close, close, 100, None, None, "live", 0))
            producer.flush()
        wait_for(lambda: len([k for k in sent if k in seen]) >= len(sent), 60, "the last features")
    reader_stop.set()
    reader.join(10)
    lat = sorted((seen[k] - sent[k]) * 1000 for k in sent)
    q = statistics.quantiles(lat, n=100)
    print(
        f"latency: {len(lat):,} bars ({n_syms} symbols x {seconds}s): p50 {q[49]:.1f} ms, "
        f"p99 {q[98]:.1f} ms, max {lat[-1]:.1f} ms (batch window {config.batch_within_s * 1000:.0f} ms)"
    )


def engine_rate(n_bars: int) -> None:
    bars = walk_bars(n_bars, ["AAPL"])
    engine = FeatureEngine("AAPL")
    t = time.perf_counter()
    for b in bars:
        engine.update(b.ts, b.close, b.volume, b.revision)
    print(
        f"pure FeatureEngine: {n_bars / (time.perf_counter() - t):,.0f} bars/s (one symbol, all indicators)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--batch", type=int, default=FeaturesConfig.batch_size)
    parser.add_argument("--within", type=float, default=FeaturesConfig.batch_within_s)
    parser.add_argument("--skip", choices=["catchup", "latency"], action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = FeaturesConfig(batch_size=args.batch, batch_within_s=args.within)
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio (uvloop not installed)"
    print(f"python {sys.version.split()[0]}, event loop: {loop}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        broker = TansuBroker(data)
        broker.start()
        try:
            if "catchup" not in args.skip:
                catch_up(broker, data, args.bars, args.symbols, config)
            if "latency" not in args.skip:
                latency(broker, data, args.symbols, args.seconds, config)
        finally:
            broker.stop()
    engine_rate(200_000)


if __name__ == "__main__":
    main()
