"""The watchlist agent: features.1m + news.scored -> WatchlistBuilder -> watchlist (top-N every
5 minutes of bar time), replacing the old 5-minute "watchlist engine" job; one worker ranks them all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.records import MARKET_KEY, Features, ScoredNews, WatchlistEntry
from schemas.topics import FEATURES, NEWS_SCORED, WATCHLIST
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
    revision), so the redelivered tail after the committed offset changes nothing."""

    def __init__(self, papp: PipelineApp, config: WatchlistAgentConfig, endpoints: Endpoints) -> None:
        self.config = config
        self.endpoints = endpoints
        self.io = EventIO(papp, STAGE)
        self.sentiment, self.builder = self._fresh()
        self.stale = True

    def _fresh(self) -> tuple[SentimentBook, WatchlistBuilder]:
        c = self.config
        book = SentimentBook(c.sentiment_half_life_minutes * 60.0, c.sentiment_window_minutes * 60.0)
        return book, WatchlistBuilder(c.watchlist, sentiment=book.value)

    def rebuild_sync(self) -> tuple[SentimentBook, WatchlistBuilder, list[WatchlistEntry]]:
        book, builder = self._fresh()
        for n in self.io.read_all(self.endpoints, NEWS_SCORED):
            if isinstance(n, ScoredNews) and n.ticker != MARKET_KEY:
                book.on_news(n)
        # in time order: a topic read delivers partitions one after another, live saw them together
        feats = sorted((f for f in self.io.read_all(self.endpoints, FEATURES) if isinstance(f, Features)),
                       key=lambda f: f.ts)
        produced: list[WatchlistEntry] = []
        for f in feats:
            produced.extend(builder.on_features(f))
        bars = len(feats)
        published: datetime | None = None
        for e in self.io.read_all(self.endpoints, WATCHLIST):
            if isinstance(e, WatchlistEntry) and (published is None or e.ts > published):
                published = e.ts
        missing = [e for e in produced if published is None or e.ts > published]
        log.info("watchlist: rebuilt from %d bars; %d entries to (re)publish", bars, len(missing))
        return book, builder, missing

    async def ensure_state(self) -> None:
        if not self.stale:
            return
        self.stale = False
        self.sentiment, self.builder, missing = await asyncio.to_thread(self.rebuild_sync)
        futures = [await self.io.send(WATCHLIST, e) for e in missing]
        if futures:
            await asyncio.gather(*futures)

    async def handle(self, events: Sequence[Any]) -> None:
        futures: list[Awaitable[Any]] = []
        for event in events:
            try:
                record = self.io.decode(event)
                if isinstance(record, Features):
                    for entry in self.builder.on_features(record):
                        futures.append(await self.io.send(WATCHLIST, entry))
                elif isinstance(record, ScoredNews) and record.ticker != MARKET_KEY:
                    self.sentiment.on_news(record)
            except Exception as exc:  # noqa: BLE001 - per-event errors become dead letters
                futures.append(await self.io.dead_letter(event, exc))
        if futures:
            await asyncio.gather(*futures)


def register(papp: PipelineApp, *, endpoints: Endpoints, config: WatchlistAgentConfig | None = None
             ) -> WatchlistHandler:
    config = config or WatchlistAgentConfig.from_settings(papp.settings)
    handler = WatchlistHandler(papp, config, endpoints)
    inputs = handler.io.channel(FEATURES, NEWS_SCORED)
    add_agent(papp, inputs, handler.handle, name="watchlist", batching=config,
              before_batch=handler.ensure_state, rebuilt=handler)
    return handler


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event, *,
        config: WatchlistAgentConfig | None = None) -> None:
    """The `watchlist` stage."""
    run_stage(settings, endpoints, stop, app_id=APP_ID,
              register=functools.partial(register, endpoints=endpoints, config=config))
