"""Mixed into AccountDesk for accounts with `instrument: option`: an entry buys the contract the
chain records seen on options.quotes choose (a call for BUY, a put for SELL); a simulate order
fills only at its limit on a quote whose ask reaches it, and rests until `cancel_after_minutes`;
a position exits at a quote's bid (stop, target on the premium, days to expiry, reversal), never
at a price no quote showed. In research over bars only (a Backtester with `synthetic_iv`), the
chain and the later quotes of held contracts are priced by Black-Scholes and labelled modelled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from schemas.records import Execution, GateResult, OptionQuote, Recommendation
from trading import execution as ex
from trading.broker import broker_key, sessions_until
from trading.calendar import SessionCalendar, trading_day
from trading.gates import AccountConfig, AccountState, GateEvaluator, OrderPlan, failure_reason
from trading.option_chain import ChainBook, OptionsConfig
from trading.option_gates import OptionAccount, option_entry
from trading.option_pricing import modelled_quote, synthetic_chain
from trading.options import CONTRACT_MULTIPLIER, parse_occ
from trading.positions import OPEN, OpenPosition

if TYPE_CHECKING:
    from trading.control import Halt


def cfg_is_option(config: AccountConfig) -> bool:
    return config.instrument == "option"


def modelled_accounts(executions: Iterable[Execution]) -> set[str]:
    """Accounts with a decision on a modelled chain: their results are modelled, not replayed."""
    return {e.account for e in executions if e.intent == "entry"
            and any(g.name == "option_chain" and g.value == "modelled" for g in e.gates)}


MODEL_RATE = 0.04  # the risk-free rate of modelled quotes (synthetic_chain's default)


def fillable_ask(quote: OptionQuote) -> float | None:
    """The ask of a usable two-sided quote (bid > 0, not crossed, finite), else None: a malformed
    quote never fills an order."""
    bid, ask = quote.bid, quote.ask
    if bid is None or ask is None or not (math.isfinite(bid) and math.isfinite(ask)):
        return None
    if bid <= 0 or ask < bid:
        return None
    return ask


class OptionDesk:
    """Option entries and their resting simulate orders (see the module docstring)."""

    __slots__ = ()
    config: AccountConfig
    state: AccountState
    gates: GateEvaluator
    calendar: SessionCalendar
    chains: ChainBook
    halted: Halt | None
    _resting: dict[str, Execution]  # recommendation id -> a simulate option order not filled yet
    _quotes: dict[str, OptionQuote]  # held contract -> its latest usable quote (marks and exits)
    synthetic_iv: float | None  # set by a research backtest only: model chains where none is recorded
    _status: dict[str, str]
    _marks: dict[str, float]

    if TYPE_CHECKING:
        def apply(self, execution: Execution) -> bool: ...
        def _stamp(self, now: datetime) -> datetime: ...

    @property
    def options(self) -> OptionsConfig:
        opts = self.config.options
        assert opts is not None  # AccountConfig gives an option account the defaults
        return opts

    def _option_entry(self, rec: Recommendation, now: datetime, stamp: datetime) -> Execution:
        """The decision on `rec` for an option account: the account's own gates on the premium,
        then option_contract and OPTION_GATE_ORDER; filled at the limit when the chosen quote's ask
        is at or below it, else the order rests (SUBMITTED) for later quotes."""
        config, state = self.config, self.state
        held = self._held_on(rec.symbol)
        if held is not None and config.exits.exit_on_reversal:
            kind = parse_occ(held.symbol).option_type  # type: ignore[union-attr]
            if (rec.action == "SELL") == (kind == "call"):
                return self._reversal(rec, held, now, stamp)
        if self.synthetic_iv is not None and self._unrecorded(rec.symbol):
            close = rec.features.get("close")
            if close is not None and math.isfinite(close) and close > 0:
                for q in synthetic_chain(rec.symbol, float(close), now, iv=self.synthetic_iv,
                                         config=self.options, calendar=self.calendar):
                    self.chains.add(q)
        acct = OptionAccount.simulated(buying_power=state.buying_power(config),
                                       exposure=state.book.exposure())
        entry = option_entry(self.chains.quotes(rec.symbol), underlying=rec.symbol, action=rec.action,
                             now=now, config=self.options, budget=config.notional_per_trade, account=acct,
                             max_notional_per_trade=config.max_notional_per_trade,
                             max_notional_account=config.max_notional_account, calendar=self.calendar)
        order = entry.order
        if order is not None:  # a buy to open, whatever the signal: an option account never shorts
            plan = OrderPlan(order.contract, "BUY", "entry", rec.confidence, rec.ts,
                             order.limit_price * CONTRACT_MULTIPLIER, float(order.qty))
        else:  # no order: the account's gates judge the budget, option_contract says why not
            plan = OrderPlan(rec.symbol, "BUY", "entry", rec.confidence, rec.ts, config.notional_per_trade,
                             1.0)
        gates = self.gates.evaluate(state, plan, now)
        at = next(i for i, g in enumerate(gates) if g.name == "already_held")
        gates[at] = GateResult("already_held", held is None, "flat" if held is None else
                               f"{held.symbol} {held.describe()}", "one option position per underlying",
                               "ok" if held is None else f"an option of {rec.symbol} already held")
        gates.extend(entry.gates)
        quote = entry.choice.quote
        if quote is not None and quote.modelled:
            gates.append(GateResult("option_chain", True, "modelled", None,
                                    "chain priced by Black-Scholes, not quoted: a modelled result"))
        halted = self.halted
        if halted is not None:
            gates.insert(0, GateResult("halted", False, halted.reason, "trading on",
                                       f"halted by the operator at {halted.at:%Y-%m-%d %H:%M:%S}Z"))
        reason = failure_reason(gates)
        if order is None or quote is None:
            reason = reason or "option_contract: no order"
            status, qty, price, symbol = ex.SKIPPED, None, None, rec.symbol
        else:
            symbol, qty, price = order.contract, float(order.qty), order.limit_price
            if reason is not None:
                status = ex.SKIPPED
            else:
                ask = fillable_ask(quote)
                status = ex.SIMULATED if ask is not None and ask <= order.limit_price else ex.SUBMITTED
        execution = ex.build_execution(
            recommendation_id=rec.id, account=config.name, symbol=symbol, action="BUY", status=status,
            gates=gates, failure_reason=reason, qty=qty, price=price, bar_used_ts=rec.ts, mode=config.mode,
            decided_at=stamp, intent="entry",
        )
        self.apply(execution)
        if status == ex.SIMULATED and quote is not None:
            self._quotes[quote.contract] = quote
        return execution

    def _unrecorded(self, underlying: str) -> bool:
        """No quoted (not modelled) chain record of `underlying` seen: a research run models it."""
        return not any(not q.modelled for q in self.chains.quotes(underlying))

    def _held_on(self, underlying: str) -> OpenPosition | None:
        for pos in self.state.book:
            occ = parse_occ(pos.symbol)
            if occ is not None and occ.underlying == underlying:
                return pos
        return None

    def _reversal(self, rec: Recommendation, pos: OpenPosition, now: datetime, stamp: datetime) -> Execution:
        """A signal against the held option (SELL on a call, BUY on a put) sells it at the bid of
        its latest fresh quote; without one (or while its orders are in flight) the signal is
        SKIPPED with the reason: no sale at a made-up price."""
        quote = self._fresh_quote(pos.symbol, now)
        detail = f"{rec.action} signal {rec.id} reverses the {pos.symbol} position"
        if quote is not None and pos.status == OPEN:
            return self._option_exit(rec.id, pos, quote, rec.ts, now, "reversal", detail, stamp)
        why = "in flight" if pos.status != OPEN else "no fresh quote to sell at"
        execution = ex.build_execution(
            recommendation_id=rec.id, account=self.config.name, symbol=pos.symbol, action="SELL",
            status=ex.SKIPPED, gates=[ex.exit_gate("reversal", detail)],
            failure_reason=f"reversal: {pos.symbol} {why}", qty=pos.qty, price=None, bar_used_ts=rec.ts,
            mode=self.config.mode, decided_at=stamp, intent="exit",
        )
        self.apply(execution)
        return execution

    def _fresh_quote(self, contract: str, now: datetime) -> OptionQuote | None:
        q = self._quotes.get(contract)
        if q is None or (now - q.as_of).total_seconds() > self.options.max_chain_age_s:
            return None
        return q

    def _option_exit(self, rid: str, pos: OpenPosition, quote: OptionQuote, bar_ts: datetime, now: datetime,
                     reason: str, detail: str, stamp: datetime | None = None) -> Execution:
        """Sells the whole position at the quote's bid (a simulate account's exit fills there)."""
        price = quote.bid
        assert price is not None
        plan = OrderPlan(pos.symbol, "SELL", "exit", 1.0, bar_ts, price, pos.qty)
        gates = self.gates.evaluate(self.state, plan, now)
        quoted = "modelled" if quote.modelled else "quoted"
        when = f"{quote.as_of:%Y-%m-%d %H:%M:%S}Z"
        gates.append(ex.exit_gate(reason, f"{detail}; at the bid {price:g} {quoted} {when}"))
        execution = ex.build_execution(
            recommendation_id=rid, account=self.config.name, symbol=pos.symbol, action="SELL",
            status=ex.SIMULATED, gates=gates, failure_reason=None, qty=pos.qty, price=price,
            bar_used_ts=bar_ts,
            mode=self.config.mode, decided_at=self._stamp(now) if stamp is None else stamp, intent="exit",
        )
        self.apply(execution)
        if self.state.book.get(pos.symbol) is None:
            self._quotes.pop(pos.symbol, None)
        return execution

    def _rule_exits(self, now: datetime) -> list[Execution]:
        """Stop and target on the premium (the latest fresh quote's mid), and the close
        `option_close_days_before_expiry` trading days before expiry, of every open position."""
        opts, out = self.options, []
        today = trading_day(now)
        close_days = self.config.option_close_days_before_expiry
        for pos in self.state.book:
            quote = self._fresh_quote(pos.symbol, now)
            occ = parse_occ(pos.symbol)
            if pos.status != OPEN or quote is None or occ is None or quote.bid is None or quote.ask is None:
                continue
            mid = (quote.bid + quote.ask) / 2.0
            left = sessions_until(self.calendar, today, occ.expiration)
            rule: tuple[str, str] | None = None
            if opts.stop_loss_pct is not None and mid <= pos.avg_price * (1.0 - opts.stop_loss_pct / 100.0):
                rule = ("stop_loss", f"premium {mid:g} fell {opts.stop_loss_pct:g}% below {pos.avg_price:g}")
            elif (opts.take_profit_pct is not None
                  and mid >= pos.avg_price * (1.0 + opts.take_profit_pct / 100.0)):
                rule = ("take_profit",
                        f"premium {mid:g} rose {opts.take_profit_pct:g}% above {pos.avg_price:g}")
            elif today > occ.expiration or left <= close_days:
                rule = ("option_expiry",
                        f"{left} trading day(s) to expiry {occ.expiration}, close at {close_days}")
            if rule is not None:
                rid = ex.exit_id(self.config.name, pos.entry_id, pos.exit_attempts)
                if rid not in self._status:
                    out.append(self._option_exit(rid, pos, quote, quote.as_of, now, *rule))
        return out

    def option_flatten(self, now: datetime, detail: str) -> list[Execution]:
        """The operator's halt --flatten: every open option sold at the bid of its latest fresh
        quote; one without such a quote stays open (no sale at a made-up price)."""
        out = []
        for pos in self.state.book:
            quote = self._fresh_quote(pos.symbol, now)
            rid = ex.exit_id(self.config.name, pos.entry_id, pos.exit_attempts)
            if pos.status == OPEN and quote is not None and rid not in self._status:
                out.append(self._option_exit(rid, pos, quote, now - timedelta(minutes=1), now,
                                             "operator_flatten", detail))
        return out

    def note_resting(self, execution: Execution) -> None:
        """Bookkeeping of apply(): a simulate option entry SUBMITTED rests; any later status ends it."""
        rid = execution.recommendation_id
        if execution.status == ex.SUBMITTED and execution.intent == "entry" and execution.mode == "simulate":
            self._resting[rid] = execution
        else:
            self._resting.pop(rid, None)

    def expire_resting(self, now: datetime) -> list[Execution]:
        """Cancels (FAILED) the resting orders older than cancel_after_minutes at `now`."""
        if not self._resting:
            return []
        wait = timedelta(minutes=self.options.cancel_after_minutes)
        out: list[Execution] = []
        for e in list(self._resting.values()):
            if now >= e.decided_at + wait:
                done = replace(e, status=ex.FAILED, failure_reason=(
                    f"canceled: limit {e.price:g} unfilled after {self.options.cancel_after_minutes} min"))
                self.apply(done)
                out.append(done)
        return out

    def on_chain_quote(self, quote: OptionQuote, now: datetime) -> list[Execution]:
        """Folds one options.quotes record: into the chain book, then as a fill of a resting order
        on its contract whose limit its ask reaches (at the limit: the price the order named)."""
        self.chains.add(quote)
        out = self.expire_resting(now)
        ask = fillable_ask(quote)
        if ask is None:
            return out
        if self.state.book.get(quote.contract) is not None:
            held = self._quotes.get(quote.contract)
            if held is None or quote.as_of >= held.as_of:
                self._quotes[quote.contract] = quote
                self._marks[quote.contract] = (quote.bid + ask) / 2.0  # type: ignore[operator]
        for e in list(self._resting.values()):
            if e.symbol == quote.contract and e.price is not None and ask <= e.price \
                    and quote.as_of > e.decided_at:
                filled = replace(e, status=ex.SIMULATED)
                self.apply(filled)
                out.append(filled)
                self._quotes[quote.contract] = quote
        out.extend(self._rule_exits(now))
        return out

    def rebuild_quotes(self, records: Iterable[object]) -> int:
        """A restart: folds the options.quotes history (what the desk had seen by its last decision)
        into the chain book and the held contracts' quotes, deciding nothing."""
        quotes = sorted((r for r in records if isinstance(r, OptionQuote)), key=broker_key)
        book = self.state.book
        for q in quotes:
            self.chains.add(q)
            if book.get(q.contract) is not None and fillable_ask(q) is not None:
                held = self._quotes.get(q.contract)
                if held is None or q.as_of >= held.as_of:
                    self._quotes[q.contract] = q
        return len(quotes)

    def option_bar(self, symbol: str, close: float, now: datetime) -> list[Execution]:
        """What a bar does to an option account: resting orders time out, positions near expiry
        close (its positions are marked by quotes, never by the underlying's close; in a research
        run, by quotes the model prices from it)."""
        out = self.expire_resting(now)
        iv = self.synthetic_iv
        if iv is not None and math.isfinite(close) and close > 0 and self._unrecorded(symbol):
            for pos in self.state.book:
                occ = parse_occ(pos.symbol)
                if occ is not None and occ.underlying == symbol and occ.expiration >= trading_day(now):
                    quote = modelled_quote(occ, close, now, iv=iv, rate=MODEL_RATE)
                    out.extend(self.on_chain_quote(quote, now))
        out.extend(self._rule_exits(now))
        return out
