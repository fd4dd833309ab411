"""The watchlist agent: features.1m + news.scored -> WatchlistBuilder -> watchlist (top-N every
5 minutes of bar time), replacing the old 5-minute "watchlist engine" job; one worker ranks them all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opsinfra.endpoints import Endpoints
from opsinfra.errors import DecodeError
from opsinfra.kafka_io import end_offsets, read_tail
from opsinfra.settings import Settings
from schemas.codec import decode
from schemas.records import MARKET_KEY, Features, ScoredNews, WatchlistEntry
from schemas.topic_io import read_records
from schemas.topics import FEATURES, NEWS_SCORED, WATCHLIST, WATCHLIST_STATE
from streams import watchlist_snapshot as snap
from streams.app import EventIO, PipelineApp, add_agent, run_stage
from trading.signals import SentimentBook
from trading.watchlist import WatchlistBuilder, WatchlistConfig

log = logging.getLogger(__name__)

STAGE = "watchlist"
APP_ID = "ops-pipeline-watchlist"


@dataclass(frozen=True)
class WatchlistAgentConfig:
    watchlist: WatchlistConfig = WatchlistConfig()
    sentiment_half_life_minutes: float = 60.0  # as StrategyConfig's
    sentiment_window_minutes: float = 240.0
    batch_size: int = 500
    batch_within_s: float = 0.05
    snapshot_every_s: float | None = None  # builder snapshots (0: none); None: the settings' value

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> WatchlistAgentConfig:
        wl: dict[str, Any] = {"universe": tuple(getattr(settings, "pipeline_symbols", ()) or ())}
        top_n = getattr(settings, "watchlist_top_n", None)
        if top_n is not None:
            wl["top_n"] = top_n
        conf: dict[str, Any] = {"watchlist": WatchlistConfig(**wl)}
        for attr in ("sentiment_half_life_minutes", "sentiment_window_minutes"):
            value = getattr(settings, attr, None)
            if value is not None:
                conf[attr] = value
        conf.update(overrides)
        return cls(**conf)


class WatchlistHandler:
    """State rebuilt at start from the topics: news.scored for sentiment, features.1m replayed
    through the builder (windows close on bar time, so exactly as live), and the entries a crash
    kept from being sent are published. The builder ignores a bar it has seen (symbol, ts,
    revision), so the redelivered tail after the committed offset changes nothing.

    With snapshots (state.watchlist, streams/watchlist_snapshot.py), the builder comes from the newest
    usable one and only the features after its offsets are replayed; one is written every
    `snapshot_every_s` of processing and at a clean shutdown, each after a batch whose outputs are
    delivered (so it holds only what was published)."""

    def __init__(self, papp: PipelineApp, config: WatchlistAgentConfig, endpoints: Endpoints) -> None:
        self.config = config
        self.endpoints = endpoints
        self.papp = papp
        self.io = EventIO(papp, STAGE)
        self.sentiment, self.builder = self._fresh()
        self.stale = True
        every = config.snapshot_every_s
        self.snapshot_every_s = float(getattr(papp.settings, "watchlist_snapshot_seconds", 300.0)
                                      if every is None else every)
        self.features_topic = self.io.physical(FEATURES)
        self.offsets: dict[int, int] = {}  # features.1m partition -> next offset the builder holds
        self.published: datetime | None = None  # latest watchlist ts delivered
        self.restored_from: int | None = None  # features the restored snapshot covered, if one was
        self.snapshots_written = 0
        self.busy = False  # inside a batch: the builder may be ahead of its delivered outputs
        self._due = time.monotonic() + self.snapshot_every_s
        self._worker = f"{socket.gethostname()}:{os.getpid()}"

    def _fresh(self) -> tuple[SentimentBook, WatchlistBuilder]:
        c = self.config
        book = SentimentBook(c.sentiment_half_life_minutes * 60.0, c.sentiment_window_minutes * 60.0)
        return book, WatchlistBuilder(c.watchlist, sentiment=book.value)

    def rebuild_sync(self) -> tuple[SentimentBook, WatchlistBuilder, list[WatchlistEntry]]:
        started = time.monotonic()
        book, builder = self._fresh()
        settings, bootstrap = self.papp.settings, self.endpoints.kafka_bootstrap_servers
        with ThreadPoolExecutor(4, thread_name_prefix="watchlist-rebuild") as pool:  # the reads overlap
            news = pool.submit(self.io.read_all, self.endpoints, NEWS_SCORED)
            tail = pool.submit(read_tail, settings, bootstrap, self.io.physical(WATCHLIST), per_partition=8)
            choice = self._choose_snapshot(book, pool)
            published = None
            if choice is not None and choice.builder is not None and choice.snapshot is not None:
                builder, published = choice.builder, choice.snapshot.published
                feats, ends = snap.read_after(settings, bootstrap, self.papp.codec, self.features_topic,
                                              choice.offsets, pool)
                how = f"snapshot at {choice.snapshot.offsets} + {len(feats)} features after it"
            else:
                feats, ends = self._read_all_features()
                how = f"all {len(feats)} features (full rebuild)"
            for n in news.result():
                if isinstance(n, ScoredNews) and n.ticker != MARKET_KEY:
                    book.on_news(n)
            # the latest entry of each watchlist partition is its latest ts: entries go out in ts order
            for e in map(self._decode_entry, tail.result()):
                if e is not None and (published is None or e.ts > published):
                    published = e.ts
        produced: list[WatchlistEntry] = []
        for f in snap.by_ts(feats):
            produced.extend(builder.on_features(f))
        missing = [e for e in produced if published is None or e.ts > published]
        self.offsets = ends
        latest = snap.latest_ts(missing)
        self.published = max(latest, published) if latest and published else (latest or published)
        log.info("watchlist: rebuilt from %s in %.2fs; %d entries to (re)publish", how,
                 time.monotonic() - started, len(missing))
        return book, builder, missing

    def _decode_entry(self, m: Any) -> WatchlistEntry | None:
        try:
            rec = decode(self.papp.codec, WatchlistEntry, m.value, m.headers, topic=m.topic,
                         partition=m.partition, offset=m.offset)
        except DecodeError:  # a bad entry says nothing about what was published
            return None
        return rec if isinstance(rec, WatchlistEntry) else None

    def _choose_snapshot(self, book: SentimentBook, pool: ThreadPoolExecutor) -> snap.Choice | None:
        if self.snapshot_every_s <= 0:
            return None
        settings, bootstrap = self.papp.settings, self.endpoints.kafka_bootstrap_servers
        try:
            offsets = pool.submit(snap.group_offsets, settings, bootstrap, self.papp.app.conf.id,
                                  self.features_topic, FEATURES.partitions)
            records = snap.read_snapshots(settings, bootstrap, self.papp.codec,
                                          self.io.physical(WATCHLIST_STATE))
            committed, starts = offsets.result()
            choice = snap.choose(records, partitions=FEATURES.partitions, committed=committed,
                                 log_start=starts, config=self.config.watchlist, sentiment=book.value)
        except Exception:  # a snapshot is an optimisation: without one, the full rebuild is the truth
            log.exception("watchlist: reading snapshots failed; full rebuild")
            return None
        for reason in choice.rejected:
            log.warning("watchlist: snapshot not used: %s", reason)
        if choice.snapshot is None:
            log.info("watchlist: no usable snapshot; full rebuild from features.1m")
            return None
        self.restored_from = sum(choice.snapshot.offsets)
        log.info("watchlist: restoring the snapshot at %s (taken %s by %s)", choice.snapshot.offsets,
                 choice.snapshot.taken_at.isoformat(), choice.snapshot.worker)
        return choice

    def _read_all_features(self) -> tuple[list[Features], dict[int, int]]:
        """Every decodable features.1m record and each partition's next offset; the read's timeout
        scales with the topic (at 1.4M records, 120 s was not enough on a loaded machine)."""
        settings, bootstrap = self.papp.settings, self.endpoints.kafka_bootstrap_servers
        total = sum(end_offsets(settings, bootstrap, [self.features_topic]).values())
        timeout = max(120.0, total / 2000)
        feats: list[Features] = []
        ends: dict[int, int] = {}
        for m, rec in read_records(settings, bootstrap, self.papp.codec, FEATURES, quiet_s=0.5,
                                   timeout_s=timeout):
            ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
            if isinstance(rec, Features):
                feats.append(rec)
        return feats, ends

    async def ensure_state(self) -> None:
        if not self.stale:
            return
        self.stale = False
        self.busy = True
        try:
            self.sentiment, self.builder, missing = await asyncio.to_thread(self.rebuild_sync)
            futures = [await self.io.send(WATCHLIST, e) for e in missing]
            if futures:
                await asyncio.gather(*futures)
        finally:
            self.busy = False
        self._due = time.monotonic() + self.snapshot_every_s

    async def handle(self, events: Sequence[Any]) -> None:
        self.busy = True
        try:
            await self._handle(events)
        finally:
            self.busy = False
        if self.snapshot_every_s > 0 and time.monotonic() >= self._due:
            self._due = time.monotonic() + self.snapshot_every_s
            await self.write_snapshot()

    async def write_snapshot(self) -> None:
        """A snapshot of the builder as it is: call only between batches (outputs delivered)."""
        rec = snap.take(self.builder, self.offsets, FEATURES.partitions, self.published, worker=self._worker)
        if len(rec.state) > snap.MAX_BYTES:
            log.warning("watchlist: snapshot of %d bytes not written (limit %d)", len(rec.state),
                        snap.MAX_BYTES)
            return
        try:
            fut = await self.io.send(WATCHLIST_STATE, rec)
            await fut
        except asyncio.CancelledError:
            raise
        except Exception:  # a lost snapshot costs a longer rebuild at the next start, nothing else
            log.exception("watchlist: writing a snapshot failed")
            return
        self.snapshots_written += 1
        log.info("watchlist: snapshot at features offsets %s (%d bytes)", rec.offsets, len(rec.state))

    async def on_shutdown(self) -> None:
        if self.snapshot_every_s <= 0 or self.busy or self.stale:
            return
        try:
            await asyncio.wait_for(self.write_snapshot(), 10)
        except TimeoutError:
            log.warning("watchlist: shutdown snapshot not confirmed within 10s")

    async def _handle(self, events: Sequence[Any]) -> None:
        futures: list[Awaitable[Any]] = []
        produced: list[WatchlistEntry] = []
        for event in events:
            msg = event.message
            if msg.topic == self.features_topic:
                self.offsets[msg.partition] = max(self.offsets.get(msg.partition, 0), msg.offset + 1)
            try:
                record = self.io.decode(event)
                if isinstance(record, Features):
                    for entry in self.builder.on_features(record):
                        produced.append(entry)
                        futures.append(await self.io.send(WATCHLIST, entry))
                elif isinstance(record, ScoredNews) and record.ticker != MARKET_KEY:
                    self.sentiment.on_news(record)
            except Exception as exc:  # noqa: BLE001 - per-event errors become dead letters
                futures.append(await self.io.dead_letter(event, exc))
        if futures:
            await asyncio.gather(*futures)
        latest = snap.latest_ts(produced)
        if latest is not None and (self.published is None or latest > self.published):
            self.published = latest


def register(papp: PipelineApp, *, endpoints: Endpoints, config: WatchlistAgentConfig | None = None
             ) -> WatchlistHandler:
    config = config or WatchlistAgentConfig.from_settings(papp.settings)
    handler = WatchlistHandler(papp, config, endpoints)
    inputs = handler.io.channel(FEATURES, NEWS_SCORED)
    add_agent(papp, inputs, handler.handle, name="watchlist", batching=config,
              before_batch=handler.ensure_state, rebuilt=handler)

    async def on_shutdown(_app: Any, /, *_args: Any, **_kw: Any) -> None:
        await handler.on_shutdown()

    papp.app.on_before_shutdown.connect(on_shutdown)
    return handler


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event, *,
        config: WatchlistAgentConfig | None = None) -> None:
    """The `watchlist` stage."""
    run_stage(settings, endpoints, stop, app_id=APP_ID,
              register=functools.partial(register, endpoints=endpoints, config=config))
