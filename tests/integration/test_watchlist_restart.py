"""The watchlist stage restarted from a builder snapshot (state.watchlist) through the real broker: it
restores the snapshot, reads only the features after it, and publishes the watchlist an uninterrupted
run publishes, each entry once, including the entries a crash kept from being sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from opsinfra.endpoints import Endpoints
from opsinfra.kafka_config import consumer_config, producer_config
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Features, WatchlistEntry, WatchlistSnapshot
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import FEATURES, WATCHLIST, WATCHLIST_STATE
from streams import watchlist_agent
from streams.app import create_app, run_app
from streams.watchlist_snapshot import take
from tests.integration.test_trading_helpers import caught_up, read, run_until, session_features
from trading.watchlist import WatchlistBuilder, WatchlistConfig

pytestmark = pytest.mark.integration

SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA", "AMZN", "META")
CONFIG = WatchlistConfig(universe=SYMBOLS, top_n=3)


def stage_of(settings: Settings, bootstrap: str, holder: list[watchlist_agent.WatchlistHandler],
             every_s: float) -> Callable[[threading.Event], None]:
    endpoints = Endpoints(bootstrap, "", None, embedded=False)
    config = watchlist_agent.WatchlistAgentConfig(watchlist=CONFIG, snapshot_every_s=every_s)

    def register(p: Any) -> None:
        holder.append(watchlist_agent.register(p, endpoints=endpoints, config=config))

    def stage(stop: threading.Event) -> None:
        papp = create_app(settings, endpoints, app_id=watchlist_agent.APP_ID, broker_commit_interval=0.5,
                          agents=[register])
        run_app(papp, stop)

    return stage


def published(settings: Settings, bootstrap: str) -> list[WatchlistEntry]:
    got = [e for e in read(settings, bootstrap, WATCHLIST) if isinstance(e, WatchlistEntry)]
    return sorted(got, key=lambda e: (e.ts, e.rank))


def snapshots(settings: Settings, bootstrap: str) -> list[WatchlistSnapshot]:
    return [s for s in read(settings, bootstrap, WATCHLIST_STATE) if isinstance(s, WatchlistSnapshot)]


def test_a_restart_after_a_snapshot_reads_only_the_tail_and_publishes_the_same_watchlist(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    feats = session_features(SYMBOLS, 70, seed=7)
    expected = _expected(feats)
    group = provisioned.pipeline_topic_prefix + watchlist_agent.APP_ID
    first, live, rest = feats[: 20 * 6], feats[20 * 6 : 40 * 6], feats[40 * 6 :]
    for f in first:
        produce.send(FEATURES, f)
    produce.flush()

    runs: list[watchlist_agent.WatchlistHandler] = []
    sent_live = threading.Event()

    def live_then_caught_up() -> bool:  # bars arriving while the stage runs, then everything handled
        if not runs or runs[-1].stale or not caught_up(provisioned, kafka_bootstrap, group, FEATURES)():
            return False
        if not sent_live.is_set():
            for minute in range(0, len(live), 2 * 6):  # 2 minutes of bars every 0.25 s
                for f in live[minute : minute + 2 * 6]:
                    produce.send(FEATURES, f)
                produce.flush()
                time.sleep(0.25)
            sent_live.set()
            return False
        return runs[-1].snapshots_written > 0

    run_until(stage_of(provisioned, kafka_bootstrap, runs, 0.2), live_then_caught_up)
    assert runs[0].restored_from is None  # nothing to restore: the full rebuild
    taken = snapshots(provisioned, kafka_bootstrap)
    assert taken and sum(taken[-1].offsets) == len(first) + len(live)  # the shutdown one: everything

    for f in rest:
        produce.send(FEATURES, f)
    produce.flush()
    run_until(stage_of(provisioned, kafka_bootstrap, runs, 0.2),
              lambda: len(runs) == 2 and not runs[1].stale
              and caught_up(provisioned, kafka_bootstrap, group, FEATURES)())
    assert runs[1].restored_from == len(first) + len(live)
    assert published(provisioned, kafka_bootstrap) == expected


def _expected(feats: list[Features]) -> list[WatchlistEntry]:
    builder = WatchlistBuilder(CONFIG)
    return [e for f in feats for e in builder.on_features(f)]


def test_a_restart_from_a_snapshot_publishes_what_a_crash_kept_from_being_sent(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    feats = session_features(SYMBOLS, 60, seed=8)
    expected = _expected(feats)
    for f in feats:
        produce.send(FEATURES, f)
    produce.flush()
    topic = provisioned.topic(FEATURES.name)
    where = {(r.symbol, r.ts, r.revision): (m.partition, m.offset)
             for m, r in read_records(provisioned, kafka_bootstrap, HeaderCodec(), FEATURES, quiet_s=0.5)
             if isinstance(r, Features)}
    assert len(where) == len(feats)

    def offsets_at(cut: int) -> dict[int, int]:
        out = dict.fromkeys(range(FEATURES.partitions), 0)
        for f in feats[:cut]:
            p, o = where[(f.symbol, f.ts, f.revision)]
            out[p] = max(out[p], o + 1)
        return out

    # the crashed run: snapshot after 20 minutes, the group committed 35, entries sent up to minute 30
    snap_cut, commit_cut, sent_cut = 20 * 6, 35 * 6, 30 * 6
    builder = WatchlistBuilder(CONFIG)
    before = [e for f in feats[:snap_cut] for e in builder.on_features(f)]
    rec = take(builder, offsets_at(snap_cut), FEATURES.partitions, before[-1].ts, worker="crashed")
    sent = _expected(feats[:sent_cut])
    assert 0 < len(before) < len(sent) < len(expected)
    codec = HeaderCodec()
    producer = Producer(producer_config(provisioned, kafka_bootstrap))
    state_topic = provisioned.topic(WATCHLIST_STATE.name)
    value, headers = codec.encode(state_topic, rec)
    producer.produce(state_topic, value=value, key=rec.key().encode(), headers=list(headers))
    assert producer.flush(30) == 0
    for e in sent:
        produce.send(WATCHLIST, e)
    produce.flush()
    group = provisioned.pipeline_topic_prefix + watchlist_agent.APP_ID
    consumer = Consumer(consumer_config(provisioned, kafka_bootstrap, group_id=group))
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets_at(commit_cut).items()],
                        asynchronous=False)
    finally:
        consumer.close()

    runs: list[watchlist_agent.WatchlistHandler] = []
    run_until(stage_of(provisioned, kafka_bootstrap, runs, 300.0),
              lambda: bool(runs) and not runs[0].stale
              and caught_up(provisioned, kafka_bootstrap, group, FEATURES)())
    assert runs[0].restored_from == snap_cut
    assert published(provisioned, kafka_bootstrap) == expected
