"""Snapshots of the watchlist agent's WatchlistBuilder on state.watchlist (compacted, one partition), so
a start restores the builder and reads only the features.1m records after the snapshot's offsets
instead of the whole retained topic. Like the features agent's (streams/features_snapshot.py), a
snapshot is trusted only by the code that wrote it and only where a full rebuild would give it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

import trading.watchlist
from opsinfra.errors import DecodeError
from opsinfra.kafka_config import consumer_config
from opsinfra.kafka_io import read_tail, true_end_offsets
from opsinfra.settings import Settings
from schemas.codec import Codec, decode
from schemas.records import Features, WatchlistSnapshot
from streams.features_state import read_partition
from trading.watchlist import SentimentLookup, WatchlistBuilder, WatchlistConfig

log = logging.getLogger(__name__)

FORMAT = 1  # the encoding of `state`: zlib of the JSON of WatchlistBuilder.to_state()
WINDOW = 8  # snapshot records read back: the newest few (compaction keeps the last one)
MAX_BYTES = 900 * 1024  # a larger snapshot is not written (a 1 MB message limit): a full rebuild then


@cache
def code_version() -> str:
    """Fingerprint of the code that turns features into builder state (trading/watchlist.py and this
    module's restore rules): any change makes old snapshots unusable, one full rebuild after it."""
    digest = hashlib.sha256()
    for path in (trading.watchlist.__file__, __file__):
        assert path is not None
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:20]


def _checksum(offsets: list[int], published: datetime | None, fmt: int, version: str, state: bytes) -> str:
    digest = hashlib.sha256(struct.pack(f">i{len(offsets)}q", len(offsets), *offsets))
    digest.update(b"-" if published is None else published.isoformat().encode())
    digest.update(struct.pack(">i", fmt))
    digest.update(version.encode())
    digest.update(b"\0")
    digest.update(state)
    return digest.hexdigest()


def checksum_of(rec: WatchlistSnapshot) -> str:
    return _checksum(list(rec.offsets), rec.published, rec.format, rec.code_version, rec.state)


def take(builder: WatchlistBuilder, offsets: dict[int, int], partitions: int, published: datetime | None,
         *, worker: str, now: datetime | None = None) -> WatchlistSnapshot:
    """The snapshot of `builder`, which holds every features.1m record below `offsets` (partition ->
    next offset) with its outputs delivered; `published`: the latest watchlist ts delivered."""
    at = [int(offsets.get(p, 0)) for p in range(partitions)]
    payload = zlib.compress(json.dumps(builder.to_state(), separators=(",", ":")).encode())
    version = code_version()
    check = _checksum(at, published, FORMAT, version, payload)
    return WatchlistSnapshot(at, published, FORMAT, version, payload, check, now or datetime.now(UTC), worker)


def restore(rec: WatchlistSnapshot, config: WatchlistConfig, sentiment: SentimentLookup | None
            ) -> WatchlistBuilder:
    state = json.loads(zlib.decompress(rec.state))
    if not isinstance(state, dict):
        raise ValueError(f"state is a {type(state).__name__}, not an object")
    return WatchlistBuilder.from_state(state, config, sentiment)


@dataclass
class Choice:
    """The snapshot to restore (None: a full rebuild), and why each newer one was not taken."""

    builder: WatchlistBuilder | None = None
    snapshot: WatchlistSnapshot | None = None
    rejected: list[str] = field(default_factory=list)

    @property
    def offsets(self) -> dict[int, int]:
        return {} if self.snapshot is None else dict(enumerate(self.snapshot.offsets))


def choose(records: Iterable[tuple[int, WatchlistSnapshot | DecodeError]], *, partitions: int,
           committed: dict[int, int], log_start: dict[int, int], config: WatchlistConfig,
           sentiment: SentimentLookup | None = None) -> Choice:
    """The newest snapshot that is intact, of this code, for `partitions` partitions and, in every
    one, at an offset in [log_start, committed]: past the group's committed offset the state would
    run ahead of what the group acknowledged; below the log start the records after it are gone."""
    choice = Choice()
    version = code_version()
    for offset, rec in sorted(records, key=lambda r: r[0], reverse=True):
        where = f"offset {offset}"
        if isinstance(rec, DecodeError):
            choice.rejected.append(f"{where}: undecodable ({rec})")
            continue
        problem = None
        if rec.format != FORMAT or rec.code_version != version:
            problem = f"written by other code (format {rec.format}, code {rec.code_version})"
        elif checksum_of(rec) != rec.checksum:
            problem = "checksum mismatch"
        elif len(rec.offsets) != partitions:
            problem = f"covers {len(rec.offsets)} partitions, not {partitions}"
        else:
            for p, at in enumerate(rec.offsets):
                if at > committed.get(p, 0):
                    problem = f"partition {p}: offset {at} past the committed offset {committed.get(p, 0)}"
                    break
                if at < log_start.get(p, 0):
                    problem = f"partition {p}: offset {at} below the log start {log_start.get(p, 0)}"
                    break
        if problem is None:
            try:
                choice.builder = restore(rec, config, sentiment)
            except (ValueError, KeyError, TypeError, IndexError, zlib.error) as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            choice.rejected.append(f"{where}: {problem}")
            continue
        choice.snapshot = rec
        return choice
    return choice


def read_snapshots(settings: Settings, bootstrap: str, codec: Codec, topic: str, *, window: int = WINDOW
                   ) -> list[tuple[int, WatchlistSnapshot | DecodeError]]:
    """The last `window` records of the snapshot topic, decoded."""
    out: list[tuple[int, WatchlistSnapshot | DecodeError]] = []
    for m in read_tail(settings, bootstrap, topic, per_partition=window):
        try:
            rec: WatchlistSnapshot | DecodeError = decode(
                codec, WatchlistSnapshot, m.value, m.headers, topic=topic, partition=m.partition,
                offset=m.offset,
            )
        except DecodeError as exc:
            rec = exc
        out.append((m.offset, rec))
    return out


def group_offsets(settings: Settings, bootstrap: str, group: str, topic: str, partitions: int
                  ) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets on `topic` (0 where none) and each partition's log start."""
    consumer = Consumer(consumer_config(settings, bootstrap, group_id=group))
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = {tp.partition: max(tp.offset, 0) for tp in consumer.committed(tps, timeout=15)}
        starts = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                  for p in range(partitions)}
        return committed, starts
    finally:
        consumer.close()


def read_after(settings: Settings, bootstrap: str, codec: Codec, topic: str, starts: dict[int, int],
               pool: Executor) -> tuple[list[Features], dict[int, int]]:
    """The decodable features of every partition from `starts` to its (true) end now, and the ends;
    the partitions are read in parallel on `pool`."""
    ends = {p: end for (_, p), end in true_end_offsets(settings, bootstrap, [topic]).items()}

    def one(p: int, start: int, end: int) -> list[Features]:
        out: list[Features] = []
        for offset, _key, value, headers in read_partition(settings, bootstrap, topic, p, start, end):
            try:
                rec = decode(codec, Features, value, headers, topic=topic, partition=p, offset=offset)
            except DecodeError:  # the live agent dead-lettered it
                continue
            out.append(rec)
        return out

    reads = [pool.submit(one, p, starts.get(p, 0), end) for p, end in sorted(ends.items())
             if end > starts.get(p, 0)]
    for p in ends:
        ends[p] = max(ends[p], starts.get(p, 0))
    return [f for r in reads for f in r.result()], ends


def latest_ts(entries: Iterable[Any]) -> datetime | None:
    latest: datetime | None = None
    for e in entries:
        if latest is None or e.ts > latest:
            latest = e.ts
    return latest


def by_ts(features: Iterable[Features]) -> Iterator[Features]:
    """In time order: a topic read delivers partitions one after another, live saw them together."""
    return iter(sorted(features, key=lambda f: f.ts))
