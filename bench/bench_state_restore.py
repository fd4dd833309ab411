"""Features agent start-up over a long retained history: full replay vs snapshot + tail, same run.

N bars of S symbols on market.bars.1m (embedded Tansu broker); the consumer group has committed
all but the last `--tail` bars, which stand for the bars that came after the last snapshot. The
snapshots (state.features) are taken by `take()` from states rebuilt by the agent's own replay.
Each run starts a real features stage under a fresh group, and times from its first batch (and
from the stage's start) to the tail's outputs delivered: the stage is then ready for live bars.
The two runs must end with equal engine states. With --watchlist, also the watchlist agent's
start-up rebuild over the features.1m records of the same bars (it reads the whole topic). Run:
python bench/bench_state_restore.py [--bars 1400000] [--symbols 50] [--tail 250] [--watchlist]
Prints figures, asserts only that the states agree.
"""

from __future__ import annotations

import argparse
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


def watchlist_rebuild(settings: Settings, endpoints: Endpoints, bars: list[Bar]) -> None:
    """features.1m holding one record per bar, then the watchlist handler's rebuild_sync."""
    from schemas.topics import FEATURES
    from streams.watchlist_agent import WatchlistAgentConfig, WatchlistHandler
    from trading.features import FeatureEngine

    engines: dict[str, FeatureEngine] = {}
    t = time.perf_counter()
    with RecordProducer(settings, endpoints.kafka_bootstrap_servers, HeaderCodec()) as producer:
        for b in bars:
            engine = engines.get(b.symbol) or engines.setdefault(b.symbol, FeatureEngine(b.symbol))
            values = engine.update(b.ts, b.close, b.volume, b.revision)
            if values is not None:
                producer.send(FEATURES, values)
    print(f"produced {len(bars):,} features records in {time.perf_counter() - t:.1f}s")
    papp = create_app(settings, endpoints, app_id="bench-watchlist", agents=[])
    universe = tuple(sorted(engines))  # the watchlist closes a window once every symbol moved on
    config = WatchlistAgentConfig.from_settings(settings.model_copy(update={"pipeline_symbols": universe}))
    handler = WatchlistHandler(papp, config, endpoints)
    t = time.perf_counter()
    handler.rebuild_sync()
    print(f"watchlist rebuild (whole features.1m, news.scored, watchlist): {time.perf_counter() - t:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=1_400_000)
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--tail", type=int, default=250, help="bars after the snapshots (5 min x 50 symbols)")
    parser.add_argument("--watchlist", action="store_true", help="also time the watchlist agent's rebuild")
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
            if args.watchlist:
                watchlist_rebuild(settings, endpoints, bars)
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
