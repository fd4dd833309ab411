"""The signal agent: features.1m + news.scored (+ watchlist) -> SignalRule -> signals.

All inputs are keyed by symbol and co-partitioned, so one agent sees a symbol's bars, news and
watchlist entries. The rule's state (per-symbol cooldown, sentiment windows, watchlist) is rebuilt
when partitions are assigned, from the topics themselves: news.scored and watchlist for the inputs,
signals for the cooldown (the latest recommendation per symbol). Recommendations are deterministic
(UUIDv5 ids), so a redelivered bar re-emits an identical record at worst; an event is acked once
what it produced is acknowledged by the broker. Also home of EventIO, shared by the trading agents.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from opsinfra.endpoints import Endpoints
from opsinfra.errors import DecodeError
from opsinfra.settings import Settings
from schemas.codec import decode
from schemas.records import (
    MARKET_KEY,
    Features,
    Recommendation,
    Record,
    ScoredNews,
    WatchlistEntry,
)
from schemas.topic_io import read_records
from schemas.topics import FEATURES, NEWS_SCORED, SIGNALS, WATCHLIST, TopicSpec
from streams.app import PipelineApp, create_app, event_headers, run_app
from trading.signals import SignalRule, StrategyConfig, strategy_from_settings

log = logging.getLogger(__name__)

STAGE = "signals"
APP_ID = "ops-pipeline-signals"


class EventIO:
    """Decoding, sending and dead-lettering for an agent, with the codec's headers kept."""

    def __init__(self, papp: PipelineApp, stage: str) -> None:
        self.papp = papp
        self.stage = stage
        self.counts: Counter[str] = Counter()
        self._specs: dict[str, TopicSpec] = {}

    def physical(self, spec: TopicSpec) -> str:
        name = self.papp.settings.topic(spec.name)
        self._specs[name] = spec
        return name

    def channel(self, *specs: TopicSpec) -> Any:
        """One faust channel over several co-partitioned contract topics (raw bytes)."""
        names = [self.physical(s) for s in specs]
        return self.papp.app.topic(*names, key_serializer="raw", value_serializer="raw")

    def spec_of(self, event: Any) -> TopicSpec:
        return self._specs[event.message.topic]

    def decode(self, event: Any) -> Record:
        msg = event.message
        spec = self._specs[msg.topic]
        return decode(self.papp.codec, spec.record, event.value, event_headers(msg.headers),
                      topic=msg.topic, partition=msg.partition, offset=msg.offset)

    async def send(self, spec: TopicSpec, record: Record, key: str | None = None) -> Awaitable[Any]:
        topic = self.papp.settings.topic(spec.name)
        value, headers = self.papp.codec.encode(topic, record)
        k = (key if key is not None else record.key()).encode()
        self.counts[spec.name] += 1
        fut: Awaitable[Any] = await self.papp.app.producer.send(topic, k, value, None, None, headers)
        return fut

    async def dead_letter(self, event: Any, error: BaseException) -> Awaitable[Any]:
        self.counts["dead_letters"] += 1
        return await self.papp.send_dead_letter(event, error, stage=self.stage)

    def read_all(self, endpoints: Endpoints, spec: TopicSpec) -> list[Record]:
        """Every decodable record of a contract topic as of now (blocking: run it in a thread)."""
        got = read_records(self.papp.settings, endpoints.kafka_bootstrap_servers, self.papp.codec, spec,
                           quiet_s=0.5)
        return [r for _, r in got if not isinstance(r, DecodeError)]


async def run_batches(stream: Any, size: int, within: float,
                      handle: Any, *, before_batch: Any = None) -> None:
    """The agent loop: a batch is handled, its outputs delivered, then its events acked."""
    async for events in stream.noack_take(size, within=within):
        if before_batch is not None:
            await before_batch()
        await handle(events)
        for event in events:
            await stream.ack(event)


@dataclass(frozen=True)
class SignalAgentConfig:
    strategy: StrategyConfig = StrategyConfig()
    batch_size: int = 500
    batch_within_s: float = 0.05


class SignalHandler:
    def __init__(self, papp: PipelineApp, config: SignalAgentConfig, endpoints: Endpoints) -> None:
        self.papp = papp
        self.config = config
        self.endpoints = endpoints
        self.io = EventIO(papp, STAGE)
        self.rule = SignalRule(config.strategy)
        self.stale = True  # rebuild before the next batch (start, partitions assigned)

    def inputs(self) -> Any:
        specs = [FEATURES, NEWS_SCORED] + ([WATCHLIST] if self.config.strategy.require_watchlist else [])
        return self.io.channel(*specs)

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

    async def handle(self, events: Sequence[Any]) -> None:
        futures: list[Awaitable[Any]] = []
        rule = self.rule
        for event in events:
            try:
                record = self.io.decode(event)
                if isinstance(record, Features):
                    if event.key is not None and event.key.decode() != record.symbol:
                        raise DecodeError(f"key {event.key!r} is not the symbol {record.symbol!r}",
                                          topic=event.message.topic)
                    rec = rule.on_features(record)
                    if rec is not None:
                        futures.append(await self.io.send(SIGNALS, rec))
                elif isinstance(record, ScoredNews):
                    if record.ticker != MARKET_KEY:
                        rule.on_news(record)
                elif isinstance(record, WatchlistEntry):
                    rule.on_watchlist([record])
            except Exception as exc:  # noqa: BLE001 - per-event errors become dead letters
                futures.append(await self.io.dead_letter(event, exc))
        if futures:
            await asyncio.gather(*futures)


def register(papp: PipelineApp, *, endpoints: Endpoints, config: SignalAgentConfig | None = None
             ) -> SignalHandler:
    """Adds the signal agent to `papp`; returns its handler (rule, counts) for tests."""
    config = config or SignalAgentConfig(strategy=strategy_from_settings(papp.settings))
    handler = SignalHandler(papp, config, endpoints)

    async def signals(stream: Any) -> None:
        await run_batches(stream, config.batch_size, config.batch_within_s, handler.handle,
                          before_batch=handler.ensure_state)

    papp.app.agent(handler.inputs(), name="signals", concurrency=1)(signals)

    async def on_assigned(_app: Any, *_args: Any, signal: Any = None, **_kw: Any) -> None:
        handler.stale = True

    papp.app.on_partitions_assigned.connect(cast(Any, on_assigned))  # mode types it too narrowly
    return handler


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event, *,
        config: SignalAgentConfig | None = None) -> None:
    """The `signals` stage."""
    def registrar(p: PipelineApp) -> None:
        register(p, endpoints=endpoints, config=config)

    papp = create_app(settings, endpoints, app_id=APP_ID, agents=[registrar])
    run_app(papp, stop)
