"""The watchlist and position agents through the real broker: the same output as the pure
objects in-process, and nothing new (or lost) after a restart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.records import Execution, Position, Recommendation, WatchlistEntry
from schemas.topic_io import RecordProducer
from schemas.topics import EXECUTIONS, FEATURES, POSITIONS, WATCHLIST
from streams import position_agent, watchlist_agent
from streams.app import create_app, run_app
from tests.integration.test_trading_helpers import caught_up, read, run_until, session_features
from trading.accounts import AccountDesk
from trading.calendar import TradingCalendar
from trading.gates import LARGE_100K
from trading.positions import PositionProjection
from trading.signals import SignalRule
from trading.watchlist import WatchlistBuilder, WatchlistConfig

pytestmark = pytest.mark.integration

SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA", "AMZN")


def _run(settings: Settings, bootstrap: str, module: object, register: object):
    endpoints = Endpoints(bootstrap, "", None, embedded=False)

    def stage(stop: object) -> None:
        papp = create_app(settings, endpoints, app_id=module.APP_ID,  # type: ignore[attr-defined]
                          broker_commit_interval=0.5,
                          agents=[lambda p: register(p, endpoints=endpoints)])  # type: ignore[operator]
        run_app(papp, stop)  # type: ignore[arg-type]

    return stage


def test_watchlist_agent_publishes_what_the_builder_computes(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    feats = session_features(SYMBOLS, 42)
    cfg = WatchlistConfig(universe=SYMBOLS, top_n=3)
    builder = WatchlistBuilder(cfg)
    expected = [e for f in feats for e in builder.on_features(f)]
    assert len({e.ts for e in expected}) == 8  # windows ending 09:35 ... 10:10; the last one is open
    for f in feats:
        produce.send(FEATURES, f)
    produce.flush()
    config = watchlist_agent.WatchlistAgentConfig(watchlist=cfg)

    def register(p: object, endpoints: Endpoints) -> None:
        watchlist_agent.register(p, endpoints=endpoints, config=config)  # type: ignore[arg-type]

    stage = _run(provisioned, kafka_bootstrap, watchlist_agent, register)

    def got() -> list[WatchlistEntry]:
        return [e for e in read(provisioned, kafka_bootstrap, WATCHLIST) if isinstance(e, WatchlistEntry)]

    run_until(stage, lambda: len(got()) >= len(expected))
    first = got()
    assert sorted(first, key=lambda e: (e.ts, e.rank)) == expected
    assert all(1 <= e.rank <= 3 for e in first)

    # a restart with the last bars delivered again publishes nothing new
    for f in feats[-10:]:
        produce.send(FEATURES, f)
    produce.flush()
    group = provisioned.pipeline_topic_prefix + watchlist_agent.APP_ID
    run_until(stage, caught_up(provisioned, kafka_bootstrap, group, FEATURES))
    assert sorted(got(), key=lambda e: (e.ts, e.rank)) == expected


def test_position_agent_projects_executions_in_any_partition_order(
    provisioned: Settings, kafka_bootstrap: str, produce: RecordProducer
) -> None:
    """Every exit is on the topic, and consumed, before any entry: the agent sees each round trip
    backwards (executions are keyed by recommendation, so a round trip spans partitions)."""
    feats = session_features(SYMBOLS, 240)
    rule = SignalRule()
    desk = AccountDesk(replace(LARGE_100K, min_confidence=0.2), TradingCalendar())
    history: list[Execution] = []
    for f in feats:
        now = f.ts + timedelta(minutes=1)
        rec: Recommendation | None = rule.on_features(f)
        if rec is not None and (e := desk.on_recommendation(rec, now)) is not None:
            history.append(e)
        history.extend(desk.on_bar(f.symbol, f.ts, f.close, now))
    fills = [e for e in history if e.status == "SIMULATED"]
    exits = [e for e in history if e.intent == "exit"]
    entries = [e for e in history if e.intent != "exit"]
    assert len(exits) >= 2 and {e.symbol for e in exits} <= {e.symbol for e in fills if e.intent == "entry"}
    projection = PositionProjection({LARGE_100K.name: LARGE_100K.exits})
    for e in history:
        projection.apply(e)
    expected = {sym: projection.current(LARGE_100K.name, sym) for sym in SYMBOLS}
    expected = {s: p for s, p in expected.items() if p is not None}
    assert {p.status for p in expected.values()} == {"CLOSED"} and len(expected) >= 2

    stage = _run(provisioned, kafka_bootstrap, position_agent, position_agent.register)

    def latest() -> dict[str, Position]:
        out: dict[str, Position] = {}
        for p in read(provisioned, kafka_bootstrap, POSITIONS):  # one partition per key: in order
            if isinstance(p, Position):
                out[p.symbol] = p
        return out

    group = provisioned.pipeline_topic_prefix + position_agent.APP_ID
    for e in exits:
        produce.send(EXECUTIONS, e)
    produce.flush()
    exits_done = caught_up(provisioned, kafka_bootstrap, group, EXECUTIONS)
    entries_done: list[Callable[[], bool]] = []

    def exits_then_entries() -> bool:
        """Once the exits are consumed (nothing to show yet: no entry), send the entries."""
        if not entries_done:
            if not exits_done():
                return False
            assert latest() == {}, "a position from exits alone"
            for e in entries:
                produce.send(EXECUTIONS, e)
            produce.flush()
            entries_done.append(caught_up(provisioned, kafka_bootstrap, group, EXECUTIONS))
            return False
        return entries_done[0]()

    run_until(stage, exits_then_entries)
    assert latest() == expected
    # restarted over redelivered executions: the records stay the same
    for e in history[-5:]:
        produce.send(EXECUTIONS, e)
    produce.flush()
    run_until(stage, caught_up(provisioned, kafka_bootstrap, group, EXECUTIONS))
    assert latest() == expected
