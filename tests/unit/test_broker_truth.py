"""The desk on the broker's truth: gates read the snapshot, differences are adopted (never ordered),
and external positions are watched or exited by their own rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.records import BrokerAccount, BrokerOrder, BrokerPosition, OptionQuote, Recommendation
from trading.accounts import AccountDesk, with_status
from trading.broker import BrokerView, broker_key, event_minute
from trading.calendar import TradingCalendar
from trading.execution import FAILED, FILLED, SKIPPED, SUBMITTED, exit_reason_of
from trading.gates import LARGE_100K
from trading.ordering import canonical_key
from trading.reconcile import ADJUST, EXTERNAL_EXIT, rebuild_view
from trading.signals import recommendation_id

CAL = TradingCalendar()
T0 = datetime(2026, 2, 3, 15, 0, tzinfo=UTC)  # Tuesday 10:00 New York
QCOM_CALL = "QCOM260206C00150000"  # expires Friday 2026-02-06


def desk(**kw: Any) -> AccountDesk:
    return AccountDesk(replace(LARGE_100K, mode="alpaca-paper", **kw), CAL)


def rec(symbol: str = "AAPL", action: str = "BUY", ts: datetime = T0, close: float = 100.0) -> Recommendation:
    return Recommendation(recommendation_id("v1", symbol, ts, action), symbol, ts, action, 0.8, 1.0, 0.8,
                          None, "test", {"close": close}, "v1")


def account(as_of: datetime, *, cash: float = 100_000.0, bp: float = 200_000.0, orders: Any = (),
            status: str = "ACTIVE", blocked: bool = False) -> BrokerAccount:
    return BrokerAccount("large-100k", as_of, status, "USD", cash, bp, bp / 2, cash, cash, 0.0, 0.0, 2, blocked,
                         list(orders), "poll")


def position(symbol: str, qty: float, as_of: datetime, *, avg: float = 100.0, price: float | None = None,
             origin: str = "external", asset_class: str = "us_equity") -> BrokerPosition:
    price = avg if price is None else price
    mult = 100.0 if asset_class == "us_option" else 1.0
    return BrokerPosition("large-100k", symbol, as_of, asset_class, qty, avg, qty * price * mult,
                          qty * avg * mult, qty * (price - avg) * mult, (price - avg) / avg, price, origin,
                          multiplier=mult)


def gate(e: Any, name: str) -> Any:
    return next(g for g in e.gates if g.name == name)


def test_entries_fail_closed_without_a_fresh_snapshot_and_name_the_reason() -> None:
    d = desk()
    r = rec()
    e = d.on_recommendation(r, T0 + timedelta(minutes=1))
    assert e is not None and e.status == SKIPPED
    assert e.failure_reason == "broker_state: no broker snapshot yet"
    d2 = desk()
    d2.on_broker(account(T0 - timedelta(seconds=100)), T0)
    e2 = d2.on_recommendation(r, T0 + timedelta(minutes=1))
    assert e2 is not None and e2.status == SKIPPED
    assert gate(e2, "broker_state").value == 160.0
    assert e2.failure_reason == "broker_state: stale broker state: last snapshot 160s old"
    d3 = desk()
    d3.on_broker(account(T0 + timedelta(seconds=30)), T0)
    e3 = d3.on_recommendation(r, T0 + timedelta(minutes=1))
    assert e3 is not None and e3.status == SUBMITTED and gate(e3, "broker_state").passed
    blocked = desk()
    blocked.on_broker(account(T0 + timedelta(seconds=30), blocked=True), T0)
    e4 = blocked.on_recommendation(r, T0 + timedelta(minutes=1))
    assert e4 is not None and e4.failure_reason == "broker_state: account ACTIVE (trading blocked)"


def test_gates_read_the_brokers_positions_and_buying_power() -> None:
    now = T0 + timedelta(minutes=1)
    d = desk(max_open_positions=2)
    d.on_broker(account(T0 + timedelta(seconds=10), bp=3_000.0), T0)
    e = d.on_recommendation(rec(), now)
    assert e is not None and e.status == SKIPPED and e.failure_reason is not None
    assert e.failure_reason.startswith("buying_power")
    assert gate(e, "buying_power").limit == 3_000.0
    d = desk(max_open_positions=2)
    d.on_broker(account(T0 + timedelta(seconds=10)), T0)
    d.on_broker(position("AAPL", 10, T0 + timedelta(seconds=10)), T0)
    e = d.on_recommendation(rec(), now)
    assert e is not None and e.failure_reason == "already_held: AAPL already held"
    assert gate(e, "already_held").value == "10 held at the broker (external)"
    d.on_broker(position("MSFT", 5, T0 + timedelta(seconds=10)), T0)
    e = d.on_recommendation(rec("NVDA"), now)
    assert e is not None and e.failure_reason is not None and e.failure_reason.startswith("open_positions")
    assert gate(e, "open_positions").value == 2.0


def test_in_flight_entries_reduce_buying_power_until_a_later_snapshot() -> None:
    d = desk(notional_per_trade=5_000.0)
    d.on_broker(account(T0 + timedelta(seconds=10), bp=8_000.0), T0)
    first = d.on_recommendation(rec("AAPL"), T0 + timedelta(minutes=1))
    assert first is not None and first.status == SUBMITTED
    second = d.on_recommendation(rec("MSFT", ts=T0 + timedelta(minutes=1)), T0 + timedelta(minutes=2))
    assert second is not None and second.status == SKIPPED
    assert gate(second, "buying_power").limit == 3_000.0  # 8000 less the 5000 in flight
    # a snapshot taken after the first order: its buying power already has it
    d.on_broker(account(T0 + timedelta(minutes=2, seconds=30), bp=8_000.0), T0)
    third = d.on_recommendation(rec("NVDA", ts=T0 + timedelta(minutes=2)), T0 + timedelta(minutes=3))
    assert third is not None and gate(third, "buying_power").limit == 8_000.0


def _open_position(d: AccountDesk) -> Any:
    d.on_broker(account(T0 + timedelta(seconds=10)), T0)
    e = d.on_recommendation(rec(), T0 + timedelta(minutes=1))
    assert e is not None and e.status == SUBMITTED
    d.apply(with_status(e, FILLED, broker_order_id="b-1", qty=e.qty, price=100.0))
    return e


def test_a_manual_sale_at_the_broker_is_adopted_as_a_recorded_exit_never_an_order() -> None:
    d = desk()
    entry = _open_position(d)
    execs, events = d.on_broker(position("AAPL", 0, T0 + timedelta(minutes=5), price=97.0, origin="pipeline"),
                                T0 + timedelta(minutes=5))
    assert [ev.kind for ev in events] == ["closed_at_broker"] and events[0].action == "adopted"
    (close,) = execs
    assert close.status == FILLED and close.client_order_id is None and close.intent == "exit"
    assert close.qty == entry.qty and close.price == 97.0 and exit_reason_of(close) == "closed_at_broker"
    assert d.state.book.get("AAPL") is None
    assert d.state.realized_today == (97.0 - 100.0) * entry.qty
    # the same record again (a redelivery) changes nothing
    assert d.on_broker(position("AAPL", 0, T0 + timedelta(minutes=5), origin="pipeline"), T0) == ([], [])


def test_a_missed_fill_and_a_quantity_difference_are_adopted() -> None:
    d = desk()
    d.on_broker(account(T0 + timedelta(seconds=10)), T0)
    e = d.on_recommendation(rec(), T0 + timedelta(minutes=1))
    assert e is not None and e.status == SUBMITTED and e.qty is not None
    execs, events = d.on_broker(position("AAPL", e.qty, T0 + timedelta(minutes=2), avg=100.5,
                                         origin="pipeline"), T0 + timedelta(minutes=2))
    assert [ev.kind for ev in events] == ["missed_fill"]
    assert execs[0].recommendation_id == e.recommendation_id and execs[0].status == FILLED
    pos = d.state.book.get("AAPL")
    assert pos is not None and pos.status == "OPEN" and pos.avg_price == 100.5
    execs, events = d.on_broker(position("AAPL", 20, T0 + timedelta(minutes=3), avg=99.0, origin="pipeline"),
                                T0 + timedelta(minutes=3))
    assert [ev.kind for ev in events] == ["quantity"] and execs[0].intent == ADJUST
    assert pos.qty == 20 and pos.avg_price == 99.0 and execs[0].client_order_id is None


def test_cash_drift_and_unknown_orders_are_reported_once() -> None:
    d = desk()
    _open_position(d)  # bought 50 @ 100: the desk expects cash 100000 - 5000
    order = BrokerOrder("o-9", "manual-1", "TSLA", "us_equity", "buy", 1.0, 0.0, "limit", "simple", "new", 200.0)
    _, events = d.on_broker(account(T0 + timedelta(minutes=2), cash=94_000.0, orders=[order]), T0)
    kinds = {ev.kind: ev for ev in events}
    assert set(kinds) == {"cash_drift", "unknown_order"}
    assert "-1000.00" in kinds["cash_drift"].detail
    _, again = d.on_broker(account(T0 + timedelta(minutes=3), cash=94_000.0, orders=[order]), T0)
    assert again == []


def test_external_call_is_watched_by_default_and_exited_at_its_stop_when_asked() -> None:
    now = T0 + timedelta(minutes=1)
    watched = desk()
    watched.on_broker(account(T0), T0)
    call = position(QCOM_CALL, 2, T0 + timedelta(seconds=5), avg=3.0, price=1.2, asset_class="us_option")
    execs, events = watched.on_broker(call, now)
    assert execs == [] and events[0].kind == "unknown_position" and events[0].action == "watching"
    d = desk(manage_external="exit", option_close_days_before_expiry=0)
    d.on_broker(account(T0), T0)
    execs, events = d.on_broker(call, now)  # -60% <= -50%
    (exit_,) = execs
    assert exit_.intent == EXTERNAL_EXIT and exit_.status == SUBMITTED and exit_.action == "SELL"
    assert exit_.qty == 2 and exit_.client_order_id is not None and exit_reason_of(exit_) == "stop_loss"
    # the next snapshot while the exit is in flight: no second order
    assert d.on_broker(replace(call, as_of=T0 + timedelta(seconds=35)), now)[0] == []
    # it failed (broker unreachable): the next snapshot retries under a new id
    d.apply(with_status(exit_, FAILED, failure_reason="unreachable"))
    retry, _ = d.on_broker(replace(call, as_of=T0 + timedelta(seconds=65)), now)
    assert len(retry) == 1 and retry[0].recommendation_id != exit_.recommendation_id


def test_an_option_one_trading_day_before_expiry_is_closed_and_quotes_mark_it() -> None:
    d = desk(manage_external="exit")
    thursday = datetime(2026, 2, 5, 15, 0, tzinfo=UTC)
    d.on_broker(account(thursday - timedelta(days=2)), thursday)
    flat = position(QCOM_CALL, 1, thursday - timedelta(days=2), avg=3.0, price=3.1, asset_class="us_option")
    assert d.on_broker(flat, thursday - timedelta(days=2))[0] == []  # Tuesday: 3 sessions left
    # a quote at +120% on Tuesday: take profit, from the quote's mid rather than the stale mark
    quote = OptionQuote(QCOM_CALL, "QCOM", thursday - timedelta(days=2, seconds=-30), 6.5, 6.7, 1, 1, None,
                        None, None, None, None, None, "quote", thursday)
    (tp,), _ = d.on_option_quote(quote, thursday - timedelta(days=2, seconds=-30))
    assert exit_reason_of(tp) == "take_profit"
    d2 = desk(manage_external="exit")
    d2.on_broker(account(thursday), thursday)
    (exp,), _ = d2.on_broker(replace(flat, as_of=thursday), thursday)
    assert exit_reason_of(exp) == "option_expiry"


def test_unknown_asset_class_and_unparseable_symbols_are_kept_without_a_crash() -> None:
    d = desk(manage_external="exit")
    d.on_broker(account(T0), T0)
    odd = replace(position("XYZ!!", 3, T0, price=50.0), asset_class="us_future")
    _, events = d.on_broker(odd, T0)
    assert events[0].kind == "unknown_position" and d.broker.held("XYZ!!") is not None
    bad_option = position("QCOM99", 1, T0, asset_class="us_option", price=0.1, avg=3.0)
    execs, _ = d.on_broker(bad_option, T0)
    assert exit_reason_of(execs[0]) == "stop_loss"  # the P&L rule still applies; expiry unknown


def test_broker_records_order_before_the_bars_whose_decisions_they_precede() -> None:
    m = datetime(2026, 2, 3, 15, 4, tzinfo=UTC)
    assert event_minute(m) == m - timedelta(minutes=1)  # taken at 15:04:00: before bar 15:03's decisions
    assert event_minute(m + timedelta(seconds=20)) == m
    snap = account(m + timedelta(seconds=20))
    bar_key = canonical_key(rec(ts=m))
    assert broker_key(snap) < bar_key < broker_key(account(m + timedelta(minutes=1, seconds=1)))


def test_a_rebuilt_view_keeps_the_latest_record_per_key() -> None:
    view = BrokerView()
    older = position("AAPL", 5, T0)
    newer = position("AAPL", 0, T0 + timedelta(minutes=1))
    assert rebuild_view(view, [newer, older, account(T0)]) == 3  # folded in as_of order
    assert view.held("AAPL") is None and view.account is not None
