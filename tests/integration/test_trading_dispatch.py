"""The dispatch agent (simulate mode) through the real broker: one decision per (recommendation,
account) however often a recommendation is delivered, gates recorded, and the kill switch and the
decided set rebuilt from the executions topic after a restart."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from opsinfra.settings import Settings
from schemas.records import Execution, Recommendation
from schemas.topic_io import RecordProducer
from schemas.topics import EXECUTIONS, FEATURES, SIGNALS
from streams import dispatch_agent
from tests.integration.clock_helpers import close_minute
from tests.integration.test_trading_helpers import (
    OPEN,
    caught_up,
    dispatch_stage,
    read,
    run_until,
    session_features,
)
from trading.gates import GATE_ORDER, LARGE_100K, TINY_1K
from trading.signals import SignalRule, recommendation_id

pytestmark = pytest.mark.integration

SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA")


def executions(settings: Settings, bootstrap: str) -> list[Execution]:
    return [e for e in read(settings, bootstrap, EXECUTIONS) if isinstance(e, Execution)]


def test_one_decision_per_recommendation_and_account_across_redelivery_and_restart(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    feats = session_features(SYMBOLS, 200)
    rule = SignalRule()
    recs = [r for f in feats if (r := rule.on_features(f)) is not None]
    assert len(recs) >= 4
    for r in recs:
        produce.send(SIGNALS, r)
    for f in feats:
        produce.send(FEATURES, f)
    produce.flush()
    last = feats[-1].ts
    close_minute(provisioned, kafka_bootstrap, last)

    config = dispatch_agent.DispatchConfig(accounts=(LARGE_100K, TINY_1K), clock="bar")
    stage = dispatch_stage(provisioned, kafka_bootstrap, config)
    wanted = {(a.name, r.id) for a in config.accounts for r in recs}

    def decided() -> set[tuple[str, str]]:
        return {(e.account, e.recommendation_id) for e in executions(provisioned, kafka_bootstrap)}

    run_until(stage, lambda: wanted <= decided())
    first = executions(provisioned, kafka_bootstrap)
    keys = [e.key() for e in first]
    assert len(keys) == len(set(keys)), "a second decision for the same (recommendation, account)"
    by_key = {(e.account, e.recommendation_id): e for e in first}
    for key in wanted:
        e = by_key[key]
        assert [g.name for g in e.gates][: len(GATE_ORDER)] == list(GATE_ORDER)
        assert e.status in ("SIMULATED", "SKIPPED") and e.mode == "simulate"
        assert (e.status == "SKIPPED") == (e.failure_reason is not None)
        rec = next(r for r in recs if r.id == key[1])
        assert e.decided_at >= rec.ts + timedelta(minutes=1)  # the bar clock: decided at the bar's end
    killed = [r for r in recs if r.volume_multiplier == 0.0]
    for r in killed:
        for a in config.accounts:
            assert by_key[(a.name, r.id)].failure_reason == "confidence: confidence below minimum"

    # the same signals delivered twice, and a restart: no new decision, identical executions
    for r in recs:
        produce.send(SIGNALS, r)
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, last + timedelta(minutes=1))  # they are late: a later step
    group = provisioned.pipeline_topic_prefix + dispatch_agent.APP_ID
    run_until(stage, caught_up(provisioned, kafka_bootstrap, group, SIGNALS, FEATURES))
    again = executions(provisioned, kafka_bootstrap)
    assert sorted(again, key=Execution.key) == sorted(first, key=Execution.key)


def _rec(symbol: str, action: str, minute: int, close: float) -> Recommendation:
    ts = OPEN + timedelta(minutes=minute)
    return Recommendation(
        id=recommendation_id("t", symbol, ts, action), symbol=symbol, ts=ts, action=action,
        base_confidence=0.9, volume_multiplier=1.0, confidence=0.9, sentiment=None, reason="test",
        features={"close": close}, strategy_version="t",
    )


def test_kill_switch_holds_across_a_restart(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    account = replace(TINY_1K, name="tiny-killable", daily_loss_limit=20.0, min_confidence=0.5)
    config = dispatch_agent.DispatchConfig(accounts=(account,), clock="bar")
    stage = dispatch_stage(provisioned, kafka_bootstrap, config)
    buy, sell = _rec("AAPL", "BUY", 10, 100.0), _rec("AAPL", "SELL", 12, 90.0)  # -10% on $250
    produce.send(SIGNALS, buy)
    produce.send(SIGNALS, sell)  # same symbol, same partition: decided after the entry
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, sell.ts)
    run_until(stage, lambda: len(executions(provisioned, kafka_bootstrap)) >= 2)
    got = {e.recommendation_id: e for e in executions(provisioned, kafka_bootstrap)}
    assert got[buy.id].status == "SIMULATED" and got[sell.id].intent == "exit"

    # restarted: the loss comes back from the executions topic, so the switch is still on today;
    # the next trading day it is off again
    later = _rec("MSFT", "BUY", 30, 50.0)
    tomorrow = replace(later, ts=OPEN + timedelta(days=1, minutes=30))
    tomorrow = replace(tomorrow, id=recommendation_id("t", "MSFT", tomorrow.ts, "BUY"))
    produce.send(SIGNALS, later)
    produce.send(SIGNALS, tomorrow)
    produce.flush()
    close_minute(provisioned, kafka_bootstrap, tomorrow.ts)
    run_until(stage, lambda: len(executions(provisioned, kafka_bootstrap)) >= 4)
    after = {e.recommendation_id: e for e in executions(provisioned, kafka_bootstrap)}
    blocked = after[later.id]
    assert blocked.status == "SKIPPED"
    assert blocked.failure_reason == "daily_loss: kill switch on: daily loss limit hit"
    gate = next(g for g in blocked.gates if g.name == "daily_loss")
    assert gate.value == pytest.approx(-25.0, abs=0.5) and gate.limit == -20.0
    assert after[tomorrow.id].status == "SIMULATED", after[tomorrow.id].failure_reason
