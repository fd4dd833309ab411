"""Snapshots of the features agent's engine state on state.features (compacted), so a start restores
each partition and replays only the bars after the snapshot instead of the whole retained history.
A snapshot is trusted only by the code that wrote it and only where a full replay would give it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
import time
import zlib
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

import streams.features_state
import trading.features
import trading.indicators
from opsinfra.errors import DecodeError
from opsinfra.kafka_config import consumer_config
from opsinfra.kafka_io import read_tail
from opsinfra.settings import Settings
from schemas.codec import Codec, decode
from schemas.records import FeatureSnapshot
from schemas.topics import FEATURE_STATE
from streams.features_state import BatchSender, PartitionState
from trading.features import FeatureEngine

log = logging.getLogger(__name__)

FORMAT = 1  # the encoding of `state`: zlib of a JSON list of FeatureEngine.to_state()
MAX_CHUNK_BYTES = 256 * 1024  # JSON bytes per message before zlib: far below a 1 MB message limit
WINDOW = 16  # snapshot records read back per partition: the newest few snapshots


@cache
def engine_version() -> str:
    """Fingerprint of the code that turns bars into engine state. Any change to it (a new indicator,
    another rounding) makes old snapshots unusable: one full replay after such a deploy, never a
    state that a replay by the new code would not give."""
    digest = hashlib.sha256()
    for module in (trading.features, trading.indicators, streams.features_state):
        path = module.__file__
        assert path is not None
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:20]


def _checksum(partition: int, chunk: int, chunks: int, next_offset: int, fmt: int, version: str,
              symbols: int, state: bytes) -> str:
    digest = hashlib.sha256(struct.pack(">iiiqii", partition, chunk, chunks, next_offset, fmt, symbols))
    digest.update(version.encode())
    digest.update(b"\0")
    digest.update(state)
    return digest.hexdigest()


def checksum_of(rec: FeatureSnapshot) -> str:
    return _checksum(rec.partition, rec.chunk, rec.chunks, rec.next_offset, rec.format, rec.engine_version,
                     rec.symbols, rec.state)


def take(partition: int, state: PartitionState, *, worker: str, now: datetime | None = None,
         max_chunk_bytes: int = MAX_CHUNK_BYTES) -> list[FeatureSnapshot]:
    """The snapshot records of `state` (one per chunk of symbols), to be written to `partition`."""
    groups: list[list[bytes]] = [[]]
    size = 0
    for symbol in sorted(state.engines):
        blob = json.dumps(state.engines[symbol].to_state(), separators=(",", ":")).encode()
        if groups[-1] and size + len(blob) > max_chunk_bytes:
            groups.append([])
            size = 0
        groups[-1].append(blob)
        size += len(blob)
    taken_at = now or datetime.now(UTC)
    version = engine_version()
    out = []
    for chunk, blobs in enumerate(groups):
        payload = zlib.compress(b"[" + b",".join(blobs) + b"]")
        n, at = len(groups), state.next_offset
        check = _checksum(partition, chunk, n, at, FORMAT, version, len(blobs), payload)
        out.append(FeatureSnapshot(partition, chunk, n, at, FORMAT, version, len(blobs), payload, check,
                                   taken_at, worker))
    return out


def restore(chunks: Sequence[FeatureSnapshot]) -> PartitionState:
    """The state the chunks of one snapshot hold (ValueError if they do not make one)."""
    engines: dict[str, FeatureEngine] = {}
    for rec in chunks:
        states = json.loads(zlib.decompress(rec.state))
        if not isinstance(states, list) or len(states) != rec.symbols:
            raise ValueError(f"chunk {rec.chunk} holds {len(states)} engines, not {rec.symbols}")
        for raw in states:
            engine = FeatureEngine.from_state(raw)
            engines[engine.symbol] = engine
    return PartitionState(engines=engines, next_offset=chunks[0].next_offset)


@dataclass
class Choice:
    """The snapshot to restore (None: replay), and why each newer one was not taken."""

    state: PartitionState | None = None
    snapshot: FeatureSnapshot | None = None
    rejected: list[str] = field(default_factory=list)


def choose(records: Iterable[tuple[int, FeatureSnapshot | DecodeError]], partition: int, *, end: int,
           log_start: int, held: int = 0) -> Choice:
    """The newest written snapshot of `partition` that is whole, intact, of this code, and at an
    offset in [max(log_start, held + 1), end]: `end` is the offset faust handed us (its committed
    position), so the state never runs ahead of what the group committed; below `log_start` the
    bars to replay from it are gone; at or below `held` the state held already goes as far."""
    choice = Choice()
    snapshots: dict[tuple[int, datetime, str, int], dict[int, FeatureSnapshot]] = {}
    written: dict[tuple[int, datetime, str, int], int] = {}
    version = engine_version()
    for offset, rec in records:
        if isinstance(rec, DecodeError):
            choice.rejected.append(f"offset {offset}: undecodable ({rec})")
            continue
        problem = None
        if rec.partition != partition:
            problem = f"for partition {rec.partition}"
        elif rec.format != FORMAT or rec.engine_version != version:
            problem = f"written by other code (format {rec.format}, engine {rec.engine_version})"
        elif checksum_of(rec) != rec.checksum:
            problem = "checksum mismatch"
        elif not 0 <= rec.chunk < rec.chunks:
            problem = f"chunk {rec.chunk} of {rec.chunks}"
        if problem is not None:
            choice.rejected.append(f"offset {offset}: {problem}")
            continue
        ident = (rec.next_offset, rec.taken_at, rec.worker, rec.chunks)
        snapshots.setdefault(ident, {})[rec.chunk] = rec
        written[ident] = offset
    for ident in sorted(snapshots, key=written.__getitem__, reverse=True):
        next_offset, _, _, chunks = ident
        got = snapshots[ident]
        where = f"snapshot at bar offset {next_offset}"
        if len(got) != chunks:
            choice.rejected.append(f"{where}: {len(got)} of {chunks} chunks")
        elif next_offset > end:
            choice.rejected.append(f"{where}: past the committed offset {end}")
        elif next_offset < log_start:
            choice.rejected.append(f"{where}: below the log start {log_start}")
        elif next_offset <= held:
            choice.rejected.append(f"{where}: the state held is at {held}")
        else:
            ordered = [got[i] for i in range(chunks)]
            try:
                choice.state = restore(ordered)
            except (ValueError, KeyError, TypeError, zlib.error) as exc:
                choice.rejected.append(f"{where}: {type(exc).__name__}: {exc}")
                continue
            choice.snapshot = ordered[0]
            return choice
    return choice


def read_snapshots(settings: Settings, bootstrap: str, codec: Codec, topic: str, *, window: int = WINDOW,
                   quiet_s: float = 0.3) -> dict[int, list[tuple[int, FeatureSnapshot | DecodeError]]]:
    """The last `window` records of every partition of the snapshot topic, decoded, in offset order."""
    out: dict[int, list[tuple[int, FeatureSnapshot | DecodeError]]] = {}
    for m in read_tail(settings, bootstrap, topic, per_partition=window, quiet_s=quiet_s):
        try:
            rec: FeatureSnapshot | DecodeError = decode(
                codec, FeatureSnapshot, m.value, m.headers, topic=topic, partition=m.partition,
                offset=m.offset,
            )
        except DecodeError as exc:
            rec = exc
        out.setdefault(m.partition, []).append((m.offset, rec))
    for records in out.values():
        records.sort(key=lambda r: r[0])
    return out


def log_starts(settings: Settings, bootstrap: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The first offset each partition still holds (retention moves it)."""
    group = f"ops-pipeline-logstart-{time.monotonic_ns()}"
    consumer = Consumer(consumer_config(settings, bootstrap, group_id=group))
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                for p in partitions}
    finally:
        consumer.close()


class Snapshots:
    """The features agent's side: restore at catch-up, write every `every_s` seconds of processing
    per partition (and at shutdown), each only after the outputs of the state it holds are delivered."""

    def __init__(self, papp: Any, bootstrap: str, bars_topic: str, *, every_s: float, worker: str) -> None:
        self.papp = papp
        self.bootstrap = bootstrap
        self.bars_topic = bars_topic
        self.every_s = every_s
        self.worker = worker
        self.topic = papp.settings.topic(FEATURE_STATE.name)
        self.sender = BatchSender(papp.app, self.topic)
        self.assigned: set[int] = set()
        self.written = 0
        self._due: dict[int, float] = {}  # partition -> time.monotonic() of its next snapshot
        self._undelivered: list[asyncio.Future[Any]] = []  # outputs sent, not known delivered yet
        self._read: tuple[Any, dict[int, list[Any]], dict[int, int]] | None = None  # per generation
        self._tasks: set[asyncio.Task[None]] = set()
        self._lost = False  # an output was not delivered: no snapshot from this process any more

    @property
    def enabled(self) -> bool:
        return self.every_s > 0

    # -- restore ------------------------------------------------------------------------------------
    async def restore(self, partition: int, end: int, held: PartitionState | None, generation: Any) -> \
            PartitionState | None:
        """The state of the newest usable snapshot of `partition`, newer than `held`; None: replay."""
        if not self.enabled:
            return None
        started = time.monotonic()
        settings, codec = self.papp.settings, self.papp.codec
        read = self._read
        try:
            if read is None or read[0] != generation:
                # once per assignment: every partition's tail in one read, another worker may have
                # written snapshots of the partitions we just got
                def fetch() -> tuple[dict[int, list[Any]], dict[int, int]]:
                    tails = read_snapshots(settings, self.bootstrap, codec, self.topic)
                    parts = range(FEATURE_STATE.partitions)
                    return tails, log_starts(settings, self.bootstrap, self.bars_topic, parts)

                tails, starts = await asyncio.to_thread(fetch)
                read = self._read = (generation, tails, starts)
            _, tails, starts = read
            choice = await asyncio.to_thread(
                choose, tails.get(partition, []), partition, end=end, log_start=starts.get(partition, 0),
                held=held.next_offset if held is not None else 0,
            )
        except Exception:  # a snapshot is an optimisation: without one, the replay is the truth
            log.exception("features: partition %d: reading snapshots failed; replaying", partition)
            return None
        for reason in choice.rejected:
            log.warning("features: partition %d: snapshot not used: %s", partition, reason)
        snap = choice.snapshot
        if choice.state is None or snap is None:
            log.info("features: partition %d: no usable snapshot; replaying from offset %d", partition,
                     held.next_offset if held is not None else 0)
            return None
        log.info("features: partition %d restored from snapshot at offset %d (%d symbols, taken %s by %s) "
                 "in %.2fs", partition, snap.next_offset, len(choice.state.engines),
                 snap.taken_at.isoformat(), snap.worker, time.monotonic() - started)
        self._due[partition] = time.monotonic() + self.every_s
        return choice.state

    # -- write ----------------------------------------------------------------------------------------
    def after_batch(self, touched: Iterable[int], states: dict[int, PartitionState],
                    futures: Sequence[Awaitable[Any]]) -> None:
        """After a batch's outputs were sent: snapshot the partitions that are due, to be written
        once every output sent so far is delivered (state taken now, so it matches them)."""
        if not self.enabled:
            return
        pending = self._pending()
        pending += [asyncio.ensure_future(f) for f in futures]
        self._undelivered = pending
        if self._lost:
            return
        now = time.monotonic()
        for partition in touched:
            due = self._due.setdefault(partition, now + self.every_s)
            state = states.get(partition)
            if now >= due and state is not None:
                self._due[partition] = now + self.every_s
                self._spawn(self._write(take(partition, state, worker=self.worker), list(pending)))

    async def on_shutdown(self, states: dict[int, PartitionState], busy: bool) -> None:
        """A last snapshot of every assigned partition (not mid-batch: a state may be ahead of its
        outputs then)."""
        if not self.enabled or busy:
            return
        pending = self._pending()
        if self._lost:
            return
        worker = self.worker
        records = [r for p in sorted(self.assigned) if p in states for r in take(p, states[p], worker=worker)]
        if records:
            try:
                await asyncio.wait_for(self._write(records, pending), 10)
            except TimeoutError:
                log.warning("features: shutdown snapshot not confirmed within 10s")

    def _pending(self) -> list[asyncio.Future[Any]]:
        """The outputs not delivered yet; one that failed marks this process's state as lost."""
        pending = []
        for f in self._undelivered:
            if not f.done():
                pending.append(f)
            elif f.cancelled() or f.exception() is not None:
                self._lost = True
        return pending

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, records: list[FeatureSnapshot], undelivered: list[asyncio.Future[Any]]) -> None:
        try:
            if undelivered:
                await asyncio.gather(*undelivered)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._lost = True  # outputs were lost: the stage is crashing, its state must not be kept
            return
        try:
            rows: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}
            for rec in records:
                value, headers = self.papp.codec.encode(self.topic, rec)
                rows.setdefault(rec.partition, []).append((rec.key().encode(), value, list(headers)))
            await asyncio.gather(*await self.sender.send(rows))
        except asyncio.CancelledError:
            raise
        except Exception:  # a lost snapshot costs a longer replay at the next start, nothing else
            log.exception("features: writing a snapshot failed")
            return
        self.written += len(records)
        for rec in records:
            if rec.chunk == 0:
                log.info("features: partition %d snapshot at offset %d (%d chunk(s), %d symbols in chunk 0, "
                         "%d bytes)", rec.partition, rec.next_offset, rec.chunks, rec.symbols, len(rec.state))
