"""Helpers (no tests) shared by the trading integration and fault tests: sessions, stage runners."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Features, Record
from schemas.topic_io import read_records
from schemas.topics import TopicSpec
from trading.features import FeatureEngine

# Tuesday 2024-03-12, 09:30 New York
OPEN = datetime(2024, 3, 12, 13, 30, tzinfo=UTC)


def session_features(symbols: tuple[str, ...], minutes: int, *, start: datetime = OPEN,
                     seed: int = 1) -> list[Features]:
    """Features of a synthetic session: noisy prices drifting up and down in turns (so the rule
    fires BUYs and SELLs), log-normal volumes (so some signals are weak or killed). Time order."""
    rnd = random.Random(seed)
    engines = {s: FeatureEngine(s) for s in symbols}
    price = dict.fromkeys(symbols, 100.0)
    out = []
    for m in range(minutes):
        ts = start + timedelta(minutes=m)
        for i, s in enumerate(symbols):
            drift = 0.0015 * math.sin((m + 29 * i) / 40.0)
            price[s] *= math.exp(drift + rnd.gauss(0, 0.002))
            v = engines[s].update(ts, price[s], int(rnd.lognormvariate(7, 0.6)))
            assert v is not None
            out.append(Features(**{k: getattr(v, k) for k in Features.field_names()}))
    return out


def read(settings: Settings, bootstrap: str, spec: TopicSpec, **kw: Any) -> list[Record]:
    got = read_records(settings, bootstrap, HeaderCodec(), spec, quiet_s=kw.pop("quiet_s", 0.5), **kw)
    return [r for _, r in got if isinstance(r, Record)]


def run_until(stage: Callable[[threading.Event], None], done: Callable[[], bool], *,
              deadline_s: float = 120.0, poll_s: float = 0.5) -> None:
    """Runs a stage in a thread until `done()` holds (or the deadline), then stops it cleanly."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            stage(stop)
        except BaseException as exc:  # surfaced below
            failure.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    end = time.monotonic() + deadline_s
    ok = False
    try:
        while time.monotonic() < end and worker.is_alive():
            if done():
                ok = True
                break
            time.sleep(poll_s)
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive(), "stage did not stop"
    assert not failure, failure
    assert ok, "condition not reached before the deadline"


def ends(settings: Settings, bootstrap: str, spec: TopicSpec) -> dict[int, int]:
    """The next offset of each non-empty partition of a topic (read, not the reported watermark)."""
    from opsinfra.kafka_io import read_to_end

    out: dict[int, int] = {}
    for m in read_to_end(settings, bootstrap, settings.topic(spec.name), quiet_s=0.5):
        out[m.partition] = max(out.get(m.partition, 0), m.offset + 1)
    return out


def committed(settings: Settings, bootstrap: str, group: str, spec: TopicSpec) -> dict[int, int]:
    """The consumer group's committed offsets on a topic."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from opsinfra.kafka_config import admin_config

    admin = AdminClient(admin_config(settings, bootstrap))
    topic = settings.topic(spec.name)
    parts = [TopicPartition(topic, p) for p in range(spec.partitions)]
    fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, parts)])[group]
    result = fut.result(timeout=15)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def caught_up(settings: Settings, bootstrap: str, group: str, *specs: TopicSpec) -> Callable[[], bool]:
    """A run_until condition: the group has committed everything its input topics hold now."""
    targets = {spec: ends(settings, bootstrap, spec) for spec in specs}

    def done() -> bool:
        for spec, end in targets.items():
            got = committed(settings, bootstrap, group, spec)
            if any(got.get(p, -1) < o for p, o in end.items()):
                return False
        return True

    return done


def dispatch_stage(settings: Settings, bootstrap: str, config: Any) -> Callable[[threading.Event], None]:
    """The dispatch stage with `config` (a DispatchConfig), for `run_until`; commits every 0.5 s."""
    from opsinfra.endpoints import Endpoints
    from streams import dispatch_agent
    from streams.app import PipelineApp, create_app, run_app

    endpoints = Endpoints(bootstrap, "", None, embedded=False)

    def register(p: PipelineApp) -> None:
        dispatch_agent.register(p, endpoints=endpoints, config=config)

    def stage(stop: threading.Event) -> None:
        papp = create_app(settings, endpoints, app_id=dispatch_agent.APP_ID, broker_commit_interval=0.5,
                          agents=[register])
        run_app(papp, stop)

    return stage
