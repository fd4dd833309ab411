"""The gates an option entry passes besides the account's own (trading.gates): approval level,
options buying power, premium within the notional limits, spread, open interest, days to expiry and
the session's last minutes; each one a GateResult, so a SKIPPED option entry explains itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from schemas.records import BrokerAccount, GateResult, OptionQuote
from trading.calendar import NEW_YORK, SessionCalendar, trading_day
from trading.option_chain import ContractChoice, OptionsConfig, choose_contract
from trading.options import CONTRACT_MULTIPLIER, OptionOrder, contracts_for, parse_occ

REQUIRED_LEVEL = 2  # Alpaca: level 2 allows buying calls and puts

#: Gate names in evaluation order (appended after trading.gates.GATE_ORDER by the desk).
OPTION_GATE_ORDER: tuple[str, ...] = (
    "option_contract",
    "option_approval",
    "option_buying_power",
    "option_notional_per_trade",
    "option_notional_per_account",
    "option_spread",
    "option_open_interest",
    "option_dte",
    "option_session_end",
)


class OptionAccount(NamedTuple):
    """What the option gates read of an account: from the broker's snapshot (alpaca-paper) or
    the desk's own book (simulate, where no approval exists and the level is not checked)."""

    approved_level: int | None  # None with source "simulated": not checked
    buying_power: float  # options buying power, less what is in flight
    exposure: float  # USD open in the account before this entry
    source: str  # "broker" or "simulated"

    @classmethod
    def from_broker(cls, account: BrokerAccount | None, *, exposure: float, in_flight: float = 0.0
                    ) -> OptionAccount:
        if account is None:
            return cls(None, 0.0, exposure, "broker")
        power = account.options_buying_power
        power = account.buying_power if power is None else power
        return cls(account.options_approved_level, power - in_flight, exposure, "broker")

    @classmethod
    def simulated(cls, *, buying_power: float, exposure: float) -> OptionAccount:
        return cls(None, buying_power, exposure, "simulated")


def _gate(name: str, passed: bool, value: float | str | None, limit: float | str | None,
          reason: str) -> GateResult:
    return GateResult(name, passed, value, limit, reason)


def approval_gate(account: OptionAccount, required: int = REQUIRED_LEVEL) -> GateResult:
    level = account.approved_level
    if account.source == "simulated":
        return _gate("option_approval", True, None, float(required),
                     "simulated account: no approval to check")
    if level is None:
        return _gate("option_approval", False, None, float(required), "options approval level unknown")
    ok = level >= required
    return _gate("option_approval", ok, float(level), float(required),
                 "ok" if ok else f"options level {level} cannot buy calls or puts (needs {required})")


def premium(price: float, qty: int) -> float:
    """USD paid for `qty` contracts at `price` per share."""
    return price * CONTRACT_MULTIPLIER * qty


def buying_power_gate(cost: float, account: OptionAccount) -> GateResult:
    ok = 0.0 < cost <= account.buying_power
    what = "options buying power" + (" at the broker" if account.source == "broker" else "")
    return _gate("option_buying_power", ok, cost, float(account.buying_power),
                 "ok" if ok else "zero premium" if cost <= 0 else f"insufficient {what}")


def notional_gates(cost: float, account: OptionAccount, max_per_trade: float, max_account: float
                   ) -> list[GateResult]:
    trade_ok = 0.0 < cost <= max_per_trade
    exposure = account.exposure + cost
    return [
        _gate("option_notional_per_trade", trade_ok, cost, float(max_per_trade),
              "ok" if trade_ok else "zero contracts" if cost <= 0 else "premium above the trade maximum"),
        _gate("option_notional_per_account", exposure <= max_account, exposure, float(max_account),
              "ok" if exposure <= max_account else "account exposure would exceed maximum"),
    ]


def spread_gate(quote: OptionQuote, config: OptionsConfig) -> GateResult:
    bid, ask, limit = quote.bid, quote.ask, float(config.max_spread_pct)
    if bid is None or ask is None or not (math.isfinite(bid) and math.isfinite(ask)) or bid <= 0 or ask < bid:
        return _gate("option_spread", False, None, limit, f"no usable quote (bid {bid!r}, ask {ask!r})")
    pct = (ask - bid) / ((ask + bid) / 2.0) * 100.0
    ok = pct <= limit
    return _gate("option_spread", ok, round(pct, 4), limit, "ok" if ok else "spread too wide")


def open_interest_gate(quote: OptionQuote, config: OptionsConfig) -> GateResult:
    oi, need = quote.open_interest, float(config.min_open_interest)
    if oi is None:
        ok = quote.modelled or need <= 0
        return _gate("option_open_interest", ok, None, need,
                     "modelled chain: open interest not modelled" if quote.modelled
                     else "ok" if ok else "open interest unknown")
    ok = oi >= need and oi >= 0
    return _gate("option_open_interest", ok, float(oi), need,
                 "ok" if ok else "negative open interest" if oi < 0 else "open interest below minimum")


def dte_gate(quote: OptionQuote, now: datetime, config: OptionsConfig) -> GateResult:
    occ = parse_occ(quote.contract)
    limit = f"{config.min_dte}-{config.max_dte} days"
    if occ is None:
        return _gate("option_dte", False, None, limit, f"{quote.contract!r} is not an OCC option symbol")
    dte = (occ.expiration - trading_day(now)).days
    ok = config.min_dte <= dte <= config.max_dte
    return _gate("option_dte", ok, float(dte), limit, "ok" if ok else "days to expiry outside the bounds")


def session_end_gate(now: datetime, calendar: SessionCalendar, config: OptionsConfig) -> GateResult:
    """No new option entries in the last `entry_cutoff_minutes` of the session (early closes too)."""
    limit = f"{config.entry_cutoff_minutes} min before the close"
    day = trading_day(now)
    try:
        session = calendar.session(day)
    except LookupError as exc:
        return _gate("option_session_end", False, None, limit, str(exc))
    if session is None:
        return _gate("option_session_end", False, None, limit, f"{day} is not a trading day")
    cutoff = session.close - timedelta(minutes=config.entry_cutoff_minutes)
    left = (session.close - now).total_seconds() / 60.0
    ok = now < cutoff
    return _gate("option_session_end", ok, round(left, 2), f"{cutoff.astimezone(NEW_YORK):%H:%M} ET",
                 "ok" if ok else "too close to the session's end for a new option entry")


def option_gates(quote: OptionQuote, *, qty: int, price: float, now: datetime, account: OptionAccount,
                 config: OptionsConfig, max_notional_per_trade: float, max_notional_account: float,
                 calendar: SessionCalendar) -> list[GateResult]:
    """Every gate of OPTION_GATE_ORDER but option_contract, for buying `qty` contracts of `quote`
    at `price`."""
    cost = premium(price, qty)
    return [
        approval_gate(account),
        buying_power_gate(cost, account),
        *notional_gates(cost, account, max_notional_per_trade, max_notional_account),
        spread_gate(quote, config),
        open_interest_gate(quote, config),
        dte_gate(quote, now, config),
        session_end_gate(now, calendar, config),
    ]


class OptionEntry(NamedTuple):
    """An option entry decided: the choice (with every candidate), the order when one can be made
    (whole contracts at the limit, DAY) and the gates: option_contract, then OPTION_GATE_ORDER."""

    choice: ContractChoice
    order: OptionOrder | None
    gates: list[GateResult]


def option_entry(quotes: Iterable[OptionQuote], *, underlying: str, action: str, now: datetime,
                 config: OptionsConfig, budget: float, account: OptionAccount, max_notional_per_trade: float,
                 max_notional_account: float, calendar: SessionCalendar) -> OptionEntry:
    """What an option account does with a signal on `underlying`: choose a contract from the chain
    records it has seen, size it to `budget` USD of premium in whole contracts, and gate it."""
    choice = choose_contract(quotes, underlying=underlying, action=action, now=now, config=config)
    quote, price = choice.quote, choice.limit_price
    if quote is None or price is None:
        gate = _gate("option_contract", False, None, "a contract within the options block", choice.detail())
        return OptionEntry(choice, None, [gate])
    qty = contracts_for(budget, price)
    gates = [_gate("option_contract", True, quote.contract, "a contract within the options block",
                   choice.detail()),
             *option_gates(quote, qty=qty, price=price, now=now, account=account, config=config,
                           max_notional_per_trade=max_notional_per_trade,
                           max_notional_account=max_notional_account, calendar=calendar)]
    order = OptionOrder(quote.contract, qty, price) if qty > 0 else None
    return OptionEntry(choice, order, gates)
