"""The signal agent through the real broker: the same recommendations as the pure rule in-process,
nothing new after a restart over the same input, and poison input to the DLQ."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.records import DeadLetter, Recommendation, ScoredNews
from schemas.topic_io import RecordProducer
from schemas.topics import FEATURES, NEWS_SCORED, SIGNALS
from streams import signal_agent
from streams.app import PipelineApp, create_app, run_app
from tests.integration.test_trading_helpers import OPEN, caught_up, read, run_until, session_features
from trading.signals import SignalRule

pytestmark = pytest.mark.integration

SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA")


def test_signal_agent_matches_the_pure_rule_and_survives_a_restart(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    feats = session_features(SYMBOLS, 200)
    news = [ScoredNews(id="n1", ticker="AAPL", tickers=["AAPL"], label="positive", score=0.9,
                       model="m", published=OPEN + timedelta(minutes=55)),
            ScoredNews(id="n2", ticker="_market", tickers=[], label="negative", score=0.9,
                       model="m", published=OPEN)]
    # news first: the agent is not promised any order across topics, the rule only sees the past
    for n in news:
        produce.send(NEWS_SCORED, n)
    produce.flush()
    for f in feats:
        produce.send(FEATURES, f)
    topic = provisioned.topic(FEATURES.name)
    produce.send_raw(topic, b"AAPL", b"garbage", [("ops.schema", b"ops.pipeline.Features"),
                                                  ("ops.schema.version", b"1")])
    produce.flush()

    rule = SignalRule()
    for n in news[:1]:
        rule.on_news(n)
    expected = [r for f in feats if (r := rule.on_features(f)) is not None]
    assert {r.action for r in expected} == {"BUY", "SELL"}
    assert any(r.volume_multiplier == 0.0 for r in expected)  # killed ones are recorded too

    endpoints = Endpoints(kafka_bootstrap, "", None, embedded=False)

    def register(p: PipelineApp) -> None:
        signal_agent.register(p, endpoints=endpoints)

    def stage(stop: object) -> None:
        papp = create_app(provisioned, endpoints, app_id=signal_agent.APP_ID, broker_commit_interval=0.5,
                          agents=[register])
        run_app(papp, stop)  # type: ignore[arg-type]

    def got() -> list[Recommendation]:
        return [r for r in read(provisioned, kafka_bootstrap, SIGNALS) if isinstance(r, Recommendation)]

    run_until(stage, lambda: len(got()) >= len(expected))
    first = got()
    assert sorted(first, key=lambda r: r.id) == sorted(expected, key=lambda r: r.id)
    aapl = [r for r in first if r.symbol == "AAPL" and r.ts >= OPEN + timedelta(minutes=55)]
    assert aapl and aapl[0].sentiment is not None  # the news item reached the rule

    letters = read(provisioned, kafka_bootstrap, FEATURES.dlq)
    assert len(letters) == 1 and isinstance(letters[0], DeadLetter)
    assert letters[0].stage == "signals" and letters[0].error_type == "DecodeError"

    # a restart over the same input (and the same input again) adds no recommendation
    for f in feats[-60:]:
        produce.send(FEATURES, f)
    produce.flush()
    group = provisioned.pipeline_topic_prefix + signal_agent.APP_ID
    run_until(stage, caught_up(provisioned, kafka_bootstrap, group, FEATURES, NEWS_SCORED))
    assert sorted(got(), key=lambda r: r.id) == sorted(first, key=lambda r: r.id)
