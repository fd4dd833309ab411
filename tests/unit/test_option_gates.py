"""The option entry gates: approval level, options buying power, premium x 100 x qty within the
notional limits, spread, open interest, days to expiry and the session's last minutes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from schemas.records import BrokerAccount, GateResult, OptionQuote
from trading.calendar import Session, TradingCalendar
from trading.option_chain import OptionsConfig
from trading.option_gates import (
    OPTION_GATE_ORDER,
    OptionAccount,
    approval_gate,
    buying_power_gate,
    dte_gate,
    notional_gates,
    open_interest_gate,
    option_entry,
    option_gates,
    premium,
    session_end_gate,
    spread_gate,
)
from trading.options import OptionOrder

NOW = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)  # 10:00 ET
CALL = "QCOM260227C00150000"
QUOTE = OptionQuote(CALL, "QCOM", NOW, 4.0, 4.2, 10.0, 10.0, None, 0.3, 0.5, 0.04, -0.05, 0.2, "chain", NOW,
                    open_interest=500, penny_program=True)
CAL = TradingCalendar({date(2026, 2, 2): Session(datetime(2026, 2, 2, 14, 30, tzinfo=UTC),
                                                 datetime(2026, 2, 2, 21, 0, tzinfo=UTC)),
                       date(2026, 11, 27): Session(datetime(2026, 11, 27, 14, 30, tzinfo=UTC),
                                                   datetime(2026, 11, 27, 18, 0, tzinfo=UTC))})


def account(level: int | None = 2, power: float = 10_000.0, exposure: float = 0.0) -> OptionAccount:
    return OptionAccount(level, power, exposure, "broker")


def broker_account(level: int | None, options_bp: float | None) -> BrokerAccount:
    return BrokerAccount("paper", NOW, "ACTIVE", "USD", 5_000.0, 9_000.0, options_bp, 10_000.0, None, None,
                         None, level, False)


def brief(g: GateResult) -> tuple[bool, str]:
    return g.passed, g.reason


@pytest.mark.parametrize(("acct", "passed", "reason"), [
    (account(2), True, "ok"), (account(3), True, "ok"),
    (account(1), False, "options level 1 cannot buy calls or puts (needs 2)"),
    (account(None), False, "options approval level unknown"),
    (OptionAccount.simulated(buying_power=1.0, exposure=0.0), True,
     "simulated account: no approval to check"),
])
def test_approval_level(acct: OptionAccount, passed: bool, reason: str) -> None:
    assert brief(approval_gate(acct)) == (passed, reason)


def test_options_buying_power_comes_from_the_broker_less_in_flight() -> None:
    acct = OptionAccount.from_broker(broker_account(2, 1_000.0), exposure=0.0, in_flight=200.0)
    assert acct.buying_power == 800.0
    assert brief(buying_power_gate(premium(4.0, 2), acct)) == (True, "ok")
    assert brief(buying_power_gate(premium(4.1, 2), acct)) == (
        False, "insufficient options buying power at the broker")
    assert OptionAccount.from_broker(broker_account(2, None), exposure=0.0).buying_power == 9_000.0
    assert OptionAccount.from_broker(None, exposure=0.0) == OptionAccount(None, 0.0, 0.0, "broker")
    assert brief(buying_power_gate(0.0, acct)) == (False, "zero premium")


def test_premium_times_100_times_qty_inside_the_notional_limits() -> None:
    cost = premium(4.1, 3)
    assert cost == pytest.approx(1_230.0)
    per_trade, per_account = notional_gates(cost, account(exposure=3_000.0), 1_500.0, 5_000.0)
    assert brief(per_trade) == (True, "ok") and per_trade.value == pytest.approx(1_230.0)
    assert brief(per_account) == (True, "ok") and per_account.value == pytest.approx(4_230.0)
    per_trade, per_account = notional_gates(cost, account(exposure=4_000.0), 1_000.0, 5_000.0)
    assert brief(per_trade) == (False, "premium above the trade maximum")
    assert brief(per_account) == (False, "account exposure would exceed maximum")
    assert brief(notional_gates(0.0, account(), 1_000.0, 5_000.0)[0]) == (False, "zero contracts")


@pytest.mark.parametrize(("quote", "passed", "reason"), [
    (QUOTE, True, "ok"),
    (replace(QUOTE, bid=3.0, ask=4.0), False, "spread too wide"),
    (replace(QUOTE, bid=0.0), False, "no usable quote (bid 0.0, ask 4.2)"),
    (replace(QUOTE, bid=4.3), False, "no usable quote (bid 4.3, ask 4.2)"),
    (replace(QUOTE, ask=float("nan")), False, "no usable quote (bid 4.0, ask nan)"),
])
def test_spread(quote: OptionQuote, passed: bool, reason: str) -> None:
    assert brief(spread_gate(quote, OptionsConfig(max_spread_pct=10))) == (passed, reason)


@pytest.mark.parametrize(("quote", "passed", "reason"), [
    (QUOTE, True, "ok"),
    (replace(QUOTE, open_interest=99), False, "open interest below minimum"),
    (replace(QUOTE, open_interest=-1), False, "negative open interest"),
    (replace(QUOTE, open_interest=None), False, "open interest unknown"),
    (replace(QUOTE, open_interest=None, modelled=True), True, "modelled chain: open interest not modelled"),
])
def test_open_interest(quote: OptionQuote, passed: bool, reason: str) -> None:
    assert brief(open_interest_gate(quote, OptionsConfig(min_open_interest=100))) == (passed, reason)


def test_days_to_expiry_bounds() -> None:
    cfg = OptionsConfig(min_dte=7, max_dte=45)
    gate = dte_gate(QUOTE, NOW, cfg)
    assert brief(gate) == (True, "ok") and gate.value == 25.0
    assert brief(dte_gate(QUOTE, NOW + timedelta(days=20), cfg)) == (
        False, "days to expiry outside the bounds")
    assert brief(dte_gate(QUOTE, NOW, OptionsConfig(min_dte=30, max_dte=60)))[0] is False
    assert brief(dte_gate(replace(QUOTE, contract="QCOM"), NOW, cfg))[0] is False


def test_no_new_option_entries_in_the_sessions_last_minutes() -> None:
    cfg = OptionsConfig(entry_cutoff_minutes=30)
    close = datetime(2026, 2, 2, 21, 0, tzinfo=UTC)
    assert brief(session_end_gate(close - timedelta(minutes=31), CAL, cfg)) == (True, "ok")
    late = session_end_gate(close - timedelta(minutes=30), CAL, cfg)
    assert brief(late) == (False, "too close to the session's end for a new option entry")
    assert late.limit == "15:30 ET" and late.value == 30.0
    early_close = session_end_gate(datetime(2026, 11, 27, 17, 45, tzinfo=UTC), CAL, cfg)  # 12:45 ET
    assert early_close.passed is False and early_close.limit == "12:30 ET"
    assert brief(session_end_gate(datetime(2026, 2, 3, 15, 0, tzinfo=UTC), CAL, cfg)) == (
        False, "2026-02-03 is not a trading day")


def test_option_gates_in_order_and_all_passing_for_a_good_entry() -> None:
    gates = option_gates(QUOTE, qty=2, price=4.1, now=NOW, account=account(), config=OptionsConfig(),
                         max_notional_per_trade=1_000.0, max_notional_account=5_000.0, calendar=CAL)
    assert tuple(g.name for g in gates) == OPTION_GATE_ORDER[1:]
    assert all(g.passed for g in gates), [g for g in gates if not g.passed]
    gates = option_gates(QUOTE, qty=3, price=4.1, now=NOW, account=account(level=1), config=OptionsConfig(),
                         max_notional_per_trade=1_000.0, max_notional_account=5_000.0, calendar=CAL)
    assert [g.name for g in gates if not g.passed] == ["option_approval", "option_notional_per_trade"]


def entry(quotes: list[OptionQuote], budget: float = 1_000.0, level: int = 2) -> Any:
    return option_entry(quotes, underlying="QCOM", action="BUY", now=NOW, config=OptionsConfig(),
                        budget=budget, account=account(level), max_notional_per_trade=1_000.0,
                        max_notional_account=5_000.0, calendar=CAL)


def test_an_option_entry_chooses_sizes_in_whole_contracts_and_gates() -> None:
    chain = [replace(QUOTE, chain_id="QCOM@x", chain_as_of=NOW),
             replace(QUOTE, contract="QCOM260227C00155000", delta=0.3, chain_id="QCOM@x", chain_as_of=NOW)]
    made = entry(chain)
    assert made.order == OptionOrder(CALL, 2, 4.1) and made.choice.quote == chain[0]
    assert tuple(g.name for g in made.gates) == OPTION_GATE_ORDER and all(g.passed for g in made.gates)
    assert made.gates[0].value == CALL
    assert "QCOM260227C00155000: rejected: |delta| 0.300" in made.gates[0].reason
    poor = entry(chain, budget=300.0)  # less than one contract
    assert poor.order is None
    assert [(g.name, g.reason) for g in poor.gates if not g.passed] == [
        ("option_buying_power", "zero premium"), ("option_notional_per_trade", "zero contracts")]
    assert [g.name for g in entry(chain, level=1).gates if not g.passed] == ["option_approval"]


def test_an_option_entry_with_nothing_to_buy_fails_one_gate_with_every_reason() -> None:
    made = entry([replace(QUOTE, bid=0.0, chain_id="QCOM@x", chain_as_of=NOW)])
    assert made.order is None and len(made.gates) == 1
    gate = made.gates[0]
    assert (gate.name, gate.passed) == ("option_contract", False)
    assert gate.reason == f"no call of QCOM passed (1 considered); {CALL}: rejected: zero bid"


def test_the_choice_detail_is_capped() -> None:
    chain = [replace(QUOTE, contract=f"QCOM260227C{100_000 + i * 1000:08d}", delta=0.01, chain_id="QCOM@x",
                     chain_as_of=NOW) for i in range(30)]
    detail = entry(chain).gates[0].reason
    assert detail.count("rejected") == 20 and detail.endswith("... and 10 more")
