"""The desk of an option account (simulate, recorded chains): a BUY buys the call the chain
chooses, a SELL the put, fills only at the limit on a quote whose ask reaches it, an unfilled limit
is canceled after cancel_after_minutes, and bad chains skip with the reason."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.records import ControlEvent, Execution, OptionQuote, Recommendation
from trading.accounts import AccountDesk, parse_accounts
from trading.calendar import TradingCalendar
from trading.execution import exit_id, exit_reason_of
from trading.gates import AccountConfig
from trading.option_chain import OptionsConfig, chain_id
from trading.signals import recommendation_id

NOW = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)  # 10:00 ET, a Monday
BAR = NOW - timedelta(minutes=1)
AS_OF = NOW - timedelta(seconds=30)
CAL = TradingCalendar()  # XNYS: days to expiry count real sessions
CID = chain_id("QCOM", AS_OF)
CALL = "QCOM260227C00150000"
OPTION = AccountConfig(name="opt", instrument="option", notional_per_trade=1_000.0,
                       options=OptionsConfig(limit="ask", min_open_interest=100))


def quote(contract: str, delta: float | None, bid: float | None = 4.0, ask: float | None = 4.2,
          oi: int | None = 500, as_of: datetime = AS_OF, cid: str | None = CID) -> OptionQuote:
    return OptionQuote(contract, "QCOM", as_of, bid, ask, 10.0, 10.0, None, 0.3, delta, 0.04, -0.05, 0.2,
                       "chain", as_of, open_interest=oi, penny_program=True, chain_id=cid,
                       chain_as_of=as_of if cid else None)


def chain(**changes: Any) -> list[OptionQuote]:
    """Calls and puts of 2026-02-27 (25 days out); the 150s are nearest |delta| 0.5, the 155 call
    next (0.31 and 0.74 are outside 0.5 +- 0.15)."""
    out = [
        quote("QCOM260227C00140000", 0.74), quote("QCOM260227C00150000", 0.52),
        quote("QCOM260227C00155000", 0.42), quote("QCOM260227C00160000", 0.31),
        quote("QCOM260227P00140000", -0.27),
        quote("QCOM260227P00150000", -0.49), quote("QCOM260227P00160000", -0.70),
    ]
    return [replace(q, **changes) for q in out]


def rec(action: str = "BUY", ts: datetime = BAR) -> Recommendation:
    return Recommendation(
        id=recommendation_id("v1", "QCOM", ts, action), symbol="QCOM", ts=ts, action=action,
        base_confidence=0.9, volume_multiplier=1.0, confidence=0.9, sentiment=None, reason="test",
        features={"close": 150.0}, strategy_version="v1",
    )


def desk(config: AccountConfig = OPTION, quotes: list[OptionQuote] | None = None, **kw: Any) -> AccountDesk:
    d = AccountDesk(replace(config, **kw), CAL)
    for q in chain() if quotes is None else quotes:
        assert d.on_broker(q, q.as_of) == ([], [])
    return d


def gate(e: Execution, name: str) -> Any:
    return next(g for g in e.gates if g.name == name)


# -- configuration ------------------------------------------------------------------------------


def test_the_options_block_is_parsed_and_an_option_account_without_one_gets_the_defaults() -> None:
    (a, b) = parse_accounts([
        {"name": "a", "instrument": "option", "options": {"min_dte": 3, "limit": "ask"}},
        {"name": "b", "base": "tiny-1k", "instrument": "option"},
    ])
    assert a.options == OptionsConfig(min_dte=3, limit="ask")
    assert b.options == OptionsConfig() and b.starting_cash == 1_000.0
    assert AccountConfig(name="s").instrument == "stock" and AccountConfig(name="s").options is None
    assert AccountConfig.from_dict(a.to_dict()) == a  # round-trips (as a base's defaults do)


@pytest.mark.parametrize(("raw", "message"), [
    ({"instrument": "future"}, "instrument 'future' is not one of ('stock', 'option')"),
    ({"instrument": "option", "options": {"min_dte": 9, "max_dte": 3}}, "options: min_dte 9 is above"),
    ({"instrument": "option", "options": {"delta": 0.5}}, "options: unknown fields ['delta']"),
    ({"instrument": "option", "options": [1]}, "options: expected an object"),
    ({"instrument": "option", "mode": "alpaca-paper"}, "instrument 'option' needs mode 'simulate'"),
    ({"instrument": "option", "broker_truth": True}, "instrument 'option' needs mode 'simulate'"),
])
def test_a_bad_options_configuration_is_refused_with_a_clear_error(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="account 'x'|account x") as err:
        parse_accounts([{"name": "x", **raw}])
    assert message in str(err.value)


# -- entries ------------------------------------------------------------------------------------


def test_a_buy_signal_buys_the_expected_call_at_its_limit() -> None:
    d = desk()
    e = d.on_recommendation(rec("BUY"), NOW)
    assert e is not None
    assert (e.status, e.symbol, e.action, e.qty, e.price) == ("SIMULATED", CALL, "BUY", 2.0, 4.2)
    assert e.failure_reason is None and e.intent == "entry"
    assert gate(e, "option_contract").value == "QCOM260227C00150000"
    names = [g.name for g in e.gates]
    assert names.index("submit_rate") < names.index("option_contract") < names.index("option_session_end")
    pos = d.state.book.get("QCOM260227C00150000")
    assert pos is not None and pos.status == "OPEN" and pos.side == 1
    assert d.state.book.exposure() == pytest.approx(2 * 4.2 * 100)  # premium x 100 per contract


def test_a_sell_signal_buys_the_expected_put_never_a_short() -> None:
    e = desk().on_recommendation(rec("SELL"), NOW)
    assert e is not None
    assert (e.status, e.symbol, e.action) == ("SIMULATED", "QCOM260227P00150000", "BUY")
    assert gate(e, "shorting").passed


def test_no_contract_passing_the_liquidity_gates_skips_with_the_reason() -> None:
    d = desk(quotes=chain(open_interest=20))
    e = d.on_recommendation(rec("BUY"), NOW)
    assert e is not None and e.status == "SKIPPED" and e.symbol == "QCOM" and e.qty is None
    assert e.failure_reason is not None
    assert e.failure_reason.startswith("option_contract: no call of QCOM passed (4 considered)")
    assert "QCOM260227C00150000: rejected: open interest 20 below 100" in e.failure_reason
    assert len(d.state.book) == 0


def test_without_a_chain_an_option_entry_skips() -> None:
    e = desk(quotes=[]).on_recommendation(rec("BUY"), NOW)
    assert e is not None and e.status == "SKIPPED"
    assert e.failure_reason == "option_contract: no option chain of QCOM on the topic yet"


def test_the_accounts_own_gates_still_apply() -> None:
    e = desk().on_recommendation(replace(rec("BUY"), confidence=0.1), NOW)
    assert e is not None and e.status == "SKIPPED"
    assert e.failure_reason == "confidence: confidence below minimum"


@pytest.mark.parametrize(("bad", "why"), [
    ({"delta": None}, "no delta (greeks missing)"),
    ({"bid": 0.0}, "zero bid"),
    ({"bid": 4.5, "ask": 4.2}, "crossed quote (bid 4.5 > ask 4.2)"),
])
def test_malformed_chain_data_skips_the_contract_with_a_reason(bad: dict[str, Any], why: str) -> None:
    quotes = [replace(q, **bad) if q.contract == "QCOM260227C00150000" else q for q in chain()]
    e = desk(quotes=quotes).on_recommendation(rec("BUY"), NOW)
    assert e is not None and e.status == "SIMULATED"
    assert e.symbol == "QCOM260227C00155000"  # the next nearest delta
    assert f"QCOM260227C00150000: rejected: {why}" in gate(e, "option_contract").reason


# -- resting limits -----------------------------------------------------------------------------


def mid_desk() -> tuple[AccountDesk, Execution]:
    d = desk(options=OptionsConfig(limit="mid", cancel_after_minutes=5))
    e = d.on_recommendation(rec("BUY"), NOW)
    assert e is not None
    return d, e


def test_a_limit_below_the_ask_rests_and_fills_at_the_limit_when_the_ask_reaches_it() -> None:
    d, e = mid_desk()
    assert (e.status, e.price, e.qty) == ("SUBMITTED", 4.1, 2.0)
    assert e.client_order_id is None  # a simulated order: nothing is sent
    assert d.state.book.get(e.symbol).status == "PENDING"  # type: ignore[union-attr]
    later = NOW + timedelta(minutes=2)
    assert d.on_broker(quote(e.symbol, 0.52, 4.0, 4.15, as_of=later, cid=None), later) == ([], [])
    fills, _ = d.on_broker(quote(e.symbol, 0.52, 4.0, 4.1, as_of=later, cid=None), later)
    got = [(f.recommendation_id, f.status, f.price, f.qty) for f in fills]
    assert got == [(e.recommendation_id, "SIMULATED", 4.1, 2.0)]
    assert d.state.book.get(e.symbol).status == "OPEN"  # type: ignore[union-attr]
    assert d.status_of(e.recommendation_id) == "SIMULATED"
    assert d.on_bar("QCOM", NOW + timedelta(minutes=9), 150.0, NOW + timedelta(minutes=10)) == ()


def test_an_unfilled_limit_is_canceled_after_cancel_after_minutes() -> None:
    d, e = mid_desk()
    assert d.on_bar("QCOM", NOW + timedelta(minutes=3), 150.0, NOW + timedelta(minutes=4)) == ()
    out = d.on_bar("QCOM", NOW + timedelta(minutes=4), 150.0, NOW + timedelta(minutes=5))
    assert [(c.recommendation_id, c.status, c.decided_at) for c in out] == [(e.recommendation_id, "FAILED",
                                                                            e.decided_at)]
    assert out[0].failure_reason == "canceled: limit 4.1 unfilled after 5 min"
    assert len(d.state.book) == 0 and d.status_of(e.recommendation_id) == "FAILED"
    late = NOW + timedelta(minutes=6)  # a quote after the cancel fills nothing
    assert d.on_broker(quote(e.symbol, 0.52, 4.0, 4.0, as_of=late, cid=None), late) == ([], [])


@pytest.mark.parametrize("bad", [{"bid": 0.0, "ask": 3.0}, {"bid": 4.2, "ask": 4.0}, {"ask": None},
                                 {"ask": float("nan")}])
def test_a_malformed_quote_never_fills_a_resting_order(bad: dict[str, Any]) -> None:
    d, e = mid_desk()
    later = NOW + timedelta(minutes=1)
    assert d.on_broker(replace(quote(e.symbol, 0.52, as_of=later, cid=None), **bad), later) == ([], [])
    assert d.status_of(e.recommendation_id) == "SUBMITTED"


def test_a_restarted_desk_rebuilds_the_resting_order_and_the_position() -> None:
    d, e = mid_desk()
    again = desk(options=OptionsConfig(limit="mid", cancel_after_minutes=5), quotes=[])
    again.rebuild([e])
    assert again.on_recommendation(rec("BUY"), NOW) is None  # decided already: no second order
    out = again.on_bar("QCOM", NOW + timedelta(minutes=4), 150.0, NOW + timedelta(minutes=5))
    assert [c.status for c in out] == ["FAILED"]
    filled = desk(options=OptionsConfig(limit="mid"), quotes=[])
    filled.rebuild([e, replace(e, status="SIMULATED")])
    assert filled.state.book.get(e.symbol).status == "OPEN"  # type: ignore[union-attr]
    assert filled.on_bar("QCOM", NOW + timedelta(minutes=9), 150.0, NOW + timedelta(minutes=10)) == ()


# -- exits --------------------------------------------------------------------------------------


def held() -> tuple[AccountDesk, Execution]:
    d = desk()
    e = d.on_recommendation(rec("BUY"), NOW)
    assert e is not None and e.status == "SIMULATED" and e.price == 4.2
    return d, e


def later_quote(minutes: float, bid: float, ask: float, contract: str = CALL) -> tuple[OptionQuote, datetime]:
    at = NOW + timedelta(minutes=minutes)
    return quote(contract, 0.5, bid, ask, as_of=at, cid=None), at


@pytest.mark.parametrize(("bid", "ask", "reason", "pnl"), [
    (1.9, 2.1, "stop_loss", (1.9 - 4.2) * 2 * 100),  # mid 2.0 <= 4.2 x (1 - 50%)
    (8.4, 8.6, "take_profit", (8.4 - 4.2) * 2 * 100),  # mid 8.5 >= 4.2 x (1 + 100%)
])
def test_an_option_exits_on_its_premium_at_the_quotes_bid(bid: float, ask: float, reason: str,
                                                          pnl: float) -> None:
    d, e = held()
    q, at = later_quote(3, 3.0, 3.2)
    assert d.on_broker(q, at) == ([], [])  # inside both rules
    q, at = later_quote(4, bid, ask)
    out, _ = d.on_broker(q, at)
    assert [(x.symbol, x.action, x.intent, x.status, x.qty, x.price) for x in out] == [
        (CALL, "SELL", "exit", "SIMULATED", 2.0, bid)]
    assert out[0].recommendation_id == exit_id("opt", e.recommendation_id, 0)
    assert exit_reason_of(out[0]) == reason
    assert len(d.state.book) == 0
    assert d.state.realized_total == pytest.approx(pnl)  # x 100 per contract


def test_an_option_closes_before_expiry_on_a_bar_at_the_bid_of_a_fresh_quote() -> None:
    d, e = held()
    day = datetime(2026, 2, 25, 15, 0, tzinfo=UTC)  # Wed: 26 and 27 left, close at 1 day
    q = quote(CALL, 0.5, 4.0, 4.3, as_of=day, cid=None)
    assert d.on_broker(q, day) == ([], [])
    eve = datetime(2026, 2, 26, 15, 0, tzinfo=UTC)  # Thu: one trading day to the Friday expiry
    assert d.on_bar("QCOM", eve - timedelta(minutes=1), 150.0, eve) == ()  # the quote is stale by then
    q = quote(CALL, 0.5, 3.9, 4.3, as_of=eve, cid=None)
    out, _ = d.on_broker(q, eve)
    assert [(x.action, x.price, exit_reason_of(x)) for x in out] == [("SELL", 3.9, "option_expiry")]
    assert out[0].gates[-1].reason.startswith("1 trading day(s) to expiry 2026-02-27, close at 1")


def test_a_sell_signal_on_a_held_call_is_a_reversal_exit_of_that_call() -> None:
    d, e = held()
    q, at = later_quote(2, 4.4, 4.6)
    d.on_broker(q, at)
    sell = rec("SELL", NOW + timedelta(minutes=2))
    out = d.on_recommendation(sell, at + timedelta(minutes=1))
    assert out is not None
    assert (out.recommendation_id, out.symbol, out.action, out.intent, out.price) == (sell.id, CALL, "SELL",
                                                                                  "exit", 4.4)
    assert exit_reason_of(out) == "reversal" and len(d.state.book) == 0
    buy = d.on_recommendation(rec("BUY", NOW + timedelta(minutes=3)), at + timedelta(minutes=2))
    assert buy is not None and buy.failure_reason is None  # flat again: an entry may follow


def test_a_buy_signal_on_a_held_call_is_refused_and_without_a_quote_a_reversal_skips() -> None:
    d, e = held()
    again = d.on_recommendation(rec("BUY", NOW + timedelta(minutes=1)), NOW + timedelta(minutes=2))
    assert again is not None and again.status == "SKIPPED"
    assert again.failure_reason == "already_held: an option of QCOM already held"
    late = NOW + timedelta(minutes=30)  # the entry's quote is 30 min old: no price to sell at
    out = d.on_recommendation(rec("SELL", late - timedelta(minutes=1)), late)
    assert out is not None and (out.status, out.intent, out.price) == ("SKIPPED", "exit", None)
    assert out.failure_reason == f"reversal: {CALL} no fresh quote to sell at"
    assert d.state.book.get(CALL) is not None


def test_the_underlyings_bars_never_exit_an_option_at_its_close() -> None:
    d, _ = held()
    flat = datetime(2026, 2, 2, 20, 50, tzinfo=UTC)  # after the stock flatten time
    assert d.on_bar("QCOM", flat - timedelta(minutes=1), 10.0, flat) == ()
    assert d.state.book.get(CALL) is not None


def test_a_desk_rebuilt_from_executions_and_the_quotes_topic_decides_as_the_one_that_ran_on() -> None:
    d, e = held()
    q, at = later_quote(2, 4.4, 4.6)
    d.on_broker(q, at)
    history = [*chain(), q]
    again = AccountDesk(OPTION, CAL)
    again.rebuild([e])
    assert again.rebuild_quotes(reversed(history)) == len(history)  # any order: folded canonically
    sell = rec("SELL", NOW + timedelta(minutes=2))
    when = at + timedelta(minutes=1)
    assert again.on_recommendation(sell, when) == d.on_recommendation(sell, when)
    assert len(again.state.book) == 0 and again.state.realized_total == d.state.realized_total != 0
    fresh = AccountDesk(OPTION, CAL)
    fresh.rebuild_quotes(chain())
    assert fresh.on_recommendation(rec("BUY"), NOW) == e  # the chain came back: the same contract


@pytest.mark.parametrize(("halt_after", "sold"), [(3, True), (20, False)])
def test_halt_flatten_sells_an_option_at_a_fresh_bid_only(halt_after: int, sold: bool) -> None:
    d, _ = held()
    q, at = later_quote(2, 3.9, 4.1)
    d.on_broker(q, at)
    halt_at = NOW + timedelta(minutes=halt_after)  # after 20 min no quote is fresher than 300 s
    out = d.on_control(ControlEvent("halt-1", "opt", "halt", halt_at, "test", flatten=True), halt_at)
    if sold:
        assert [(x.action, x.price, exit_reason_of(x)) for x in out] == [("SELL", 3.9, "operator_flatten")]
        assert len(d.state.book) == 0
    else:
        assert out == [] and d.state.book.get(CALL) is not None
    assert d.halted is not None
