"""Fills, sizing, order ids, and the account desk: one decision per (recommendation, account)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.records import Execution, Recommendation
from trading.accounts import AccountDesk, load_accounts, parse_accounts, with_status
from trading.calendar import TradingCalendar
from trading.execution import client_order_id, entry_qty, exit_id, exit_reason_of, simulated_price
from trading.gates import DEFAULT_ACCOUNTS, LARGE_100K, TINY_1K, AccountConfig
from trading.signals import recommendation_id

CAL = TradingCalendar()
T0 = datetime(2024, 3, 12, 14, 0, tzinfo=UTC)  # 10:00 New York


def rec(symbol: str = "AAPL", action: str = "BUY", ts: datetime = T0, confidence: float = 0.8,
        close: float = 100.0) -> Recommendation:
    return Recommendation(
        id=recommendation_id("v1", symbol, ts, action), symbol=symbol, ts=ts, action=action,
        base_confidence=confidence, volume_multiplier=1.0, confidence=confidence, sentiment=None,
        reason="test", features={"close": close}, strategy_version="v1",
    )


def desk(config: AccountConfig = LARGE_100K, **kw: Any) -> AccountDesk:
    return AccountDesk(replace(config, **kw), CAL)


def at(r: Recommendation) -> datetime:
    return r.ts + timedelta(minutes=1)


# -- pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "close", "bps", "price"), [
    ("BUY", 100.0, 5.0, 100.05), ("SELL", 100.0, 5.0, 99.95), ("BUY", 100.0, 0.0, 100.0),
    ("SELL", 50.0, 100.0, 49.5),
])
def test_simulated_price(action: str, close: float, bps: float, price: float) -> None:
    assert simulated_price(action, close, bps) == pytest.approx(price)


@pytest.mark.parametrize(("notional", "price", "fractional", "qty"), [
    (5_000.0, 100.0, False, 50.0), (5_000.0, 333.0, False, 15.0), (250.0, 500.0, False, 1.0),
    (250.0, 500.0, True, 0.5), (250.0, 3.0, True, 83.333333), (100.0, 0.0, False, 0.0),
    (100.0, float("nan"), True, 0.0),
])
def test_entry_qty(notional: float, price: float, fractional: bool, qty: float) -> None:
    assert entry_qty(notional, price, fractional=fractional) == qty


def test_order_ids_are_deterministic() -> None:
    a = client_order_id("large-100k", "r1")
    assert a == client_order_id("large-100k", "r1")
    assert a != client_order_id("tiny-1k", "r1") and a != client_order_id("large-100k", "r2")
    assert len(a) <= 128 and uuid.UUID(a).version == 5
    assert exit_id("a", "e", 0) == exit_id("a", "e", 0) != exit_id("a", "e", 1)


# -- account configuration ----------------------------------------------------------------------


def test_load_accounts_defaults_json_and_toml(tmp_path: Any) -> None:
    assert load_accounts(None) == DEFAULT_ACCOUNTS
    assert load_accounts("") == DEFAULT_ACCOUNTS
    inline = load_accounts('[{"base": "tiny-1k", "name": "tiny-2", "mode": "alpaca-paper",'
                           ' "exits": {"stop_loss_pct": 0.05}}]')
    assert inline[0].name == "tiny-2" and inline[0].mode == "alpaca-paper"
    assert inline[0].starting_cash == TINY_1K.starting_cash
    assert inline[0].exits.stop_loss_pct == 0.05 and inline[0].exits.take_profit_pct == 0.04
    toml = tmp_path / "accounts.toml"
    toml.write_text('[[accounts]]\nname = "big"\nmax_trades_per_day = 3\n')
    assert load_accounts(str(toml))[0].max_trades_per_day == 3
    js = tmp_path / "accounts.json"
    js.write_text('{"accounts": [{"name": "x"}]}')
    assert load_accounts(js)[0] == AccountConfig(name="x")


@pytest.mark.parametrize("bad", [
    [], {"accounts": []}, [{"name": "a"}, {"name": "a"}], [{"name": "a", "bogus": 1}],
    [{"base": "nope", "name": "a"}], ["a"],
])
def test_parse_accounts_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_accounts(bad)


# -- the desk -----------------------------------------------------------------------------------


def test_simulated_entry() -> None:
    d = desk()
    r = rec()
    e = d.on_recommendation(r, at(r))
    assert e is not None
    assert e.status == "SIMULATED" and e.intent == "entry" and e.mode == "simulate"
    assert e.qty == 50.0 and e.price == pytest.approx(100.05)
    assert e.bar_used_ts == T0 and e.decided_at == at(r)
    r2 = rec("MSFT")
    e2 = d.on_recommendation(r2, at(r2))
    assert e2 is not None and e2.decided_at == at(r) + timedelta(microseconds=1)  # strictly increasing
    assert e.key() == f"large-100k:{r.id}" and e.failure_reason is None
    assert e.client_order_id is None and all(g.passed for g in e.gates)
    pos = d.state.book.get("AAPL")
    assert pos is not None and pos.avg_price == pytest.approx(100.05)
    assert d.state.trades_today == 2


def test_exactly_one_decision_per_recommendation() -> None:
    d = desk()
    r = rec()
    assert d.on_recommendation(r, at(r)) is not None
    assert d.on_recommendation(r, at(r)) is None
    assert d.on_recommendation(r, at(r) + timedelta(hours=1)) is None
    assert d.decided_count() == 1


def test_killed_signal_is_skipped_with_its_reason() -> None:
    d = desk()
    r = replace(rec(), volume_multiplier=0.0, confidence=0.0)
    e = d.on_recommendation(r, at(r))
    assert e is not None and e.status == "SKIPPED"
    assert e.failure_reason == "confidence: confidence below minimum"
    assert e.price is None and d.state.book.count() == 0 and d.state.trades_today == 0


def test_tiny_account_takes_what_large_skips() -> None:
    r = rec(confidence=0.65, close=200.0)
    large = desk().on_recommendation(r, at(r))
    tiny = desk(TINY_1K).on_recommendation(r, at(r))
    assert large is not None and large.status == "SKIPPED"
    assert tiny is not None and tiny.status == "SIMULATED" and tiny.qty == 1.25


def test_stop_loss_exit_and_kill_switch() -> None:
    d = desk(daily_loss_limit=100.0)
    r = rec()
    d.on_recommendation(r, at(r))
    bar = T0 + timedelta(minutes=5)
    assert not d.on_bar("AAPL", bar, 99.0, bar + timedelta(minutes=1))
    exits = d.on_bar("AAPL", bar, 97.0, bar + timedelta(minutes=1))
    assert len(exits) == 1
    x = exits[0]
    assert x.intent == "exit" and x.action == "SELL" and x.status == "SIMULATED" and x.qty == 50.0
    assert x.recommendation_id == exit_id("large-100k", r.id, 0)
    assert exit_reason_of(x) == "stop_loss"
    assert all(g.passed for g in x.gates)
    assert d.state.book.count() == 0
    assert d.state.realized_today == pytest.approx((97.0 * 0.9995 - 100.05) * 50)
    assert d.state.killed
    r2 = rec("MSFT", ts=bar + timedelta(minutes=2))
    e2 = d.on_recommendation(r2, at(r2))
    assert e2 is not None and e2.status == "SKIPPED" and e2.failure_reason is not None
    assert e2.failure_reason.startswith("daily_loss")


def test_reversal_exits_with_the_recommendation_id() -> None:
    d = desk()
    r = rec()
    d.on_recommendation(r, at(r))
    sell = rec(action="SELL", ts=T0 + timedelta(minutes=3), close=102.0)
    x = d.on_recommendation(sell, at(sell))
    assert x is not None and x.intent == "exit" and x.recommendation_id == sell.id
    assert x.status == "SIMULATED" and x.action == "SELL" and exit_reason_of(x) == "reversal"
    assert d.state.realized_today == pytest.approx((102.0 * 0.9995 - 100.05) * 50)


def test_sell_without_a_position_is_a_short_entry_and_blocked() -> None:
    d = desk()
    s = rec(action="SELL")
    e = d.on_recommendation(s, at(s))
    assert e is not None and e.status == "SKIPPED" and e.failure_reason is not None
    assert e.failure_reason.startswith("shorting")


def test_end_of_session_flattens_every_position() -> None:
    d = desk()
    for sym in ("AAPL", "MSFT"):
        r = rec(sym)
        d.on_recommendation(r, at(r))
    before = datetime(2024, 3, 12, 19, 43, tzinfo=UTC)  # 15:43 ET, ends 15:44
    assert not d.on_bar("AAPL", before, 100.5, before + timedelta(minutes=1))
    last = datetime(2024, 3, 12, 19, 44, tzinfo=UTC)  # ends 15:45: flat now
    exits = d.on_bar("AAPL", last, 100.6, last + timedelta(minutes=1))
    assert sorted(x.symbol for x in exits) == ["AAPL", "MSFT"]
    assert {exit_reason_of(x) for x in exits} == {"end_of_session"}
    msft = next(x for x in exits if x.symbol == "MSFT")
    assert msft.price == pytest.approx(100.05 * 0.9995)  # no MSFT bar seen: marked at cost
    assert d.state.book.count() == 0


def test_a_bar_of_a_symbol_not_held_flattens_the_others_at_the_close() -> None:
    d = desk()
    for sym in ("AAPL", "MSFT"):
        r = rec(sym)
        d.on_recommendation(r, at(r))
    before = datetime(2024, 3, 12, 19, 43, tzinfo=UTC)  # ends 15:44 ET: one minute before flat
    assert not d.on_bar("NVDA", before, 50.0, before + timedelta(minutes=1))
    last = before + timedelta(minutes=1)  # ends 15:45: flat now, whichever symbol's bar it is
    exits = d.on_bar("NVDA", last, 50.0, last + timedelta(minutes=1))
    assert sorted(x.symbol for x in exits) == ["AAPL", "MSFT"]
    assert {exit_reason_of(x) for x in exits} == {"end_of_session"}


def test_position_left_from_an_earlier_day_is_closed_at_the_first_bar() -> None:
    d = desk()
    r = rec()
    d.on_recommendation(r, at(r))
    nxt = datetime(2024, 3, 13, 14, 0, tzinfo=UTC)
    exits = d.on_bar("AAPL", nxt, 100.0, nxt + timedelta(minutes=1))
    assert [exit_reason_of(x) for x in exits] == ["end_of_session"]


def test_alpaca_mode_submitted_then_filled() -> None:
    d = desk(mode="alpaca-paper", broker_truth=False)
    r = rec()
    e = d.on_recommendation(r, at(r))
    assert e is not None and e.status == "SUBMITTED" and e.broker_order_id is None
    assert e.client_order_id == client_order_id("large-100k", r.id)
    assert e.price == 100.0  # the reference until the fill
    assert d.submitted() == [e]
    pos = d.state.book.get("AAPL")
    assert pos is not None and pos.status == "PENDING"
    # a second recommendation on the same symbol is blocked by the pending order
    r2 = rec(ts=T0 + timedelta(minutes=20))
    blocked = d.on_recommendation(r2, at(r2))
    assert blocked is not None and blocked.failure_reason is not None
    assert blocked.failure_reason.startswith("already_held")
    assert d.apply(with_status(e, "SUBMITTED", broker_order_id="b-1")) is False
    assert d.submitted()[0].broker_order_id == "b-1"
    filled = with_status(e, "FILLED", broker_order_id="b-1", price=100.2)
    assert d.apply(filled) is True
    assert d.apply(filled) is False
    assert d.apply(with_status(e, "FAILED")) is False  # final statuses do not change
    assert pos.status == "OPEN" and pos.avg_price == 100.2 and d.submitted() == []
    assert d.state.trades_today == 2 - 1  # the blocked one was not a trade


def test_alpaca_mode_failed_entry_frees_the_symbol() -> None:
    d = desk(mode="alpaca-paper", broker_truth=False)
    r = rec()
    e = d.on_recommendation(r, at(r))
    assert e is not None
    d.apply(with_status(e, "FAILED", failure_reason="rejected: insufficient buying power"))
    assert d.state.book.get("AAPL") is None and d.submitted() == []


def test_alpaca_exit_failed_retries_with_a_new_id() -> None:
    d = desk(mode="alpaca-paper", broker_truth=False)
    r = rec()
    e = d.on_recommendation(r, at(r))
    assert e is not None
    d.apply(with_status(e, "FILLED", price=100.0))
    bar = T0 + timedelta(minutes=5)
    (x,) = d.on_bar("AAPL", bar, 97.0, bar + timedelta(minutes=1))
    assert x.status == "SUBMITTED" and x.intent == "exit"
    assert not d.on_bar("AAPL", bar + timedelta(minutes=1), 96.0, bar + timedelta(minutes=2))
    d.apply(with_status(x, "FAILED"))
    (x2,) = d.on_bar("AAPL", bar + timedelta(minutes=2), 96.0, bar + timedelta(minutes=3))
    assert x2.recommendation_id == exit_id("large-100k", r.id, 1)
    d.apply(with_status(x2, "FILLED", price=96.0))
    assert d.state.book.count() == 0 and d.state.realized_today == pytest.approx(-200.0)


def _session(d: AccountDesk) -> list[Execution]:
    out: list[Execution] = []
    closes = [100.0, 101.0, 97.0, 99.0, 99.5, 103.0, 104.5, 100.0]
    for i, c in enumerate(closes):
        ts = T0 + timedelta(minutes=2 * i)
        for sym in ("AAPL", "MSFT", "TSLA"):
            r = rec(sym, "BUY" if i % 3 else "SELL", ts, 0.72 + 0.01 * i, c)
            e = d.on_recommendation(r, at(r))
            if e is not None:
                out.append(e)
            out.extend(d.on_bar(sym, ts, c, at(r)))
    return out


def test_same_inputs_same_decisions() -> None:
    a, b = _session(desk()), _session(desk())
    assert a == b and len(a) > 10


def test_rebuild_from_executions_restores_the_state() -> None:
    live = desk(daily_loss_limit=50.0)
    history = _session(live)
    restored = desk(daily_loss_limit=50.0)
    restored.rebuild(list(reversed(history)) + history)  # order and duplicates do not matter
    last = max(e.decided_at for e in history)
    for d in (live, restored):
        d.state.submits_within(last, 60.0)
    assert restored.state.to_state() == live.state.to_state()
    assert restored.decided_count() == live.decided_count()
    for e in history:
        assert restored.status_of(e.recommendation_id) == e.status
    other = desk(TINY_1K)
    assert other.rebuild(history) == 0


def test_new_record_is_an_ordinary_frozen_record() -> None:
    import dataclasses

    from schemas.records import Recommendation as Rec
    from trading.execution import build_execution, new_record

    r = rec()
    again = new_record(Rec, *(getattr(r, f) for f in Rec.field_names()))
    assert again == r and hash(again.id) == hash(r.id) and type(again) is Rec
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.symbol = "X"  # type: ignore[misc]
    e = build_execution(recommendation_id="r", account="a", symbol="S", action="BUY", status="SKIPPED",
                        gates=[], failure_reason=None, qty=1.0, price=None, bar_used_ts=T0, mode="simulate",
                        decided_at=T0, intent="entry")
    assert e == Execution(recommendation_id="r", account="a", symbol="S", action="BUY", status="SKIPPED",
                          gates=[], failure_reason=None, qty=1.0, price=None, bar_used_ts=T0,
                          broker_order_id=None, client_order_id=None, mode="simulate", decided_at=T0,
                          intent="entry")
    short = new_record(Execution, *(getattr(e, f) for f in Execution.field_names()[:-1]))
    assert short.intent == "entry"  # a field with a default may be left out


def test_uuid5_str_matches_the_standard_library() -> None:
    from trading.execution import uuid5_str

    ns = uuid.UUID("5b0c1f4e-7d0a-5b8e-9a53-2f1d8c6e0a71")
    for name in ("", "v1|AAPL|2024-03-12T14:00:00+00:00|BUY", "é|ü", "x" * 300):
        assert uuid5_str(ns, name) == str(uuid.uuid5(ns, name))
