"""Operator control as records: halt, resume and setting changes apply at their event time, in the
live desk and the backtester alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.records import Bar, ControlEvent, Recommendation
from trading.accounts import AccountDesk
from trading.backtest import Backtester
from trading.calendar import TradingCalendar
from trading.control import changed_config, validate
from trading.execution import SIMULATED, SKIPPED, exit_reason_of
from trading.gates import LARGE_100K, TINY_1K
from trading.signals import recommendation_id

CAL = TradingCalendar()
T0 = datetime(2026, 2, 3, 15, 0, tzinfo=UTC)  # Tuesday 10:00 New York


def rec(symbol: str, ts: datetime, confidence: float = 0.8, action: str = "BUY") -> Recommendation:
    return Recommendation(recommendation_id("v1", symbol, ts, action), symbol, ts, action, confidence, 1.0,
                          confidence, None, "test", {"close": 100.0}, "v1")


def control(action: str, at: datetime, account: str = "*", **kw: object) -> ControlEvent:
    return ControlEvent(f"{action}-{at.isoformat()}-{account}", account, action, at, "test", **kw)  # type: ignore[arg-type]


def test_halt_skips_the_next_entry_while_an_exit_still_executes() -> None:
    d = AccountDesk(LARGE_100K, CAL)
    entry = d.on_recommendation(rec("AAPL", T0), T0 + timedelta(minutes=1))
    assert entry is not None and entry.status == SIMULATED
    assert d.on_broker(control("halt", T0 + timedelta(minutes=2), flatten=False), T0) == ([], [])
    skipped = d.on_recommendation(rec("MSFT", T0 + timedelta(minutes=3)), T0 + timedelta(minutes=4))
    assert skipped is not None and skipped.status == SKIPPED
    assert skipped.failure_reason is not None and skipped.failure_reason.startswith("halted:")
    assert skipped.gates[0].name == "halted" and skipped.gates[0].value == "test"
    # the stop still fires: exits are never held
    (stop,) = d.on_bar("AAPL", T0 + timedelta(minutes=5), 90.0, T0 + timedelta(minutes=6))
    assert stop.status == SIMULATED and exit_reason_of(stop) == "stop_loss"
    d.on_broker(control("resume", T0 + timedelta(minutes=7)), T0)
    again = d.on_recommendation(rec("NVDA", T0 + timedelta(minutes=8)), T0 + timedelta(minutes=9))
    assert again is not None and again.status == SIMULATED


def test_halt_with_flatten_closes_open_positions_once() -> None:
    d = AccountDesk(LARGE_100K, CAL)
    d.on_recommendation(rec("AAPL", T0), T0 + timedelta(minutes=1))
    event = control("halt", T0 + timedelta(minutes=2), flatten=True)
    (flat,), _ = d.on_broker(event, T0 + timedelta(minutes=3))
    assert flat.intent == "exit" and exit_reason_of(flat) == "operator_flatten"
    assert d.state.book.get("AAPL") is None
    assert d.on_broker(event, T0 + timedelta(minutes=3)) == ([], [])  # a redelivery: nothing


def test_a_confidence_change_applies_from_its_time_and_the_backtest_agrees() -> None:
    lowered = control("set", T0 + timedelta(minutes=10), account="large-100k",
                      settings={"min_confidence": "0.5"})
    early, late = rec("AAPL", T0, 0.6), rec("MSFT", T0 + timedelta(minutes=10), 0.6)
    d = AccountDesk(LARGE_100K, CAL)
    before = d.on_recommendation(early, T0 + timedelta(minutes=1))
    d.on_broker(lowered, T0)
    after = d.on_recommendation(late, T0 + timedelta(minutes=11))
    assert before is not None and before.failure_reason == "confidence: confidence below minimum"
    assert after is not None and after.status == SIMULATED
    assert d.config.min_confidence == 0.5
    # tiny-1k is not named by the change
    tiny = AccountDesk(TINY_1K, CAL)
    tiny.on_broker(lowered, T0)
    assert tiny.config.min_confidence == TINY_1K.min_confidence


def test_backtester_applies_control_records_at_their_minute() -> None:
    bars = [Bar(s, T0 + timedelta(minutes=m), 100.0, 100.0, 100.0, 100.0, 1000)
            for m in range(3) for s in ("AAPL",)]
    bt = Backtester([LARGE_100K], CAL)
    bt.add_broker([control("halt", T0 + timedelta(minutes=1, seconds=30))])
    bt.run(bars)
    assert bt.desks[0].halted is not None and bt.desks[0].halted.at == T0 + timedelta(minutes=1, seconds=30)


def test_changes_are_validated_before_publication() -> None:
    accounts = {"large-100k": LARGE_100K}
    with pytest.raises(ValueError, match="unknown setting"):
        validate(control("set", T0, settings={"min_confidance": "0.5"}), accounts)
    with pytest.raises(ValueError, match="cannot change at runtime"):
        validate(control("set", T0, settings={"mode": '"alpaca-paper"'}), accounts)
    with pytest.raises(ValueError, match="unknown account"):
        validate(control("halt", T0, account="nope"), accounts)
    with pytest.raises(ValueError, match="must be positive"):
        validate(control("set", T0, settings={"max_bar_age_s": "-1"}), accounts)
    assert changed_config(LARGE_100K, {"exits.stop_loss_pct": "0.05", "manage_external": "exit"}).exits \
        .stop_loss_pct == 0.05
