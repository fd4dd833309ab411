"""The signal agent: features.1m + news.scored (+ watchlist) -> SignalRule -> signals; the inputs
are co-partitioned by symbol, so one agent sees all of a symbol's bars, news and watchlist entries.
It forwards the features agent's minute closures (clock.minutes) once its signals of them are out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from opsinfra.endpoints import Endpoints
from opsinfra.errors import DecodeError
from opsinfra.settings import Settings
from schemas.records import (
    MARKET_KEY,
    Features,
    MinuteClosed,
    Recommendation,
    ScoredNews,
    WatchlistEntry,
)
from schemas.topics import CLOCK, FEATURES, NEWS_SCORED, SIGNALS, WATCHLIST
from streams.app import EventIO, PipelineApp, add_agent, run_stage
from streams.minute_clock import ClosurePublisher
from streams.offsets import start_offsets
from trading.clock import Clock, WallClock
from trading.signals import SignalRule, StrategyConfig, strategy_from_settings
from trading.watermarks import Closure, ClosureForwarder

log = logging.getLogger(__name__)

STAGE = "signals"
APP_ID = "ops-pipeline-signals"


@dataclass(frozen=True)
class SignalAgentConfig:
    strategy: StrategyConfig = StrategyConfig()
    batch_size: int = 500
    batch_within_s: float = 0.01


class SignalHandler:
    """The rule, its state (cooldowns, sentiment windows, watchlist) rebuilt from the topics when
    partitions are assigned: news.scored and watchlist for the inputs, signals for the cooldown.
    Recommendation ids are deterministic, so a redelivered bar re-emits an identical record at worst."""

    def __init__(self, papp: PipelineApp, config: SignalAgentConfig, endpoints: Endpoints,
                 clock: Clock | None = None) -> None:
        self.papp = papp
        self.clock = clock or WallClock()  # the time a forwarded closure records
        self.config = config
        self.endpoints = endpoints
        self.io = EventIO(papp, STAGE)
        self.rule = SignalRule(config.strategy)
        self.stale = True  # rebuild before the next batch (start, partitions assigned)
        self.forwarder = ClosureForwarder()
        self.features_topic = papp.settings.topic(FEATURES.name)
        self.signals_topic = papp.settings.topic(SIGNALS.name)
        self.closures = ClosurePublisher(papp, endpoints.kafka_bootstrap_servers, self.signals_topic, STAGE,
                                         self.clock)

    def inputs(self) -> Any:
        watch = [WATCHLIST] if self.config.strategy.require_watchlist else []
        specs = [FEATURES, NEWS_SCORED, CLOCK, *watch]
        return self.io.channel(*specs)

    def starts_sync(self) -> dict[int, int]:
        """Where this consumer starts each features.1m partition (blocking)."""
        papp, bootstrap = self.papp, self.endpoints.kafka_bootstrap_servers
        starts = start_offsets(papp.app, papp.settings, bootstrap, {self.features_topic: FEATURES.partitions})
        return starts.get(self.features_topic, {})

    def rebuild_sync(self) -> SignalRule:
        rule = SignalRule(self.config.strategy)
        news = self.io.read_all(self.endpoints, NEWS_SCORED)
        for n in news:
            if isinstance(n, ScoredNews) and n.ticker != MARKET_KEY:
                rule.on_news(n)
        if self.config.strategy.require_watchlist:
            rule.on_watchlist(e for e in self.io.read_all(self.endpoints, WATCHLIST)
                              if isinstance(e, WatchlistEntry))
        version = self.config.strategy.strategy_version
        recs = [r for r in self.io.read_all(self.endpoints, SIGNALS)
                if isinstance(r, Recommendation) and r.strategy_version == version]
        rule.restore_last(recs)
        log.info("signals: state rebuilt from %d news items and %d recommendations", len(news), len(recs))
        return rule

    async def ensure_state(self) -> None:
        if self.stale:
            self.stale = False
            self.rule = await asyncio.to_thread(self.rebuild_sync)
            self.forwarder.reset(await asyncio.to_thread(self.starts_sync))

    async def handle(self, events: Sequence[Any]) -> None:
        futures: list[Awaitable[Any]] = []
        signals: list[Awaitable[Any]] = []
        rule = self.rule
        forwarder = self.forwarder
        for event in events:
            msg = event.message
            if msg.topic == self.features_topic:
                forwarder.consumed(msg.partition, msg.offset)
            try:
                record = self.io.decode(event)
                if isinstance(record, MinuteClosed):
                    if record.stage == "features":
                        forwarder.add(record.partition, record.upto_offset, record)
                elif isinstance(record, Features):
                    if event.key is not None and event.key.decode() != record.symbol:
                        raise DecodeError(f"key {event.key!r} is not the symbol {record.symbol!r}",
                                          topic=event.message.topic)
                    rec = rule.on_features(record)
                    if rec is not None:
                        signals.append(await self.io.send(SIGNALS, rec))
                elif isinstance(record, ScoredNews):
                    if record.ticker != MARKET_KEY:
                        rule.on_news(record)
                elif isinstance(record, WatchlistEntry):
                    rule.on_watchlist([record])
            except Exception as exc:  # noqa: BLE001 - per-event errors become dead letters
                futures.append(await self.io.dead_letter(event, exc))
        if futures:
            await asyncio.gather(*futures)
        await self.closures.delivered(signals)
        ready = [c for c in forwarder.ready() if isinstance(c, MinuteClosed)]
        if ready:  # every signal of the closed minutes is out: say so, with where they end
            await self.closures.publish([(Closure(c.partition, c.minute, c.reason), c.upto_offset)
                                         for c in ready])


def register(papp: PipelineApp, *, endpoints: Endpoints, config: SignalAgentConfig | None = None,
             clock: Clock | None = None) -> SignalHandler:
    """Adds the signal agent to `papp`; returns its handler (rule, counts) for tests."""
    config = config or SignalAgentConfig(strategy=strategy_from_settings(papp.settings))
    handler = SignalHandler(papp, config, endpoints, clock)
    add_agent(papp, handler.inputs(), handler.handle, name="signals", batching=config,
              before_batch=handler.ensure_state, rebuilt=handler)
    return handler


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event, *,
        config: SignalAgentConfig | None = None) -> None:
    """The `signals` stage."""
    run_stage(settings, endpoints, stop, app_id=APP_ID,
              register=functools.partial(register, endpoints=endpoints, config=config))
