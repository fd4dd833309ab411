"""kill -9 of features workers (`ops-pipeline run --only features` subprocesses) mid-stream, a
restart, and two workers sharing the symbols: every record emitted equals what an uninterrupted
run emits (FeatureEngine on the same bars, which the integration tests hold the agent to), and
nothing is missing. Each record names the worker that emitted it in its `ops.worker` header. With
engine snapshots (state.features), a restart restores them and replays only the tail; a corrupt or
incompatible one is ignored for the full replay."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Producer, TopicPartition

from opsinfra.kafka_config import consumer_config, producer_config
from opsinfra.kafka_io import Consumed
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Bar, Features, FeatureSnapshot
from schemas.topic_io import RecordProducer
from schemas.topics import BARS, FEATURE_STATE, FEATURES
from streams.features_agent import APP_ID
from streams.features_snapshot import checksum_of, take
from streams.features_state import PartitionState
from tests.integration.test_features_agent import (
    Key,
    read_dead_letters,
    read_features,
    reference,
    same,
    walk,
    with_revisions,
    worker_of,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration]
SYMBOLS = [f"F{i:02d}" for i in range(20)]
REPO = Path(__file__).resolve().parents[2]
ASSIGNED = re.compile(r"features: assigned partitions ([\d,]*|none)")
REBUILT = re.compile(r"features: partition (\d+) rebuilt from offset (\d+) to (\d+): (\d+) bars")
RESTORED = re.compile(r"features: partition (\d+) restored from snapshot at offset (\d+)")
SNAPSHOT = re.compile(r"features: partition (\d+) snapshot at offset (\d+)")
NOT_USED = re.compile(r"features: partition (\d+): snapshot not used: (.*)")


class Worker:
    """One `ops-pipeline run --only features` process, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run", "--only", "features"],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.id = f"{socket.gethostname()}:{self.proc.pid}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def assignment(self) -> set[int] | None:
        """The partitions of its latest assignment, None before the first."""
        found = ASSIGNED.findall(self.text())
        if not found:
            return None
        return {int(p) for p in found[-1].split(",") if p.isdigit()}

    def rebuilds(self) -> list[tuple[int, int, int, int]]:
        """(partition, from offset, to offset, bars replayed) of each state rebuild it logged."""
        return [tuple(map(int, m)) for m in REBUILT.findall(self.text())]  # type: ignore[misc]

    def restores(self) -> dict[int, int]:
        """partition -> the bar offset of the snapshot it restored (the latest restore)."""
        return {int(p): int(o) for p, o in RESTORED.findall(self.text())}

    def snapshots(self) -> dict[int, set[int]]:
        """partition -> bar offsets of the snapshots it wrote (confirmed by the broker)."""
        out: dict[int, set[int]] = defaultdict(set)
        for p, o in SNAPSHOT.findall(self.text()):
            out[int(p)].add(int(o))
        return out

    def check_alive(self) -> None:
        assert self.proc.poll() is None, f"worker exited {self.proc.returncode}: {self.text()[-3000:]}"

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def freeze(self) -> None:
        """SIGSTOP: it holds its partitions and commits nothing more (kill9 still works)."""
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture
def workers(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DATABASE_URL=database_url,
        PIPELINE_TOPIC_PREFIX=provisioned.pipeline_topic_prefix,
        PIPELINE_DATA_DIR=str(tmp_path / "data"),
        LOG_LEVEL="INFO",
    )
    env.pop("SCHEMA_REGISTRY_URL", None)
    started: list[Worker] = []

    def start(name: str, **extra_env: str) -> Worker:
        worker = Worker({**env, **extra_env}, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


class Feeder(threading.Thread):
    """Sends bars as a live stream of about `per_s` bars a second; before the bar at index `i` of
    `holds`, it waits until `holds[i]` is set, so the stream is surely still coming at that point."""

    def __init__(self, settings: Settings, bootstrap: str, bars: list[Bar], per_s: float,
                 holds: dict[int, threading.Event] | None = None) -> None:
        super().__init__(daemon=True)
        self.args = (settings, bootstrap, bars, per_s)
        self.holds = holds or {}
        self.sent = 0  # flushed to the broker
        self.held_at: int | None = None  # the hold it is waiting at

    def run(self) -> None:
        settings, bootstrap, bars, per_s = self.args
        chunk = max(1, int(per_s / 10))
        with RecordProducer(settings, bootstrap, HeaderCodec()) as producer:
            for i, bar in enumerate(bars):
                if i in self.holds:
                    producer.flush()
                    self.sent, self.held_at = i, i
                    assert self.holds[i].wait(120), f"never released at bar {i}"
                    self.held_at = None
                producer.send(BARS, bar)
                if i % chunk == chunk - 1:
                    producer.flush()
                    self.sent = i + 1
                    time.sleep(0.1)
            producer.flush()
            self.sent = len(bars)


def produce(settings: Settings, bootstrap: str, bars: Iterable[Bar], per_s: float = 0) -> None:
    """Send `bars`: at once, or as a live stream of about `per_s` bars a second."""
    if per_s:
        Feeder(settings, bootstrap, list(bars), per_s).run()
        return
    with RecordProducer(settings, bootstrap, HeaderCodec()) as producer:
        for bar in bars:
            producer.send(BARS, bar)


def feeding(settings: Settings, bootstrap: str, bars: list[Bar], per_s: float,
            holds: dict[int, threading.Event] | None = None) -> Feeder:
    feeder = Feeder(settings, bootstrap, bars, per_s, holds)
    feeder.start()
    return feeder


def partition_of(symbol: str) -> int:
    """The partition a keyed producer (murmur2, as librdkafka's and faust's) sends a symbol to."""
    parts = list(range(BARS.partitions))
    return int(DefaultPartitioner()(symbol.encode(), parts, parts))


def committed(settings: Settings, bootstrap: str) -> dict[int, int]:
    """The features group's committed offsets on market.bars.1m (-1001 where none yet)."""
    group = settings.pipeline_topic_prefix + APP_ID
    consumer = Consumer(consumer_config(settings, bootstrap, group_id=group))  # never subscribes
    try:
        topic = settings.topic(BARS.name)
        tps = consumer.committed([TopicPartition(topic, p) for p in range(BARS.partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def features_high_water(settings: Settings, bootstrap: str) -> int:
    """A lower bound of how many records features.1m holds (Tansu under-reports the end)."""
    consumer = Consumer(consumer_config(settings, bootstrap, group_id=f"probe-{time.monotonic_ns()}"))
    try:
        topic = settings.topic(FEATURES.name)
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(FEATURES.partitions)
        )
    finally:
        consumer.close()


def wait_for(cond: Callable[[], bool], what: str, alive: Iterable[Worker], deadline_s: float = 150) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        for worker in alive:
            worker.check_alive()
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.2)


def wait_for_features(
    settings: Settings, bootstrap: str, expected: dict[Key, Features], alive: Iterable[Worker]
) -> list[tuple[Consumed, Features]]:
    got: list[tuple[Consumed, Features]] = []

    def covered() -> bool:
        nonlocal got
        got = read_features(settings, bootstrap)
        return expected.keys() <= {(r.symbol, r.ts, r.revision) for _, r in got}

    wait_for(covered, f"{len(expected)} features", alive)
    return got


def assert_equal_to_reference(got: list[tuple[Consumed, Features]], expected: dict[Key, Features]) -> None:
    """Every record (re-emissions included) is the uninterrupted run's record for its key."""
    keys = {(r.symbol, r.ts, r.revision) for _, r in got}
    assert keys == expected.keys()
    wrong = [(m.offset, r) for m, r in got if not same(r, expected[(r.symbol, r.ts, r.revision)])]
    assert not wrong, wrong[:3]


def test_kill_9_mid_stream_then_restart_emits_what_an_uninterrupted_run_emits(
    provisioned: Settings, kafka_bootstrap: str, workers: Callable[..., Worker]
) -> None:
    bars = with_revisions(walk(SYMBOLS, 450, seed=11), every=41)
    expected = reference(bars)
    backlog, live = bars[: len(bars) // 3], bars[len(bars) // 3 :]
    produce(provisioned, kafka_bootstrap, backlog)
    # the stream holds 600 bars before its end until the worker is frozen, and 300 before its end
    # until it is killed: the kill lands mid-stream, with bars it has not committed
    frozen, killed = threading.Event(), threading.Event()
    feeder = feeding(provisioned, kafka_bootstrap, live, per_s=300,
                     holds={len(live) - 600: frozen, len(live) - 300: killed})

    first = workers("first")
    wait_for(
        lambda: sum(max(0, o) for o in committed(provisioned, kafka_bootstrap).values()) > 0,
        "the first worker to commit",
        [first],
    )
    first.freeze()
    frozen.set()
    wait_for(lambda: feeder.held_at == len(live) - 300, "the stream to reach its second hold", [])
    first.kill9()
    done = sum(max(0, o) for o in committed(provisioned, kafka_bootstrap).values())
    uncommitted = len(backlog) + feeder.sent - done  # left by the kill, the stream held meanwhile
    killed.set()
    assert uncommitted > 0, f"killed with every bar sent committed ({done})"
    second = workers("second")
    feeder.join(120)
    assert not feeder.is_alive()
    got = wait_for_features(provisioned, kafka_bootstrap, expected, [second])

    assert_equal_to_reference(got, expected)
    emitted = {worker_of(m) for m, _ in got}
    assert emitted == {first.id, second.id}
    # the second worker's state came from replaying the bars below its first delivered offsets
    assert any(bars > 0 and start == 0 for _, start, _, bars in second.rebuilds()), second.rebuilds()
    assert read_dead_letters(provisioned, kafka_bootstrap) == []


def test_two_workers_split_the_symbols_and_a_survivor_takes_over_a_killed_one(
    provisioned: Settings, kafka_bootstrap: str, workers: Callable[..., Worker]
) -> None:
    phases = [with_revisions(walk(SYMBOLS, n, seed=20 + i, start=s), every=29) for i, (s, n) in
              enumerate([(0, 40), (40, 120), (160, 300)])]  # fmt: skip
    assert {partition_of(s) for s in SYMBOLS} == set(range(BARS.partitions))
    # phase 0: one worker sees every partition
    one = workers("one")
    produce(provisioned, kafka_bootstrap, phases[0])
    wait_for_features(provisioned, kafka_bootstrap, reference(phases[0]), [one])

    # phase 1: a second worker joins; once the split is settled, each symbol is one worker's
    two = workers("two")

    def split() -> bool:
        a, b = one.assignment(), two.assignment()
        return bool(a and b and not a & b and a | b == set(range(BARS.partitions)))

    wait_for(split, "the partitions to be split between the two workers", [one, two])
    produce(provisioned, kafka_bootstrap, phases[1], per_s=2000)
    expected = reference(phases[0] + phases[1])
    got = wait_for_features(provisioned, kafka_bootstrap, expected, [one, two])
    assert_equal_to_reference(got, expected)
    phase1 = {(b.symbol, b.ts, b.revision) for b in phases[1]}
    emitters: dict[str, set[str]] = defaultdict(set)
    for m, r in got:
        if (r.symbol, r.ts, r.revision) in phase1:
            emitters[r.symbol].add(worker_of(m))
    assert all(len(ids) == 1 for ids in emitters.values()), emitters
    assert set().union(*emitters.values()) == {one.id, two.id}

    # phase 2: kill -9 the second worker mid-stream, after it committed past phase 0 on its
    # partitions; the first worker takes them back with the state it left there in phase 0 and
    # catches up by replaying from where that state stopped
    taken = two.assignment()
    assert taken
    phase0_end = Counter(partition_of(b.symbol) for b in phases[0])
    before = features_high_water(provisioned, kafka_bootstrap)
    killed = threading.Event()
    hold = len(phases[2]) // 2  # the rest of phase 2 comes after the kill
    feeder = feeding(provisioned, kafka_bootstrap, phases[2], per_s=300, holds={hold: killed})
    wait_for(
        lambda: (
            features_high_water(provisioned, kafka_bootstrap) > before + 300
            and all(committed(provisioned, kafka_bootstrap)[p] > phase0_end[p] for p in taken)
        ),
        "the second worker to be busy with phase 2, committed past phase 0",
        [two],
    )
    assert feeder.sent <= hold  # held: the stream is not over
    two.kill9()
    killed.set()
    feeder.join(120)
    assert not feeder.is_alive()
    expected = reference(phases[0] + phases[1] + phases[2])
    got = wait_for_features(provisioned, kafka_bootstrap, expected, [one])
    assert_equal_to_reference(got, expected)
    caught_up = {p: start for p, start, _, _ in one.rebuilds() if start > 0}
    assert caught_up == {p: phase0_end[p] for p in taken}, one.rebuilds()
    assert read_dead_letters(provisioned, kafka_bootstrap) == []


def test_kill_9_after_snapshots_then_restart_replays_only_the_tail_and_emits_the_same(
    provisioned: Settings, kafka_bootstrap: str, workers: Callable[..., Worker]
) -> None:
    bars = with_revisions(walk(SYMBOLS, 450, seed=31), every=37)
    expected = reference(bars)
    backlog, live = bars[: len(bars) // 3], bars[len(bars) // 3 :]
    produce(provisioned, kafka_bootstrap, backlog)
    killed = threading.Event()
    hold = len(live) // 2  # the rest of the stream comes after the kill
    feeder = feeding(provisioned, kafka_bootstrap, live, per_s=300, holds={hold: killed})
    first = workers("first", FEATURES_SNAPSHOT_SECONDS="1")
    every = set(range(BARS.partitions))

    def usable() -> dict[int, int]:
        """partition -> its newest logged snapshot at or below the group's committed offset (a
        snapshot is often a little ahead of the commit: such a one is not restored)."""
        done, written = committed(provisioned, kafka_bootstrap), first.snapshots()
        return {p: max(o for o in written[p] if o <= done[p]) for p in every
                if any(o <= done[p] for o in written.get(p, ()))}

    wait_for(lambda: set(usable()) == every and feeder.held_at == hold,
             "a snapshot of every partition below its committed offset, and the stream at its hold", [first])
    first.kill9()
    known = usable()
    done = committed(provisioned, kafka_bootstrap)
    killed.set()
    second = workers("second", FEATURES_SNAPSHOT_SECONDS="1")
    feeder.join(120)
    assert not feeder.is_alive()
    got = wait_for_features(provisioned, kafka_bootstrap, expected, [second])

    assert_equal_to_reference(got, expected)
    assert {worker_of(m) for m, _ in got} == {first.id, second.id}
    restored = second.restores()
    assert set(restored) == every, second.text()[-3000:]
    assert all(known[p] <= o <= done[p] for p, o in restored.items()), (restored, known, done)
    # the state came from the snapshot plus the bars after it, never from offset 0
    rebuilt = {p: (start, n) for p, start, _, n in second.rebuilds()}
    assert all(rebuilt.get(p, (o, 0))[0] == o for p, o in restored.items()), (rebuilt, restored)
    assert read_dead_letters(provisioned, kafka_bootstrap) == []


def _bad_snapshots(bars: list[Bar], partition: int) -> list[FeatureSnapshot]:
    """Two snapshots of `partition` after `bars` (its bars, in offset order) that must not be used:
    one of other code (its engine version), one whose state is not what its checksum covers. Both
    hold the state of other closes, so restoring either would change the outputs."""
    good, other = PartitionState(), PartitionState()
    for b in bars:
        good.apply((b.symbol, b.ts, b.close, b.volume, b.revision))
        other.apply((b.symbol, b.ts, b.close * 1.01, b.volume, b.revision))
    good.next_offset = other.next_offset = len(bars)
    (real,) = take(partition, good, worker="test")
    (altered,) = take(partition, other, worker="test")
    old_code = dataclasses.replace(altered, engine_version="older-code")
    old_code = dataclasses.replace(old_code, checksum=checksum_of(old_code))
    corrupt = dataclasses.replace(altered, checksum=real.checksum)
    return [old_code, corrupt]


def test_a_corrupt_or_incompatible_snapshot_is_ignored_for_the_full_replay(
    provisioned: Settings, kafka_bootstrap: str, workers: Callable[..., Worker]
) -> None:
    phases = [with_revisions(walk(SYMBOLS, n, seed=40 + i, start=s), every=23) for i, (s, n) in
              enumerate([(0, 60), (60, 60)])]  # fmt: skip
    produce(provisioned, kafka_bootstrap, phases[0])
    first = workers("first", FEATURES_SNAPSHOT_SECONDS="0")  # writes none
    wait_for_features(provisioned, kafka_bootstrap, reference(phases[0]), [first])
    first.stop()
    # the newest snapshots of every partition are bad; a worker must replay from offset 0
    codec, topic = HeaderCodec(), provisioned.topic(FEATURE_STATE.name)
    producer = Producer(producer_config(provisioned, kafka_bootstrap))
    for p in range(BARS.partitions):
        for rec in _bad_snapshots([b for b in phases[0] if partition_of(b.symbol) == p], p):
            value, headers = codec.encode(topic, rec)
            producer.produce(topic, value=value, key=rec.key().encode(), partition=p, headers=list(headers))
    assert producer.flush(30) == 0
    produce(provisioned, kafka_bootstrap, phases[1])
    second = workers("second", FEATURES_SNAPSHOT_SECONDS="60")
    expected = reference(phases[0] + phases[1])
    got = wait_for_features(provisioned, kafka_bootstrap, expected, [second])

    assert_equal_to_reference(got, expected)
    assert second.restores() == {}
    reasons = NOT_USED.findall(second.text())
    every = set(range(BARS.partitions))
    assert {int(p) for p, r in reasons if "written by other code" in r} == every, reasons
    assert {int(p) for p, r in reasons if "checksum mismatch" in r} == every, reasons
    assert {p for p, start, _, n in second.rebuilds() if start == 0 and n > 0} == every, second.rebuilds()
    assert read_dead_letters(provisioned, kafka_bootstrap) == []
