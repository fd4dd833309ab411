"""The desk's side of the broker's truth: snapshots folded in event-time order, differences with the
desk's book reported and adopted (the broker wins; nothing is ever ordered to fix a difference), and
exits of positions the pipeline did not open, when the account asks for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from schemas.records import (
    BrokerAccount,
    BrokerPosition,
    ControlEvent,
    EquityPoint,
    Execution,
    OptionQuote,
    ReconcileEvent,
)
from trading import execution as ex
from trading.broker import BrokerView, describe_position, external_exit_reason
from trading.calendar import SessionCalendar, trading_day
from trading.execution import ADJUST, EXTERNAL_EXIT
from trading.gates import GATE_ORDER, GateResult
from trading.options import multiplier
from trading.positions import EXITING, OPEN, PENDING

if TYPE_CHECKING:
    from trading.gates import AccountConfig, AccountState

_NOTHING: tuple[list[Execution], list[ReconcileEvent]] = ([], [])
_QTY_TOLERANCE = 1e-6


def _skipped_gates(reason: str, detail: str) -> list[GateResult]:
    skipped = "skipped: exits are never blocked"
    gates = [GateResult(name, True, None, None, skipped) for name in ("broker_state", *GATE_ORDER)]
    gates.append(ex.exit_gate(reason, detail))
    return gates


class BrokerTruth:
    """Mixed into AccountDesk: everything that reads broker.accounts, broker.positions and
    options.quotes. Live, the dispatch agent feeds the records in canonical order; the backtester
    feeds the same records at the same points, so both decide alike."""

    __slots__ = ()
    config: AccountConfig
    state: AccountState
    broker: BrokerView
    _status: dict[str, str]
    _in_flight: list[tuple[datetime, float]]
    _coids: set[str]
    _broker_ids: set[str]
    _reported: set[str]
    _cash_flow: float
    _external_attempts: dict[str, int]  # symbol -> failed exits so far (a retry gets a new id)
    _external_orders: dict[str, str]  # symbol -> the external exit in flight
    _submitted: dict[str, Execution]
    calendar: SessionCalendar

    if TYPE_CHECKING:
        def on_control(self, event: ControlEvent, now: datetime) -> list[Execution]: ...
        def _stamp(self, now: datetime) -> datetime: ...
        def apply(self, execution: Execution) -> bool: ...
        def _flatten_now(self, now: datetime) -> bool: ...
        def on_chain_quote(self, quote: OptionQuote, now: datetime) -> list[Execution]: ...

    # -- what the gates need ---------------------------------------------------------------------

    def in_flight(self) -> float:
        """Notional of entries decided after the latest account snapshot (not in its buying power)."""
        acct = self.broker.account
        flights = self._in_flight
        if acct is not None:
            while flights and flights[0][0] <= acct.as_of:
                flights.pop(0)
        return sum(n for _, n in flights)

    def note_decision(self, execution: Execution) -> None:
        """Bookkeeping of a decision or status the desk applied (called by apply)."""
        if execution.client_order_id:
            self._coids.add(execution.client_order_id)
        if execution.broker_order_id:
            self._broker_ids.add(execution.broker_order_id)
        if execution.intent == "entry" and execution.status in (ex.SUBMITTED, ex.FILLED, ex.SIMULATED) \
                and execution.qty and execution.price:
            if self._status.get(execution.recommendation_id) is None:
                self._in_flight.append((execution.decided_at, execution.qty * execution.price))
        if execution.status == ex.FILLED and execution.qty and execution.price:
            signed = execution.qty if execution.action == "BUY" else -execution.qty
            self._cash_flow -= signed * execution.price * multiplier(execution.symbol)

    # -- records from the broker ------------------------------------------------------------------

    def on_broker(self, record: Any, now: datetime) -> tuple[list[Execution], list[ReconcileEvent]]:
        """Folds one broker record of this account; the executions (adoptions, external exits) and
        reconcile events it causes."""
        if isinstance(record, OptionQuote):
            return self.on_option_quote(record, now)
        if isinstance(record, ControlEvent):
            return self.on_control(record, now), []
        if getattr(record, "account", None) != self.config.name or not self.config.uses_broker:
            return _NOTHING
        if isinstance(record, BrokerAccount):
            return [], self._on_account(record, now)
        if isinstance(record, BrokerPosition):
            return self._on_position(record, now)
        return _NOTHING

    def _event(self, rec: Any, now: datetime, kind: str, symbol: str | None, desk: str, broker: str,
               action: str, detail: str) -> ReconcileEvent:
        return ReconcileEvent(self.config.name, rec.as_of, now, kind, symbol, desk, broker, action, detail)

    def _on_account(self, rec: BrokerAccount, now: datetime) -> list[ReconcileEvent]:
        prev = self.broker.account
        if not self.broker.apply_account(rec):
            return []
        events: list[ReconcileEvent] = []
        if prev is not None:
            expected = prev.cash + self._cash_flow
            drift = rec.cash - expected
            if abs(drift) > self.config.cash_drift_tolerance:
                events.append(self._event(
                    rec, now, "cash_drift", None, f"cash {expected:.2f} expected", f"cash {rec.cash:.2f}",
                    "adopted", f"{drift:+.2f} not explained by the desk's fills (manual trades, fees, "
                               "transfers); the broker's cash stands"))
        self._cash_flow = 0.0
        for order in rec.open_orders:
            if order.id in self._reported:
                continue
            ours = (order.client_order_id is not None and order.client_order_id in self._coids) or (
                order.parent_id is not None and order.parent_id in self._broker_ids) or (
                order.id in self._broker_ids)
            if not ours:
                self._reported.add(order.id)
                events.append(self._event(
                    rec, now, "unknown_order", order.symbol, "no such order",
                    f"{order.side} {order.qty} {order.order_type} ({order.status})", "watching",
                    f"open order {order.id} was not placed by the pipeline; left alone"))
        return events

    def _on_position(self, rec: BrokerPosition, now: datetime) -> tuple[list[Execution], list[ReconcileEvent]]:
        view = self.broker
        prev = view.apply_position(rec)
        if prev is False:
            return _NOTHING
        assert prev is not True
        mine = self.state.book.get(rec.symbol)
        if mine is not None and self.config.mode != "alpaca-paper":
            return _NOTHING  # a shadow account's positions are simulated: nothing to reconcile
        broker_qty = rec.qty
        execs: list[Execution] = []
        events: list[ReconcileEvent] = []
        if mine is None:
            if abs(broker_qty) > _QTY_TOLERANCE:
                if prev is None:
                    manage = self.config.manage_external
                    events.append(self._event(
                        rec, now, "unknown_position", rec.symbol, "flat", describe_position(rec),
                        {"off": "none", "monitor": "watching", "exit": "managed"}[manage],
                        f"a position the desk did not open (manage_external={manage})"))
                made = self._external_exit(rec, now)
                if made is not None:
                    execs.append(made)
            return execs, events
        if mine.status == EXITING:
            return _NOTHING  # its own exit is in flight: the fill (or reconcile by order) settles it
        if mine.status == PENDING:
            if abs(broker_qty) > _QTY_TOLERANCE:
                entry = self._adopt_fill(mine.entry_id, rec, now)
                if entry is not None:
                    execs.append(entry)
                    events.append(self._event(
                        rec, now, "missed_fill", rec.symbol, mine.describe(), describe_position(rec),
                        "adopted", "the entry filled at the broker; the desk missed the fill"))
            return execs, events
        assert mine.status == OPEN
        if abs(broker_qty) <= _QTY_TOLERANCE:
            price = rec.current_price if rec.current_price is not None else mine.avg_price
            execs.append(self._adopted(mine.entry_id, mine.symbol, mine.exit_action, mine.qty, price, rec,
                                       now, "exit", "closed_at_broker",
                                       "the position was closed at the broker (a manual trade or a "
                                       "protective order)"))
            events.append(self._event(rec, now, "closed_at_broker", rec.symbol, mine.describe(), "flat",
                                      "adopted", f"closed at {price:.4f}; the desk's book follows"))
        elif abs(abs(broker_qty) - mine.qty) > _QTY_TOLERANCE or (broker_qty > 0) != (mine.side > 0):
            action = "BUY" if broker_qty > 0 else "SELL"
            execs.append(self._adopted(mine.entry_id, mine.symbol, action, abs(broker_qty),
                                       rec.avg_entry_price, rec, now, ADJUST, "quantity",
                                       f"broker holds {broker_qty:g}, the desk {mine.qty * mine.side:g}"))
            events.append(self._event(rec, now, "quantity", rec.symbol, mine.describe(),
                                      describe_position(rec), "adopted",
                                      "the desk adopts the broker's quantity and average price"))
        return execs, events

    def on_option_quote(self, quote: OptionQuote, now: datetime) -> tuple[list[Execution], list[ReconcileEvent]]:
        if self.config.instrument == "option":  # never on the broker's truth (AccountConfig)
            return self.on_chain_quote(quote, now), []
        view = self.broker
        if not view.apply_quote(quote):
            return _NOTHING
        pos = view.positions.get(quote.contract)
        if pos is None or self.state.book.get(quote.contract) is not None:
            return _NOTHING
        made = self._external_exit(pos, now)
        return ([made] if made is not None else []), []

    # -- executions that record what the broker did ---------------------------------------------

    def _adopt_fill(self, entry_id: str, rec: BrokerPosition, now: datetime) -> Execution | None:
        if self._status.get(entry_id) != ex.SUBMITTED:
            return None
        submitted = self._submitted.get(entry_id)
        if submitted is None:
            return None
        update = replace(submitted, status=ex.FILLED, qty=abs(rec.qty), price=rec.avg_entry_price)
        self.apply(update)
        return update

    def _adopted(self, entry_id: str, symbol: str, action: str, qty: float, price: float,
                 rec: BrokerPosition, now: datetime, intent: str, reason: str, detail: str) -> Execution:
        """A FILLED record of what happened at the broker without an order of ours (never sent)."""
        rid = ex.uuid5_str(ex.EXIT_NAMESPACE, f"{self.config.name}|{entry_id}|{reason}|{rec.as_of.isoformat()}")
        execution = ex.build_execution(
            recommendation_id=rid, account=self.config.name, symbol=symbol, action=action,
            status=ex.FILLED, gates=_skipped_gates(reason, detail), failure_reason=None, qty=qty, price=price,
            bar_used_ts=rec.as_of, mode=self.config.mode, decided_at=self._stamp(now), intent=intent,
        )
        self.apply(execution)
        return execution

    def _external_exit(self, pos: BrokerPosition, now: datetime) -> Execution | None:
        """The exit of an external position its rules call for, once per (position, rule, day, attempt)."""
        config = self.config
        rule = external_exit_reason(self.broker, pos, config.external, self.calendar, now,
                                    self._flatten_now(now))
        if rule is None:
            return None
        reason, detail = rule
        day = trading_day(now)
        attempt = self._external_attempts.get(pos.symbol, 0)
        rid = ex.uuid5_str(ex.EXIT_NAMESPACE,
                           f"{config.name}|external|{pos.symbol}|{pos.as_of.date()}|{reason}|{day}|{attempt}")
        if rid in self._status or pos.symbol in self._external_orders:
            return None  # decided already, or another exit of it is in flight
        price, source = self.broker.mark(pos)
        live = config.mode == "alpaca-paper"
        execution = ex.build_execution(
            recommendation_id=rid, account=config.name, symbol=pos.symbol,
            action="SELL" if pos.qty > 0 else "BUY", status=ex.SUBMITTED if live else ex.SIMULATED,
            gates=_skipped_gates(reason, f"{detail}; mark {price} ({source})"), failure_reason=None,
            qty=abs(pos.qty), price=price, bar_used_ts=pos.as_of, mode=config.mode,
            decided_at=self._stamp(now), intent=EXTERNAL_EXIT, with_client_order_id=live,
        )
        self.apply(execution)
        return execution

    def fold_external(self, execution: Execution) -> None:
        """apply() of an external exit: at most one in flight per symbol; a failure allows a retry."""
        orders = self._external_orders
        if execution.status == ex.SUBMITTED:
            orders[execution.symbol] = execution.recommendation_id
        elif orders.get(execution.symbol) == execution.recommendation_id:
            del orders[execution.symbol]
            if execution.status == ex.FAILED:
                self._external_attempts[execution.symbol] = self._external_attempts.get(execution.symbol, 0) + 1


def equity_point(desk: Any, ts: datetime) -> EquityPoint:
    """The account's equity at `ts`: the broker's (alpaca-paper on its snapshots), else the desk's
    book marked at the latest closes it saw."""
    config = desk.config
    state = desk.state
    acct = desk.broker.account
    positions = state.book.count()
    if config.mode == "alpaca-paper" and config.uses_broker and acct is not None:
        return EquityPoint(config.name, ts, acct.equity, acct.cash, state.realized_total,
                           desk.broker.unrealized_total(), max(positions, len(desk.broker.positions)), "broker")
    cost = unrealized = 0.0
    for pos in state.book:
        mark = desk._marks.get(pos.symbol, pos.avg_price)
        cost += pos.side * pos.qty * pos.avg_price * pos.mult
        unrealized += pos.side * pos.qty * (mark - pos.avg_price) * pos.mult
    cash = config.starting_cash + state.realized_total - cost
    return EquityPoint(config.name, ts, config.starting_cash + state.realized_total + unrealized, cash,
                       state.realized_total, unrealized, positions, "book")


def rebuild_view(view: BrokerView, records: Sequence[Any]) -> int:
    """Folds a history of broker records into `view` (a restart), without deciding anything."""
    n = 0
    for r in sorted((r for r in records if hasattr(r, "as_of")), key=lambda r: r.as_of):
        if isinstance(r, BrokerAccount):
            n += view.apply_account(r)
        elif isinstance(r, BrokerPosition):
            n += view.apply_position(r) is not False
        elif isinstance(r, OptionQuote):
            n += view.apply_quote(r)
    return n
