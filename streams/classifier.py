"""The classifier agent: news.raw in batches -> sentiment + tickers -> news.scored, one per ticker;
classification runs in a worker thread so the loop keeps heartbeating.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.sentiment_model import TransformersClassifier
from opsinfra.endpoints import Endpoints
from opsinfra.errors import DecodeError
from opsinfra.settings import DEFAULT_SYMBOLS, Settings
from schemas.codec import decode, header_pairs
from schemas.records import NewsItem, ScoredNews
from schemas.topics import NEWS_RAW, NEWS_SCORED
from streams.app import PipelineApp, add_agent, run_stage
from trading.news import Classifier, FallbackClassifier, LexiconClassifier, score_batch, score_items

log = logging.getLogger(__name__)

STAGE = "classifier"
APP_ID = "ops-pipeline-classifier"


@dataclass(frozen=True)
class ClassifierConfig:
    model: str = "ProsusAI/finbert"
    universe: tuple[str, ...] = DEFAULT_SYMBOLS
    batch_size: int = 16
    batch_within_s: float = 0.5  # how long a partial batch waits for more items
    # One: the classifier shares the host with the other stages, and torch's default (a
    # thread per core) contends with them; on a busy 2-core host it was up to several times
    # slower at some batch sizes (bench/bench_news.py). Raise it on a dedicated machine.
    torch_threads: int | None = 1
    max_length: int = 512  # tokens; also capped by the model's own limit

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ClassifierConfig:
        conf: dict[str, Any] = {
            "model": settings.sentiment_model,
            "universe": tuple(settings.pipeline_symbols),
        }
        for name, attr in (
            ("batch_size", "classifier_batch_size"),
            ("torch_threads", "torch_num_threads"),
        ):
            value = getattr(settings, attr, None)  # fields the settings owner may add
            if value is not None:
                conf[name] = value
        conf.update(overrides)
        return cls(**conf)


def build_classifier(config: ClassifierConfig) -> FallbackClassifier:
    """The configured model (loaded on the first batch), with the VADER lexicon behind it."""
    model = TransformersClassifier(
        config.model,
        batch_size=config.batch_size,
        torch_threads=config.torch_threads,
        max_length=config.max_length,
    )
    return FallbackClassifier(model, LexiconClassifier())


class BatchHandler:
    """Turns one batch of news.raw events into sends; every event ends up scored or dead-lettered."""

    def __init__(self, papp: PipelineApp, classifier: Classifier, config: ClassifierConfig) -> None:
        self.papp = papp
        self.classifier = classifier
        self.config = config
        self.scored = papp.topic(NEWS_SCORED)
        self.scored_name = papp.settings.topic(NEWS_SCORED.name)

    async def handle(self, events: Sequence[Any]) -> None:
        sends: list[Awaitable[Any]] = []
        decoded: list[tuple[Any, NewsItem]] = []
        for event in events:
            msg = event.message
            try:
                item = decode(
                    self.papp.codec,
                    NewsItem,
                    event.value,
                    header_pairs(msg.headers),
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                )
            except DecodeError as exc:
                sends.append(await self._dead_letter(event, exc))
                continue
            decoded.append((event, item))
        for event, result in await self._score(decoded):
            if isinstance(result, BaseException):
                sends.append(await self._dead_letter(event, result))
                continue
            try:  # encode all of an item's records first: it goes out whole or to the DLQ
                encoded = [(r.ticker, *self.papp.codec.encode(self.scored_name, r)) for r in result]
            except Exception as exc:  # a record the schema refuses: the input is at fault
                sends.append(await self._dead_letter(event, exc))
                continue
            for ticker, value, headers in encoded:
                sends.append(
                    await self.scored.send(
                        key=ticker.encode(), value=value, headers=headers, force=True
                    )
                )
        await asyncio.gather(*sends)  # delivered before the caller acks the batch
        # records, latency and progress: the app's StageMonitor; dead letters: _dead_letter

    async def _score(
        self, decoded: list[tuple[Any, NewsItem]]
    ) -> list[tuple[Any, list[ScoredNews] | BaseException]]:
        if not decoded:
            return []
        universe = self.config.universe
        items = [item for _, item in decoded]
        try:
            groups = await asyncio.to_thread(score_batch, items, self.classifier, universe)
        except Exception:
            log.exception("classifier: batch of %d failed; scoring items one by one", len(items))
        else:
            return [(event, group) for (event, _), group in zip(decoded, groups, strict=True)]
        results: list[tuple[Any, list[ScoredNews] | BaseException]] = []
        for event, item in decoded:
            try:
                results.append(
                    (event, await asyncio.to_thread(score_items, [item], self.classifier, universe))
                )
            except Exception as exc:
                results.append((event, exc))
        return results

    async def _dead_letter(self, event: Any, error: BaseException) -> Awaitable[Any]:
        return await self.papp.send_dead_letter(event, error, stage=STAGE)


def register(
    papp: PipelineApp,
    *,
    config: ClassifierConfig | None = None,
    classifier: Classifier | None = None,
) -> None:
    """Adds the classifier agent to `papp` (nothing is loaded until the first batch)."""
    config = config or ClassifierConfig.from_settings(papp.settings)
    handler = BatchHandler(papp, classifier or build_classifier(config), config)
    add_agent(papp, papp.topic(NEWS_RAW), handler.handle, name="news-classifier", batching=config)


def run(
    settings: Settings,
    endpoints: Endpoints,
    stop: threading.Event,
    *,
    config: ClassifierConfig | None = None,
) -> None:
    """The `classifier` stage."""
    config = config or ClassifierConfig.from_settings(settings)
    log.info("classifier: model %s, batch %d, universe %s", config.model, config.batch_size,
             ",".join(config.universe))
    run_stage(settings, endpoints, stop, app_id=APP_ID, register=functools.partial(register, config=config))
