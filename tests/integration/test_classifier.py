"""The classifier agent through the real broker: a tiny BERT built in the test (the real
transformers loading and batching path), the lexicon fallback, and poison input to the DLQ."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from pipeline.stages import load as load_stage
from schemas.codec import HeaderCodec
from schemas.records import MARKET_KEY, DeadLetter, NewsItem, ScoredNews
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import NEWS_RAW, NEWS_SCORED
from streams import classifier as agent
from streams.app import create_app, run_app
from tests.unit.test_sentiment import build_tiny_model
from trading.news import Sentiment, infer_tickers

pytestmark = pytest.mark.integration

TS = datetime(2025, 6, 10, 14, 0, tzinfo=UTC)
HEADLINES = [
    "Apple shares surge after record profit",
    "Tesla recall after crash; $TSLA falls",
    "Nvidia and Microsoft rally on AI deal",
    "Markets close mixed ahead of the Fed",
    "Grandma's apple pie wins the county fair",
    "Amazon Web Services outage; Alphabet and Meta flat",
]


def items(n: int) -> list[NewsItem]:
    return [
        NewsItem(
            id=f"item-{i:03d}",
            feed="http://feeds.example.com/markets.xml",
            title=HEADLINES[i % len(HEADLINES)],
            summary=f"story number {i}",
            link=f"https://news.example.com/{i}",
            published=TS + timedelta(minutes=i),
            fetched_at=TS,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert-agent"))


class Spy:
    """Wraps the real classifier and records the batch sizes it was called with."""

    def __init__(self, inner: agent.FallbackClassifier) -> None:
        self.inner = inner
        self.batches: list[int] = []

    def classify(self, texts: list[str]) -> list[Sentiment]:
        self.batches.append(len(texts))
        return self.inner.classify(texts)


@pytest.fixture
def produce(provisioned: Settings, kafka_bootstrap: str) -> Iterator[RecordProducer]:
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        yield producer


def run_stage_until(
    settings: Settings,
    bootstrap: str,
    stage: Callable[[threading.Event], None],
    expected: int,
    deadline_s: float = 120,
) -> list[tuple[object, ScoredNews]]:
    """Runs a classifier stage until news.scored holds `expected` records (or the deadline)."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            stage(stop)
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    got: list = []
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end and worker.is_alive():
            got = read_records(settings, bootstrap, HeaderCodec(), NEWS_SCORED, quiet_s=0.5)
            if len(got) >= expected:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive() and not failure, failure
    assert all(isinstance(r, ScoredNews) for _, r in got)
    return got


def test_tiny_model_scores_every_item_per_ticker_through_the_broker(
    provisioned: Settings, kafka_bootstrap: str, tiny_model: Path, produce: RecordProducer
) -> None:
    news = items(40)
    for item in news:
        produce.send(NEWS_RAW, item)
    topic = provisioned.topic(NEWS_RAW.name)
    produce.send_raw(topic, b"poison-1", b"not avro", [("ops.schema", b"ops.pipeline.NewsItem"),
                                                      ("ops.schema.version", b"1")])
    produce.send_raw(topic, b"poison-2", b"\x00\x01", [])
    produce.flush()

    universe = tuple(provisioned.pipeline_symbols)
    per_item = {i.id: infer_tickers(f"{i.title}\n{i.summary}", universe) for i in news}
    expected = sum(max(1, len(t)) for t in per_item.values())
    config = agent.ClassifierConfig.from_settings(
        provisioned.model_copy(update={"sentiment_model": str(tiny_model)}),
        batch_size=16,
        batch_within_s=2.0,
    )
    assert config.model == str(tiny_model)
    spy = Spy(agent.build_classifier(config))
    papp = create_app(
        provisioned,
        Endpoints(kafka_bootstrap, "", None, embedded=False),
        app_id=agent.APP_ID,
        agents=[lambda p: agent.register(p, config=config, classifier=spy)],
    )
    got = run_stage_until(
        provisioned, kafka_bootstrap, lambda stop: run_app(papp, stop), expected
    )

    records = [r for _, r in got]
    assert len(records) == expected
    assert {(r.id, r.ticker) for r in records} == {
        (i, t) for i, ts in per_item.items() for t in (ts or [MARKET_KEY])
    }
    for msg, rec in got:
        assert msg.key == rec.ticker.encode()  # type: ignore[attr-defined]
        assert rec.model == str(tiny_model)  # the model scored it, not the fallback
        assert rec.label in {"positive", "negative", "neutral"} and 0 <= rec.score <= 1
        assert rec.tickers == per_item[rec.id]
        assert rec.published == TS + timedelta(minutes=int(rec.id[-3:]))
    # one ticker, one partition: co-partitioned with the other symbol-keyed topics
    parts: dict[str, set[int]] = {}
    for msg, rec in got:
        parts.setdefault(rec.ticker, set()).add(msg.partition)  # type: ignore[attr-defined]
    assert all(len(p) == 1 for p in parts.values())
    assert sum(spy.batches) == 40 and max(spy.batches) > 1  # batched, every item once
    assert max(spy.batches) <= 16

    letters = read_records(provisioned, kafka_bootstrap, HeaderCodec(), NEWS_RAW.dlq, quiet_s=0.5)
    assert len(letters) == 2
    for _, letter in letters:
        assert isinstance(letter, DeadLetter)
        assert letter.stage == "classifier" and letter.topic == topic
        assert letter.original_key in (b"poison-1", b"poison-2")
        assert letter.offset is not None and letter.partition is not None
        assert letter.error_type == "DecodeError"


def test_without_a_model_the_lexicon_scores_and_says_so(
    provisioned: Settings,
    kafka_bootstrap: str,
    tmp_path: Path,
    produce: RecordProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    news = items(6)
    for item in news:
        produce.send(NEWS_RAW, item)
    produce.flush()
    universe = tuple(provisioned.pipeline_symbols)
    expected = sum(max(1, len(infer_tickers(f"{i.title}\n{i.summary}", universe))) for i in news)
    settings = provisioned.model_copy(update={"sentiment_model": str(tmp_path / "no-local-copy")})
    endpoints = Endpoints(kafka_bootstrap, "", None, embedded=False)
    with caplog.at_level(logging.WARNING, logger="trading.news"):
        # the registered stage itself, as `ops-pipeline run --only classifier` calls it
        stage = load_stage("classifier")
        got = run_stage_until(
            provisioned, kafka_bootstrap, lambda stop: stage(settings, endpoints, stop), expected
        )
    records = [r for _, r in got]
    assert len(records) == expected and {r.id for r in records} == {i.id for i in news}
    assert {r.model for r in records} == {"lexicon:vader"}
    by_id = {r.id: r.label for r in records}
    assert by_id["item-000"] == "positive"  # "surge", "record profit"
    assert by_id["item-001"] == "negative"  # "recall", "crash", "falls"
    warnings = [r for r in caplog.records if r.name == "trading.news"]
    assert len(warnings) == 1 and "no-local-copy" in warnings[0].getMessage()


@pytest.mark.fault
def test_a_batch_cut_short_by_a_stop_is_redelivered_not_lost(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    news = items(24)
    for item in news:
        produce.send(NEWS_RAW, item)
    produce.flush()
    config = agent.ClassifierConfig(
        model="unused", universe=tuple(provisioned.pipeline_symbols), batch_size=8,
        batch_within_s=2.0,
    )
    endpoints = Endpoints(kafka_bootstrap, "", None, embedded=False)
    stop, released = threading.Event(), threading.Event()

    class StopsOnSecondBatch:
        """Scores one batch, then stops the worker while the second is in flight."""

        def __init__(self) -> None:
            self.calls = 0

        def classify(self, texts: list[str]) -> list[Sentiment]:
            self.calls += 1
            if self.calls >= 2:
                stop.set()
                released.wait(30)  # still "classifying" while the app shuts down
            return [Sentiment("neutral", 1.0, "fixed") for _ in texts]

    first = create_app(
        provisioned, endpoints, app_id=agent.APP_ID,
        agents=[lambda p: agent.register(p, config=config, classifier=StopsOnSecondBatch())],
    )
    worker = threading.Thread(target=run_app, args=(first, stop), daemon=True)
    worker.start()
    assert stop.wait(120), "the first worker never got a second batch"
    worker.join(60)
    released.set()
    assert not worker.is_alive()
    before = {r.id for _, r in read_records(  # type: ignore[union-attr]
        provisioned, kafka_bootstrap, HeaderCodec(), NEWS_SCORED, quiet_s=0.5)}
    assert len(before) < len(news)  # the cut batch was not scored...

    class Fixed:
        def classify(self, texts: list[str]) -> list[Sentiment]:
            return [Sentiment("neutral", 1.0, "fixed") for _ in texts]

    second = create_app(
        provisioned, endpoints, app_id=agent.APP_ID,  # same group: resumes from its commits
        agents=[lambda p: agent.register(p, config=config, classifier=Fixed())],
    )
    expected = sum(max(1, len(infer_tickers(f"{i.title}\n{i.summary}", config.universe)))
                   for i in news)
    got = run_stage_until(
        provisioned, kafka_bootstrap, lambda s: run_app(second, s), expected
    )
    assert {r.id for _, r in got} == {i.id for i in news}  # ...and is scored after the restart
