"""Gate table: every gate passing and failing, with the value and limit it records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from trading.calendar import TradingCalendar
from trading.gates import (
    DEFAULT_ACCOUNTS,
    GATE_ORDER,
    LARGE_100K,
    TINY_1K,
    AccountConfig,
    AccountState,
    OrderPlan,
    entry_window,
    evaluate_gates,
    failure_reason,
    first_failure,
)

CAL = TradingCalendar()
# Tuesday 2024-03-12, 10:00 New York (EDT, UTC-4)
NOW = datetime(2024, 3, 12, 14, 0, tzinfo=UTC)
BAR = NOW - timedelta(seconds=60)


def plan(**kw: Any) -> OrderPlan:
    base = OrderPlan(symbol="AAPL", action="BUY", intent="entry", confidence=0.8, bar_ts=BAR,
                     price=100.0, qty=50.0)
    return base._replace(**kw)


def gates_by_name(config: AccountConfig, state: AccountState, p: OrderPlan,
                  now: datetime = NOW) -> dict[str, Any]:
    return {g.name: g for g in evaluate_gates(config, state, p, now, CAL)}


def test_baseline_passes_every_gate_in_order() -> None:
    gates = evaluate_gates(LARGE_100K, AccountState(), plan(), NOW, CAL)
    assert [g.name for g in gates] == list(GATE_ORDER)
    assert all(g.passed for g in gates), [g for g in gates if not g.passed]
    assert failure_reason(gates) is None


def _held(state: AccountState) -> None:
    state.book.open("AAPL", "BUY", 10, 100.0, BAR, "rec-x")


def _open_n(n: int, price: float = 10.0) -> Callable[[AccountState], None]:
    def f(state: AccountState) -> None:
        for i in range(n):
            state.book.open(f"S{i}", "BUY", 1, price, BAR, f"r{i}")
    return f


def _submits(n: int, ago_s: float = 1.0) -> Callable[[AccountState], None]:
    def f(state: AccountState) -> None:
        for _ in range(n):
            state.record_submit(NOW - timedelta(seconds=ago_s))
    return f


def _trades(n: int) -> Callable[[AccountState], None]:
    def f(state: AccountState) -> None:
        state.roll(date(2024, 3, 12))
        state.trades_today = n
    return f


def _loss(amount: float) -> Callable[[AccountState], None]:
    def f(state: AccountState) -> None:
        state.roll(date(2024, 3, 12))
        state.realize(-amount, LARGE_100K)
    return f


def _noop(state: AccountState) -> None:
    return None


# (case id, gate, config changes, state setup, plan changes, now, passed, value, limit)
CASES: list[tuple[str, str, dict[str, Any], Callable[[AccountState], None], dict[str, Any],
                  datetime, bool, Any, Any]] = [
    ("confidence-pass", "confidence", {}, _noop, {"confidence": 0.70}, NOW, True, 0.70, 0.70),
    ("confidence-fail", "confidence", {}, _noop, {"confidence": 0.69}, NOW, False, 0.69, 0.70),
    ("confidence-tiny", "confidence", {"min_confidence": 0.60}, _noop, {"confidence": 0.61}, NOW,
     True, 0.61, 0.60),
    ("session-pass", "session", {}, _noop, {}, NOW, True, "2024-03-12 10:00:00 ET", "09:35-15:45 ET"),
    ("session-early", "session", {}, _noop, {}, datetime(2024, 3, 12, 13, 34, 59, tzinfo=UTC), False,
     "2024-03-12 09:34:59 ET", "09:35-15:45 ET"),
    ("session-start", "session", {}, _noop, {}, datetime(2024, 3, 12, 13, 35, tzinfo=UTC), True,
     "2024-03-12 09:35:00 ET", "09:35-15:45 ET"),
    ("session-end", "session", {}, _noop, {}, datetime(2024, 3, 12, 19, 45, tzinfo=UTC), False,
     "2024-03-12 15:45:00 ET", "09:35-15:45 ET"),
    ("session-last", "session", {}, _noop, {}, datetime(2024, 3, 12, 19, 44, 59, tzinfo=UTC), True,
     "2024-03-12 15:44:59 ET", "09:35-15:45 ET"),
    # day after Thanksgiving: closes 13:00, so entries end 12:45
    ("session-early-close", "session", {}, _noop, {}, datetime(2024, 11, 29, 17, 50, tzinfo=UTC), False,
     "2024-11-29 12:50:00 ET", "09:35-12:45 ET"),
    ("session-early-close-ok", "session", {}, _noop, {}, datetime(2024, 11, 29, 17, 40, tzinfo=UTC), True,
     "2024-11-29 12:40:00 ET", "09:35-12:45 ET"),
    ("session-holiday", "session", {}, _noop, {}, datetime(2024, 12, 25, 15, 0, tzinfo=UTC), False,
     "2024-12-25 10:00:00 ET", "closed"),
    ("session-weekend", "session", {}, _noop, {}, datetime(2024, 3, 16, 14, 0, tzinfo=UTC), False,
     "2024-03-16 10:00:00 ET", "closed"),
    ("bar-age-pass", "bar_age", {}, _noop, {"bar_ts": NOW - timedelta(seconds=120)}, NOW, True,
     120.0, 120.0),
    ("bar-age-fail", "bar_age", {}, _noop, {"bar_ts": NOW - timedelta(seconds=121)}, NOW, False,
     121.0, 120.0),
    ("bar-age-future", "bar_age", {}, _noop, {"bar_ts": NOW + timedelta(seconds=1)}, NOW, False,
     -1.0, 120.0),
    ("shorting-long", "shorting", {}, _noop, {"action": "BUY"}, NOW, True, "BUY", "long only"),
    ("shorting-fail", "shorting", {}, _noop, {"action": "SELL"}, NOW, False, "SELL", "long only"),
    ("shorting-allowed", "shorting", {"allow_short": True}, _noop, {"action": "SELL"}, NOW, True,
     "SELL", "allowed"),
    ("trades-pass", "trades_per_day", {}, _trades(19), {}, NOW, True, 19.0, 20.0),
    ("trades-fail", "trades_per_day", {}, _trades(20), {}, NOW, False, 20.0, 20.0),
    ("open-pass", "open_positions", {}, _open_n(4), {}, NOW, True, 4.0, 5.0),
    ("open-fail", "open_positions", {}, _open_n(5), {}, NOW, False, 5.0, 5.0),
    ("notional-trade-pass", "notional_per_trade", {}, _noop, {"qty": 100.0}, NOW, True, 10_000.0,
     10_000.0),
    ("notional-trade-fail", "notional_per_trade", {}, _noop, {"qty": 100.01}, NOW, False,
     pytest.approx(10_001.0), 10_000.0),
    ("notional-trade-zero", "notional_per_trade", {}, _noop, {"qty": 0.0}, NOW, False, 0.0, 10_000.0),
    ("notional-account-pass", "notional_per_account", {}, _open_n(4, 11_250.0), {}, NOW, True,
     50_000.0, 50_000.0),
    ("notional-account-fail", "notional_per_account", {}, _open_n(4, 11_251.0), {}, NOW, False,
     50_004.0, 50_000.0),
    ("held-pass", "already_held", {}, _noop, {}, NOW, True, "flat", "one entry per symbol"),
    ("held-fail", "already_held", {}, _held, {}, NOW, False, "long 10 @ 100.0000 (OPEN)",
     "one entry per symbol"),
    ("loss-pass", "daily_loss", {}, _loss(1_999.0), {}, NOW, True, -1_999.0, -2_000.0),
    ("loss-fail", "daily_loss", {}, _loss(2_000.0), {}, NOW, False, -2_000.0, -2_000.0),
    ("power-pass", "buying_power", {"starting_cash": 5_000.0}, _noop, {}, NOW, True, 5_000.0, 5_000.0),
    ("power-fail", "buying_power", {"starting_cash": 4_999.0}, _noop, {}, NOW, False, 5_000.0, 4_999.0),
    ("power-after-loss", "buying_power", {"starting_cash": 5_500.0}, _loss(600.0), {}, NOW, False,
     5_000.0, 4_900.0),
    ("rate-pass", "submit_rate", {}, _submits(9), {}, NOW, True, 9.0, 10.0),
    ("rate-fail", "submit_rate", {}, _submits(10), {}, NOW, False, 10.0, 10.0),
    ("rate-window-expired", "submit_rate", {}, _submits(10, ago_s=60.0), {}, NOW, True, 0.0, 10.0),
]


@pytest.mark.parametrize(
    ("gate", "config_kw", "setup", "plan_kw", "now", "passed", "value", "limit"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_gate_table(gate: str, config_kw: dict[str, Any], setup: Callable[[AccountState], None],
                    plan_kw: dict[str, Any], now: datetime, passed: bool, value: Any, limit: Any) -> None:
    config = replace(LARGE_100K, **config_kw)
    state = AccountState()
    setup(state)
    result = gates_by_name(config, state, plan(**plan_kw), now)[gate]
    assert result.passed is passed, result
    assert result.value == value
    assert result.limit == limit
    assert result.reason


def test_first_failure_is_the_failure_reason() -> None:
    state = AccountState()
    _held(state)
    gates = evaluate_gates(LARGE_100K, state, plan(confidence=0.1, action="SELL"), NOW, CAL)
    failing = [g.name for g in gates if not g.passed]
    assert failing == ["confidence", "shorting", "already_held"]
    first = first_failure(gates)
    assert first is not None and first.name == "confidence"
    assert failure_reason(gates) == "confidence: confidence below minimum"


def test_exits_are_never_blocked() -> None:
    state = AccountState()
    _held(state)
    _loss(10_000.0)(state)
    _submits(100)(state)
    closed_day = datetime(2024, 12, 25, 15, 0, tzinfo=UTC)
    gates = evaluate_gates(LARGE_100K, state, plan(intent="exit", action="SELL", confidence=0.0,
                                                   bar_ts=closed_day - timedelta(hours=5)),
                           closed_day, CAL)
    assert [g.name for g in gates] == list(GATE_ORDER)
    assert all(g.passed and g.reason.startswith("skipped") for g in gates)


def test_kill_switch_holds_for_the_day_and_resets_next_day() -> None:
    state = AccountState()
    state.roll(date(2024, 3, 12))
    state.realize(-2_500.0, LARGE_100K)
    state.realize(+1_000.0, LARGE_100K)  # back above the limit: the switch stays on
    assert state.killed
    assert not gates_by_name(LARGE_100K, state, plan())["daily_loss"].passed
    state.roll(date(2024, 3, 13))
    assert not state.killed and state.realized_today == 0.0 and state.trades_today == 0
    assert state.realized_total == -1_500.0
    tomorrow = NOW + timedelta(days=1)
    assert gates_by_name(LARGE_100K, state, plan(bar_ts=tomorrow - timedelta(seconds=60)),
                         tomorrow)["daily_loss"].passed


def test_roll_ignores_an_earlier_day() -> None:
    state = AccountState()
    state.roll(date(2024, 3, 13))
    state.trades_today = 3
    state.roll(date(2024, 3, 12))
    assert state.day == date(2024, 3, 13) and state.trades_today == 3


def test_default_accounts() -> None:
    assert [a.name for a in DEFAULT_ACCOUNTS] == ["large-100k", "tiny-1k"]
    assert LARGE_100K.min_confidence == 0.70 and TINY_1K.min_confidence == 0.60
    assert all(a.mode == "simulate" for a in DEFAULT_ACCOUNTS)
    assert TINY_1K.starting_cash == 1_000.0 and LARGE_100K.starting_cash == 100_000.0


@pytest.mark.parametrize("bad", [
    {"name": ""}, {"name": "a:b"}, {"mode": "live"}, {"starting_cash": 0.0},
    {"max_bar_age_s": -1.0}, {"slippage_bps": -0.1},
])
def test_account_config_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(LARGE_100K, **bad)


def test_entry_window_on_a_normal_and_an_early_close_day() -> None:
    normal = entry_window(LARGE_100K, CAL, date(2024, 3, 12))
    early = entry_window(LARGE_100K, CAL, date(2024, 7, 3))
    assert normal == (datetime(2024, 3, 12, 13, 35, tzinfo=UTC), datetime(2024, 3, 12, 19, 45, tzinfo=UTC))
    assert early == (datetime(2024, 7, 3, 13, 35, tzinfo=UTC), datetime(2024, 7, 3, 16, 45, tzinfo=UTC))
    assert entry_window(LARGE_100K, CAL, date(2024, 7, 4)) is None


def test_calendar_outside_its_range_fails_the_session_gate() -> None:
    far = datetime(2099, 3, 12, 14, 0, tzinfo=UTC)
    g = gates_by_name(LARGE_100K, AccountState(), plan(bar_ts=far - timedelta(seconds=60)), far)["session"]
    assert not g.passed and "does not cover" in g.reason


def test_state_round_trip() -> None:
    state = AccountState()
    state.roll(date(2024, 3, 12))
    state.trades_today = 2
    state.realize(-12.5, LARGE_100K)
    state.record_submit(NOW)
    _held(state)
    again = AccountState.from_state(state.to_state())
    assert again.to_state() == state.to_state()
    with pytest.raises(ValueError):
        AccountState.from_state({**state.to_state(), "version": 99})
