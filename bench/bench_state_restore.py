"""Features agent start-up over a long retained history: full replay vs snapshot + tail, same run.

N bars of S symbols on market.bars.1m (embedded Tansu broker); the consumer group has committed
all but the last `--tail` bars, which stand for the bars that came after the last snapshot. The
snapshots (state.features) are taken by `take()` from states rebuilt by the agent's own replay.
Each run starts a real features stage under a fresh group, and times from its first batch (and
from the stage's start) to the tail's outputs delivered: the stage is then ready for live bars.
The two runs must end with equal engine states. With --watchlist, also the watchlist agent's
start-up over the features.1m records of the same bars: the full rebuild (it reads the whole topic;
with --baseline, also the old code's) vs restoring a state.watchlist snapshot taken --watchlist-tail
features before the end and reading only the features after it. Run:
python bench/bench_state_restore.py [--bars 1400000] [--symbols 50] [--tail 250] [--watchlist]
    [--watchlist-only] [--baseline /tmp/base/streams/watchlist_agent.py]
Prints figures, asserts only that the states agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_features_agent import make_settings, symbols, walk_bars  # noqa: E402

from opsinfra.embedded import TansuBroker  # noqa: E402
from opsinfra.endpoints import Endpoints  # noqa: E402
from opsinfra.kafka_config import consumer_config, producer_config  # noqa: E402
from opsinfra.settings import Settings  # noqa: E402
from schemas.codec import HeaderCodec  # noqa: E402
from schemas.records import Bar  # noqa: E402
from schemas.topic_io import RecordProducer  # noqa: E402
from schemas.topics import BARS, FEATURE_STATE  # noqa: E402
from streams.app import create_app, run_app  # noqa: E402
from streams.features_agent import FeaturesConfig, FeaturesHandler, register  # noqa: E402
from streams.features_snapshot import take  # noqa: E402
from streams.features_state import PartitionState, read_partition, replay_into  # noqa: E402


class Timed(FeaturesHandler):
    """The real handler, noting when its first batch arrived."""

    first: float | None = None

    async def handle(self, events: Any, ack: Any) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        await super().handle(events, ack)


def partition_ends(bars: list[Bar]) -> Counter[int]:
    parts = list(range(BARS.partitions))
    return Counter(DefaultPartitioner()(b.symbol.encode(), parts, parts) for b in bars)


def commit(settings: Settings, bootstrap: str, group: str, offsets: dict[int, int]) -> None:
    consumer = Consumer(consumer_config(settings, bootstrap, group_id=group))
    try:
        topic = settings.topic(BARS.name)
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def write_snapshots(settings: Settings, bootstrap: str, upto: dict[int, int]) -> float:
    """Rebuild each partition to `upto` with the agent's replay, write its snapshot; the rebuild time."""
    topic, codec = settings.topic(BARS.name), HeaderCodec()
    state_topic = settings.topic(FEATURE_STATE.name)
    producer = Producer(producer_config(settings, bootstrap))
    t = time.perf_counter()
    elapsed = 0.0
    for p, end in sorted(upto.items()):
        state = PartitionState()
        replay_into(state, codec, read_partition(settings, bootstrap, topic, p, 0, end), topic=topic,
                    partition=p, end=end)
        elapsed = time.perf_counter() - t
        for rec in take(p, state, worker="bench"):
            value, headers = codec.encode(state_topic, rec)
            key = rec.key().encode()
            producer.produce(state_topic, value=value, key=key, partition=p, headers=list(headers))
    assert producer.flush(30) == 0
    return elapsed


def start_stage(settings: Settings, endpoints: Endpoints, app_id: str, every_s: float, tail: int) -> \
        tuple[dict[str, float], dict[int, PartitionState]]:
    """A features stage under `app_id`; times to the tail's outputs delivered."""
    holder: dict[str, Any] = {}

    def registrar(papp: Any) -> None:
        import streams.features_agent as fa

        original = fa.FeaturesHandler
        fa.FeaturesHandler = Timed  # type: ignore[misc]
        try:
            holder["h"] = register(papp, config=FeaturesConfig(snapshot_every_s=every_s))
        finally:
            fa.FeaturesHandler = original  # type: ignore[misc]

    import threading

    t0 = time.perf_counter()
    papp = create_app(settings, endpoints, app_id=app_id, agents=[registrar])
    stop = threading.Event()
    thread = threading.Thread(target=run_app, args=(papp, stop), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 600
        while not ("h" in holder and holder["h"].counts["acked"] >= tail):  # acked: outputs delivered
            if time.monotonic() > deadline or not thread.is_alive():
                raise SystemExit(f"{app_id} never got ready")
            time.sleep(0.005)
        ready = time.perf_counter()
    finally:
        stop.set()
        thread.join(60)
    h = holder["h"]
    return {"from_first_batch": ready - h.first, "from_stage_start": ready - t0}, h.states


def load_old_watchlist_agent(path: Path) -> Any:
    """The watchlist agent module of a baseline worktree (its streams/watchlist_agent.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_watchlist_agent", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def watchlist_rebuild(settings: Settings, endpoints: Endpoints, bars: list[Bar], tail: int,
                      baseline: Path | None) -> None:
    """features.1m holding one record per bar; the watchlist handler's start-up rebuild, full (and
    the baseline's, if given) vs from a snapshot taken `tail` features before the end, same run."""
    from schemas.topics import FEATURES, WATCHLIST_STATE
    from streams.watchlist_agent import APP_ID, WatchlistAgentConfig, WatchlistHandler
    from streams.watchlist_snapshot import take as take_watchlist
    from trading.features import FeatureEngine
    from trading.watchlist import WatchlistBuilder

    engines: dict[str, FeatureEngine] = {}
    feats = []
    t = time.perf_counter()
    with RecordProducer(settings, endpoints.kafka_bootstrap_servers, HeaderCodec()) as producer:
        for b in bars:
            engine = engines.get(b.symbol) or engines.setdefault(b.symbol, FeatureEngine(b.symbol))
            values = engine.update(b.ts, b.close, b.volume, b.revision)
            if values is not None:
                producer.send(FEATURES, values)
                feats.append(values)
    print(f"produced {len(feats):,} features records in {time.perf_counter() - t:.1f}s")
    universe = tuple(sorted(engines))  # the watchlist closes a window once every symbol moved on
    wl_settings = settings.model_copy(update={"pipeline_symbols": universe})

    # the snapshot a live run would have written `tail` features before the end; the group committed all
    parts = list(range(FEATURES.partitions))
    partitioner = DefaultPartitioner()
    where = [partitioner(f.symbol.encode(), parts, parts) for f in feats]
    offsets, ends = Counter(where[: len(feats) - tail]), Counter(where)
    papp = create_app(wl_settings, endpoints, app_id=APP_ID, agents=[])
    config = WatchlistAgentConfig.from_settings(wl_settings)
    builder = WatchlistBuilder(config.watchlist)
    before = [e for f in feats[: len(feats) - tail] for e in builder.on_features(f)]
    del feats
    rec = take_watchlist(builder, dict(offsets), FEATURES.partitions, before[-1].ts if before else None,
                         worker="bench")
    state_topic = settings.topic(WATCHLIST_STATE.name)
    bootstrap = endpoints.kafka_bootstrap_servers
    raw = Producer(producer_config(settings, bootstrap))
    value, headers = papp.codec.encode(state_topic, rec)
    raw.produce(state_topic, value=value, key=rec.key().encode(), headers=list(headers))
    assert raw.flush(30) == 0
    consumer = Consumer(consumer_config(settings, bootstrap, group_id=papp.app.conf.id))
    topic = settings.topic(FEATURES.name)
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in ends.items()], asynchronous=False)
    consumer.close()
    print(f"snapshot: {len(rec.state):,} bytes, at {sum(offsets.values()):,} of {sum(ends.values()):,} "
          "features")

    states = {}
    runs: list[tuple[str, Any]] = [
        ("full rebuild (snapshots off)",
         lambda: WatchlistHandler(papp, dataclasses.replace(config, snapshot_every_s=0.0), endpoints)),
        ("snapshot + tail",
         lambda: WatchlistHandler(papp, dataclasses.replace(config, snapshot_every_s=300.0), endpoints)),
    ]
    if baseline is not None:
        old = load_old_watchlist_agent(baseline)
        runs.insert(0, ("baseline (old code) full rebuild",
                        lambda: old.WatchlistHandler(
                            papp, old.WatchlistAgentConfig.from_settings(wl_settings), endpoints)))
    for name, make in runs:
        t = time.perf_counter()
        try:
            handler = make()
            t = time.perf_counter()
            _, built, missing = handler.rebuild_sync()
            took = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 - the baseline fails at 1.4M: print it, go on
            print(f"watchlist {name}: FAILED after {time.perf_counter() - t:.1f}s: "
                  f"{type(exc).__name__}: {exc}")
            continue
        states[name] = built.to_state()
        print(f"watchlist {name}: ready in {took:.2f}s ({len(missing)} entries to publish; "
              f"load average {os.getloadavg()[0]:.1f})")
    full, snap = states["full rebuild (snapshots off)"], states["snapshot + tail"]
    assert full == snap, "the snapshot + tail builder state differs from the full rebuild's"
    print("watchlist builder states equal (full rebuild vs snapshot + tail): True")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=1_400_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--tail", type=int, default=250, help="bars after the snapshots (5 min x 50 symbols)")
    parser.add_argument("--watchlist", action="store_true", help="also time the watchlist agent's rebuild")
    parser.add_argument("--watchlist-only", action="store_true", help="only the watchlist figures")
    parser.add_argument("--watchlist-tail", type=int, default=250,
                        help="features after the watchlist snapshot")
    parser.add_argument("--baseline", type=Path, help="a baseline worktree's streams/watchlist_agent.py")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("streams.features_agent").setLevel(logging.INFO)
    logging.getLogger("streams.features_snapshot").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        broker = TansuBroker(data)
        broker.start()
        try:
            settings, endpoints = make_settings(broker, data, "restore.")
            bars = walk_bars(args.bars, symbols(args.symbols))
            t = time.perf_counter()
            with RecordProducer(settings, broker.bootstrap, HeaderCodec()) as producer:
                for bar in bars:
                    producer.send(BARS, bar)
            print(f"produced {len(bars):,} bars of {args.symbols} symbols in {time.perf_counter() - t:.1f}s")
            ends = partition_ends(bars)
            tail_ends = partition_ends(bars[len(bars) - args.tail :])
            committed = {p: ends[p] - tail_ends.get(p, 0) for p in ends}
            if args.watchlist or args.watchlist_only:
                watchlist_rebuild(settings, endpoints, bars, args.watchlist_tail, args.baseline)
            if args.watchlist_only:
                return
            del bars
            rebuild = write_snapshots(settings, broker.bootstrap, committed)
            print(f"snapshots written after the agent's replay, alone: {sum(committed.values()):,} bars "
                  f"in {rebuild:.2f}s")
            figures: dict[str, dict[str, float]] = {}
            states: dict[str, dict[int, PartitionState]] = {}
            for name, every in (("full replay (snapshots off)", 0.0), ("snapshot + tail", 300.0)):
                app_id = f"bench-restore-{len(figures)}"
                commit(settings, broker.bootstrap, settings.pipeline_topic_prefix + app_id, committed)
                figures[name], states[name] = start_stage(settings, endpoints, app_id, every, args.tail)
                f = figures[name]
                print(f"{name}: ready {f['from_first_batch']:.2f}s after its first batch, "
                      f"{f['from_stage_start']:.2f}s after the stage started "
                      f"(load average {os.getloadavg()[0]:.1f})")
            a, b = states.values()
            same = {p: {s: e.to_state() for s, e in st.engines.items()} for p, st in a.items()} == \
                {p: {s: e.to_state() for s, e in st.engines.items()} for p, st in b.items()}
            assert same, "the snapshot + tail state differs from the full replay's"
            full, snap = (f["from_first_batch"] for f in figures.values())
            print(f"engine states equal: {same}; ready {full / snap:.1f}x sooner from a snapshot")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
