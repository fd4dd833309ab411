"""Position rules: fills, P&L, stop-loss, take-profit, trailing stop, end of session, reversal."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trading.positions import EXITING, OPEN, PENDING, ExitRules, PositionBook, position_record

T0 = datetime(2024, 3, 12, 14, 0, tzinfo=UTC)
RULES = ExitRules(stop_loss_pct=0.02, take_profit_pct=0.04, trailing_stop_pct=0.015,
                  trailing_activation_pct=0.015)


def book_with(action: str = "BUY", price: float = 100.0, qty: float = 10.0) -> PositionBook:
    book = PositionBook(RULES)
    book.open("AAPL", action, qty, price, T0, "entry-1")
    return book


@pytest.mark.parametrize(("action", "closes", "reason"), [
    ("BUY", [99.0, 98.5], None),
    ("BUY", [98.0], "stop_loss"),
    ("BUY", [97.0], "stop_loss"),
    ("BUY", [103.9], None),
    ("BUY", [104.0], "take_profit"),
    ("BUY", [101.4, 100.0], None),  # never armed (+1.4% < +1.5%)
    ("BUY", [101.5, 100.0], None),  # armed at 101.5; trail 99.9775 not crossed yet
    ("BUY", [101.5, 99.97], "trailing_stop"),
    ("BUY", [103.0, 101.5], None),  # trail at 103 * 0.985 = 101.455
    ("BUY", [103.0, 101.45], "trailing_stop"),
    ("SELL", [102.0], "stop_loss"),
    ("SELL", [96.0], "take_profit"),
    ("SELL", [98.5, 100.0], "trailing_stop"),
    ("SELL", [98.5, 99.9], None),
])
def test_exit_rules(action: str, closes: list[float], reason: str | None) -> None:
    book = book_with(action)
    got = None
    for c in closes:
        got = book.check_bar("AAPL", c)
        if got is not None:
            break
    assert got == reason


def test_stop_has_precedence_over_end_of_session() -> None:
    book = book_with()
    assert book.check_bar("AAPL", 97.0, flatten=True) == "stop_loss"
    assert book_with().check_bar("AAPL", 100.0, flatten=True) == "end_of_session"
    assert PositionBook(ExitRules(flat_at_close=False)).check_bar("AAPL", 100.0, flatten=True) is None


def test_no_trailing_when_disabled() -> None:
    book = PositionBook(ExitRules(trailing_stop_pct=None))
    book.open("AAPL", "BUY", 1, 100.0, T0, "e")
    assert book.check_bar("AAPL", 103.0) is None
    assert book.check_bar("AAPL", 99.0) is None


def test_pending_and_exiting_positions_are_not_checked() -> None:
    book = PositionBook(RULES)
    book.open("AAPL", "BUY", 10, 100.0, T0, "e", pending=True)
    assert book.get("AAPL").status == PENDING  # type: ignore[union-attr]
    assert book.check_bar("AAPL", 90.0) is None
    book.fill_entry("AAPL", 10, 101.0)
    pos = book.get("AAPL")
    assert pos is not None and pos.status == OPEN and pos.avg_price == 101.0
    assert pos.stop == pytest.approx(98.98) and pos.target == pytest.approx(105.04)
    assert book.begin_exit("AAPL") is pos and pos.status == EXITING
    assert book.check_bar("AAPL", 50.0) is None
    assert book.begin_exit("AAPL") is None  # no second exit
    book.abort_exit("AAPL")
    assert pos.status == OPEN and pos.exit_attempts == 1


def test_cancel_entry_only_removes_pending() -> None:
    book = book_with()
    book.cancel_entry("AAPL")
    assert book.get("AAPL") is not None
    book.open("MSFT", "BUY", 1, 10.0, T0, "e2", pending=True)
    book.cancel_entry("MSFT")
    assert book.get("MSFT") is None


@pytest.mark.parametrize(("action", "exit_price", "pnl"), [
    ("BUY", 105.0, 50.0), ("BUY", 95.0, -50.0), ("SELL", 95.0, 50.0), ("SELL", 105.0, -50.0),
])
def test_close_realizes_pnl(action: str, exit_price: float, pnl: float) -> None:
    book = book_with(action)
    assert book.close("AAPL", 10, exit_price) == pytest.approx(pnl)
    assert book.get("AAPL") is None and book.count() == 0


def test_partial_close_keeps_the_rest_open() -> None:
    book = book_with()
    book.begin_exit("AAPL")
    assert book.close("AAPL", 4, 110.0) == pytest.approx(40.0)
    pos = book.get("AAPL")
    assert pos is not None and pos.qty == 6 and pos.status == OPEN
    assert book.close("AAPL", 100, 100.0) == 0.0  # the rest, at cost
    assert book.get("AAPL") is None
    assert book.close("NOPE", 1, 1.0) == 0.0


def test_reversal() -> None:
    long_book = book_with("BUY")
    assert long_book.reverses("AAPL", "SELL") is not None
    assert long_book.reverses("AAPL", "BUY") is None
    assert long_book.reverses("MSFT", "SELL") is None
    short_book = book_with("SELL")
    assert short_book.reverses("AAPL", "BUY") is not None
    off = PositionBook(ExitRules(exit_on_reversal=False))
    off.open("AAPL", "BUY", 1, 1.0, T0, "e")
    assert off.reverses("AAPL", "SELL") is None


def test_exposure_and_one_position_per_symbol() -> None:
    book = book_with(qty=10, price=100.0)
    book.open("MSFT", "SELL", 2, 50.0, T0, "e2", pending=True)
    assert book.exposure() == pytest.approx(1100.0)
    assert len(book) == 2
    with pytest.raises(ValueError):
        book.open("AAPL", "BUY", 1, 1.0, T0, "e3")


def test_state_round_trip_mid_stream() -> None:
    a = book_with()
    a.check_bar("AAPL", 101.7)
    a.open("MSFT", "SELL", 3, 400.0, T0, "e2", pending=True)
    b = PositionBook.from_state(a.to_state(), RULES)
    assert b.to_state() == a.to_state()
    for c in (101.0, 100.1, 99.0):
        assert a.check_bar("AAPL", c) == b.check_bar("AAPL", c)


def test_position_record() -> None:
    book = book_with("SELL", qty=3)
    pos = book.get("AAPL")
    assert pos is not None
    rec = position_record("large-100k", pos, T0)
    assert rec.qty == -3 and rec.status == "OPEN" and rec.key() == "large-100k:AAPL"
    assert rec.stop == pytest.approx(102.0) and rec.target == pytest.approx(96.0)
    closed = position_record("large-100k", pos, T0, realized_pnl=5.0, closed=True, exit_reason="stop_loss")
    assert closed.qty == 0.0 and closed.status == "CLOSED" and closed.exit_reason == "stop_loss"
    assert closed.stop is None


@pytest.mark.parametrize("bad", [{"stop_loss_pct": 0.0}, {"take_profit_pct": -1.0},
                                 {"trailing_stop_pct": 1.5}])
def test_rules_validation(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ExitRules(**bad)  # type: ignore[arg-type]


# -- the projection the position agent publishes --------------------------------------------------

from dataclasses import replace as _replace  # noqa: E402
from datetime import timedelta  # noqa: E402

from schemas.records import Execution  # noqa: E402
from trading.execution import exit_gate, exit_id  # noqa: E402
from trading.positions import PositionProjection  # noqa: E402


def _exec(rid: str, action: str, intent: str, status: str, minute: int, price: float | None,
          qty: float = 10.0, symbol: str = "AAPL") -> Execution:
    gates = [exit_gate("stop_loss", "test")] if intent == "exit" else []
    return Execution(recommendation_id=rid, account="acct", symbol=symbol, action=action, status=status,
                     gates=gates, failure_reason=None, qty=qty, price=price,
                     bar_used_ts=T0 + timedelta(minutes=minute), broker_order_id=None, client_order_id=None,
                     mode="simulate", decided_at=T0 + timedelta(minutes=minute, seconds=1), intent=intent)


ENTRY = _exec("e1", "BUY", "entry", "SIMULATED", 0, 100.0)
EXIT = _exec(exit_id("acct", "e1"), "SELL", "exit", "SIMULATED", 5, 98.0)  # a rule exit names its entry


def test_projection_open_then_closed() -> None:
    p = PositionProjection({"acct": RULES})
    opened = p.apply(ENTRY)
    assert opened is not None and opened.status == "OPEN" and opened.qty == 10.0
    assert opened.stop == pytest.approx(98.0) and opened.updated_at == ENTRY.decided_at
    closed = p.apply(EXIT)
    assert closed is not None and closed.status == "CLOSED" and closed.qty == 0.0
    assert closed.realized_pnl == pytest.approx(-20.0) and closed.exit_reason == "stop_loss"
    assert p.apply(ENTRY) == closed  # a redelivery re-emits the current record
    assert p.open_positions() == []


def test_projection_out_of_order() -> None:
    p = PositionProjection({"acct": RULES})
    assert p.apply(EXIT) is None  # its entry is still on its way
    closed = p.apply(ENTRY)
    assert closed is not None and closed.status == "CLOSED"
    assert closed.realized_pnl == pytest.approx(-20.0)


def test_projection_submitted_then_filled_and_skipped_ignored() -> None:
    p = PositionProjection()
    sub = _replace(ENTRY, status="SUBMITTED", mode="alpaca-paper")
    assert p.apply(sub) is None
    assert p.apply(_exec("s1", "BUY", "entry", "SKIPPED", 1, None)) is None
    filled = p.apply(_replace(sub, status="FILLED", price=101.0))
    assert filled is not None and filled.avg_price == 101.0 and filled.status == "OPEN"
    assert p.apply(sub) == filled  # a late SUBMITTED does not undo the fill
    assert p.apply(_replace(EXIT, status="FAILED", mode="alpaca-paper")) == filled


def test_projection_an_exit_arriving_before_an_earlier_exit_closes_its_own_entry() -> None:
    """Two round trips of one symbol, keyed apart: the second exit arrives first, then the first
    entry. The second exit names the second entry, so it must not close the first one."""
    entry1, entry2 = ENTRY, _exec("e2", "BUY", "entry", "SIMULATED", 10, 100.0)
    exit1 = EXIT  # 98: -20
    exit2 = _exec(exit_id("acct", "e2"), "SELL", "exit", "SIMULATED", 15, 104.0)  # +40
    p = PositionProjection({"acct": RULES})
    assert p.apply(exit2) is None
    opened = p.apply(entry1)
    assert opened is not None and opened.status == "OPEN" and opened.qty == 10.0  # not closed by exit2
    first = p.apply(exit1)
    assert first is not None and first.status == "CLOSED" and first.realized_pnl == pytest.approx(-20.0)
    second = p.apply(entry2)
    assert second is not None and second.status == "CLOSED" and second.realized_pnl == pytest.approx(40.0)
    assert p.open_positions() == []
    assert p.apply(exit2) == second and p.apply(entry1) == second  # redeliveries: all settled


def test_projection_a_reversal_names_no_entry_and_closes_what_is_open() -> None:
    reversal = _replace(_exec("sig-9", "SELL", "exit", "SIMULATED", 5, 98.0),
                        gates=[exit_gate("reversal", "SELL signal sig-9 reverses the position")])
    p = PositionProjection({"acct": RULES})
    p.apply(ENTRY)
    closed = p.apply(reversal)
    assert closed is not None and closed.status == "CLOSED" and closed.exit_reason == "reversal"
