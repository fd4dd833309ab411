"""AccountDesk.rebuild restores the closes exits were decided at, so a flatten at the close after a
restart prices an idle held symbol as the uninterrupted desk does."""

from __future__ import annotations

from datetime import timedelta

from tests.property.test_trading_property import T0, _desk, _rec
from trading.accounts import AccountDesk, with_status


def _history() -> tuple[AccountDesk, list]:
    """MSFT bought and filled at 90; at 94 its take-profit is sent and rejected: still held."""
    desk = _desk("alpaca-paper")
    ts = T0 + timedelta(minutes=4)
    entry = desk.on_recommendation(_rec("MSFT", "BUY", ts, 1.0, 90.0), ts + timedelta(minutes=1))
    assert entry is not None and entry.status == "SUBMITTED"
    filled = with_status(entry, "FILLED", price=90.0, broker_order_id="b1")
    desk.apply(filled)
    bar = T0 + timedelta(minutes=5)
    (exit_,) = desk.on_bar("MSFT", bar, 94.0, bar + timedelta(minutes=1))
    assert exit_.intent == "exit" and exit_.status == "SUBMITTED" and exit_.price == 94.0
    failed = with_status(exit_, "FAILED", failure_reason="rejected")
    desk.apply(failed)
    return desk, [entry, filled, exit_, failed]


def test_rebuild_restores_the_close_a_failed_exit_was_decided_at() -> None:
    live, history = _history()
    rebuilt = _desk("alpaca-paper")
    rebuilt.rebuild(history)
    assert rebuilt._marks == live._marks == {"MSFT": 94.0}
    # the flatten before the close, triggered by another symbol's bar: MSFT had no bar since
    flat = T0 + timedelta(minutes=374)
    a = live.on_bar("AAPL", flat, 100.0, flat + timedelta(minutes=1))
    b = rebuilt.on_bar("AAPL", flat, 100.0, flat + timedelta(minutes=1))
    assert [(e.symbol, e.price) for e in a] == [("MSFT", 94.0)]
    assert b == a


def test_rebuild_drops_the_close_of_a_position_an_exit_closed() -> None:
    _, history = _history()
    closed = with_status(history[2], "FILLED", price=94.1, broker_order_id="b2")
    rebuilt = _desk("alpaca-paper")
    rebuilt.rebuild([*history[:3], closed])
    assert rebuilt.state.book.get("MSFT") is None and rebuilt._marks == {}
