"""The accounts traded, and the desk that decides for one: the account's only writer, through which
entries, reversals and rule exits pass the same gates, and which rebuilds from the executions topic.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.records import ControlEvent, Execution, GateResult, OptionQuote, Recommendation
from trading import execution as ex
from trading.broker import BrokerView
from trading.calendar import NEW_YORK, SessionCalendar, trading_day
from trading.clock import MINUTE
from trading.control import Halt, applies_to, changed_config
from trading.gates import (
    DEFAULT_ACCOUNTS,
    AccountConfig,
    AccountState,
    GateEvaluator,
    OrderPlan,
    entry_window,
    failure_reason,
)
from trading.option_chain import ChainBook
from trading.option_desk import OptionDesk
from trading.positions import OpenPosition
from trading.reconcile import BrokerTruth

_TICK = timedelta(microseconds=1)
_NO_EXITS: tuple[Execution, ...] = ()
_NONE: Any = object()
_BASES = {a.name: a for a in DEFAULT_ACCOUNTS}
_Day = tuple[datetime, datetime, datetime | None, date, datetime, datetime, datetime | None]


# -- configuration ------------------------------------------------------------------------------


def parse_accounts(data: Any) -> tuple[AccountConfig, ...]:
    """Accounts from decoded JSON/TOML: a list of objects or {"accounts": [...]}.

    An object may name a "base" ("large-100k" or "tiny-1k") whose defaults it overrides.
    """
    if isinstance(data, dict):
        data = data.get("accounts")
    if not isinstance(data, list) or not data:
        raise ValueError("accounts: expected a non-empty list of account objects")
    out: list[AccountConfig] = []
    for raw in data:
        if not isinstance(raw, dict):
            raise ValueError(f"accounts: {raw!r} is not an object")
        raw = dict(raw)
        base_name = raw.pop("base", None)
        if base_name is not None:
            base = _BASES.get(base_name)
            if base is None:
                raise ValueError(f"accounts: unknown base {base_name!r} (known: {sorted(_BASES)})")
            merged = base.to_dict()
            exits = {**merged.pop("exits"), **raw.pop("exits", {})}
            merged.update(raw)
            merged["exits"] = exits
            raw = merged
        out.append(AccountConfig.from_dict(raw))
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        raise ValueError(f"accounts: duplicate names in {names}")
    return tuple(out)


def load_accounts(value: str | Path | None) -> tuple[AccountConfig, ...]:
    """PIPELINE_ACCOUNTS: unset -> the defaults; inline JSON; or a path to a .json/.toml file."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_ACCOUNTS
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        return parse_accounts(json.loads(value))
    path = Path(value)
    text = path.read_text("utf-8")
    if path.suffix == ".toml":
        return parse_accounts(tomllib.loads(text))
    return parse_accounts(json.loads(text))


def accounts_from_settings(settings: Any) -> tuple[AccountConfig, ...]:
    return load_accounts(getattr(settings, "pipeline_accounts", None))


# -- the desk -----------------------------------------------------------------------------------


class AccountDesk(OptionDesk, BrokerTruth):
    """Decides for one account: exactly one Execution per (recommendation, account)."""

    __slots__ = ("config", "calendar", "gates", "state", "_status", "_submitted", "_marks", "_day_cache",
                 "_last_stamp", "broker", "_in_flight", "_coids", "_broker_ids", "_reported", "_cash_flow",
                 "_external_attempts", "_external_orders", "halted", "_control_seen", "chains", "_resting",
                 "_quotes", "synthetic_iv")

    def __init__(self, config: AccountConfig, calendar: SessionCalendar) -> None:
        self.config = config
        self.calendar = calendar
        self.gates = GateEvaluator(config, calendar)
        self.state = AccountState(config.exits)
        self._status: dict[str, str] = {}  # recommendation id -> latest execution status
        self._submitted: dict[str, Execution] = {}  # orders whose outcome is not known yet
        self._marks: dict[str, float] = {}  # last close of each held symbol
        # the trading day last looked up (see _day)
        self._day_cache: _Day | None = None
        self._last_stamp: datetime | None = None
        # the broker's truth (alpaca-paper accounts; see trading.reconcile)
        self.broker = BrokerView()
        self._in_flight: list[tuple[datetime, float]] = []
        self._coids: set[str] = set()
        self._broker_ids: set[str] = set()
        self._reported: set[str] = set()
        self._cash_flow = 0.0
        self._external_attempts: dict[str, int] = {}
        self._external_orders: dict[str, str] = {}
        # the operator's control (trading.control): a halt, and the changes already applied
        self.halted: Halt | None = None
        self._control_seen: set[str] = set()
        # option accounts (trading.option_desk): the chains seen, the simulate orders resting
        self.chains = ChainBook()
        self._resting: dict[str, Execution] = {}
        self._quotes: dict[str, OptionQuote] = {}
        self.synthetic_iv: float | None = None  # a research backtest's modelled chains (option_desk)

    def _stamp(self, now: datetime) -> datetime:
        """decided_at: the clock time, nudged by microseconds to be strictly increasing per account,
        so sorting the executions topic by it gives back the order of the decisions."""
        last = self._last_stamp
        if last is not None and now <= last:
            now = last + _TICK
        self._last_stamp = now
        return now

    @property
    def name(self) -> str:
        return self.config.name

    def status_of(self, recommendation_id: str) -> str | None:
        return self._status.get(recommendation_id)

    def last_decided(self) -> datetime | None:
        """decided_at of the latest decision folded in (None before any)."""
        return self._last_stamp

    def decided_count(self) -> int:
        return len(self._status)

    def submitted(self) -> list[Execution]:
        """Orders sent (or being sent) whose outcome is not known: what a reconcile pass checks."""
        return list(self._submitted.values())

    # -- decisions ------------------------------------------------------------------------------

    def on_recommendation(self, rec: Recommendation, now: datetime) -> Execution | None:
        """The decision on `rec`, or None if this account already decided on it."""
        if rec.id in self._status:
            return None
        stamp = self._stamp(now)
        state = self.state
        state.roll(self._day(now)[3])
        close = rec.features.get("close")
        price = float(close) if close is not None else float("nan")
        pos = state.book.reverses(rec.symbol, rec.action)
        if pos is not None:
            return self._exit(rec.id, pos, price, rec.ts, now, "reversal",
                              f"{rec.action} signal {rec.id} reverses the position", stamp)
        config = self.config
        if config.instrument == "option":
            return self._option_entry(rec, now, stamp)
        qty = ex.entry_qty(config.notional_per_trade, price, fractional=config.fractional)
        plan = OrderPlan(rec.symbol, rec.action, "entry", rec.confidence, rec.ts, price, qty)
        if config.uses_broker:
            gates = self.gates.evaluate(state, plan, now, self.broker, self.in_flight())
        else:
            gates = self.gates.evaluate(state, plan, now)
        halted = self.halted
        if halted is not None:  # first: nothing else matters while the operator holds entries
            gates.insert(0, GateResult("halted", False, halted.reason, "trading on",
                                       f"halted by the operator at {halted.at:%Y-%m-%d %H:%M:%S}Z"))
        reason = failure_reason(gates)
        if reason is not None:
            status, fill = ex.SKIPPED, None
        elif config.mode == "simulate":
            status, fill = ex.SIMULATED, ex.simulated_price(rec.action, price, config.slippage_bps)
        else:
            status, fill = ex.SUBMITTED, price  # the reference price until the broker fills it
        execution = ex.build_execution(
            recommendation_id=rec.id,
            account=config.name,
            symbol=rec.symbol,
            action=rec.action,
            status=status,
            gates=gates,
            failure_reason=reason,
            qty=qty,
            price=fill,
            bar_used_ts=rec.ts,
            mode=config.mode,
            decided_at=stamp,
            intent="entry",
            with_client_order_id=config.mode != "simulate" and reason is None,
        )
        self.apply(execution)
        return execution

    def on_bar(self, symbol: str, ts: datetime, close: float, now: datetime) -> Sequence[Execution]:
        """Exits this bar triggers: the symbol's own rules, then end-of-session for every position."""
        book = self.state.book
        positions = book._positions
        if not positions:  # the common case, kept to one check
            return _NO_EXITS
        if self.config.instrument == "option":
            return self.option_bar(symbol, close, now) or _NO_EXITS
        day = self._day_cache
        # day[4]/day[5]: the day's bounds less a minute, so the bar's start is compared with them
        # (bar_end = ts + MINUTE in [start, end)) without making bar_end on every call
        if day is None or not day[4] <= ts < day[5]:
            day = self._day(ts + MINUTE)
        flatten_from = day[6]
        flatten = flatten_from is not None and ts >= flatten_from
        pos = positions.get(symbol)
        if pos is None and not flatten:  # a bar of a symbol this account does not hold
            return _NO_EXITS
        out: list[Execution] = []
        # Only bars after the last one that acted on the position (its entry, a failed exit) count:
        # a bar redelivered after a restart can be older.
        if pos is not None and ts > pos.last_bar:
            self._marks[symbol] = close
            stale = pos.opened_at < day[0]  # left open from an earlier day
            reason = book.check_bar(symbol, close, flatten or stale)
            if reason is not None:
                out.append(self._rule_exit(pos, close, ts, now, reason))
        if flatten and self.config.exits.flat_at_close:
            for other in book:
                if other.status == "OPEN" and other.symbol != symbol and ts > other.last_bar:
                    mark = self._marks.get(other.symbol, other.avg_price)
                    out.append(self._rule_exit(other, mark, ts, now, "end_of_session"))
        return out or _NO_EXITS

    def _rule_exit(self, pos: OpenPosition, price: float, ts: datetime, now: datetime,
                   reason: str) -> Execution:
        detail = {
            "stop_loss": f"close {price:.4f} crossed stop {pos.stop:.4f}",
            "take_profit": f"close {price:.4f} reached target {pos.target:.4f}",
            "trailing_stop": f"close {price:.4f} fell back from {pos.extreme:.4f}",
            "end_of_session": "flat before the close",
        }.get(reason, reason)
        rid = ex.exit_id(self.config.name, pos.entry_id, pos.exit_attempts)
        out = self._exit(rid, pos, price, ts, now, reason, detail)
        assert out is not None
        return out

    def _exit(self, rid: str, pos: OpenPosition, price: float, bar_ts: datetime, now: datetime,
              reason: str, detail: str, stamp: datetime | None = None) -> Execution | None:
        if rid in self._status:
            return None
        if stamp is None:
            stamp = self._stamp(now)
        config = self.config
        action = pos.exit_action
        plan = OrderPlan(pos.symbol, action, "exit", 1.0, bar_ts, price, pos.qty)
        gates = self.gates.evaluate(self.state, plan, now, self.broker if config.uses_broker else None)
        gates.append(ex.exit_gate(reason, detail))
        if config.mode == "simulate":
            status, fill = ex.SIMULATED, ex.simulated_price(action, price, config.slippage_bps)
        else:
            status, fill = ex.SUBMITTED, price
        execution = ex.build_execution(
            recommendation_id=rid,
            account=config.name,
            symbol=pos.symbol,
            action=action,
            status=status,
            gates=gates,
            failure_reason=None,
            qty=pos.qty,
            price=fill,
            bar_used_ts=bar_ts,
            mode=config.mode,
            decided_at=stamp,
            intent="exit",
            with_client_order_id=config.mode != "simulate",
        )
        self.apply(execution)
        return execution

    # -- the operator's control -------------------------------------------------------------------

    def on_control(self, event: ControlEvent, now: datetime, *, rebuilding: bool = False) -> list[Execution]:
        """Applies a halt, resume or setting change meant for this account, once per event; a halt
        with flatten closes the open positions (not while `rebuilding`: those exits are on record)."""
        if not applies_to(event, self.config.name) or event.id in self._control_seen:
            return []
        self._control_seen.add(event.id)
        if event.action == "resume":
            self.halted = None
            return []
        if event.action == "set":
            try:
                config = changed_config(self.config, event.settings)
            except ValueError:
                return []  # refused at publication; an old or hand-made record changes nothing
            self.config = config
            self.gates = GateEvaluator(config, self.calendar)
            self.state.book.rules = config.exits
            self._day_cache = None
            return []
        self.halted = Halt(event.reason or "halted", event.at, event.id)
        if not event.flatten or rebuilding:
            return []
        out: list[Execution] = []
        bar_ts = now - MINUTE
        if self.config.instrument == "option":  # at quoted bids only (trading.option_desk)
            return self.option_flatten(now, f"halt --flatten: {event.reason}")
        for pos in self.state.book:
            if pos.status == "OPEN":
                mark = self._marks.get(pos.symbol, pos.avg_price)
                out.append(self._exit(ex.exit_id(self.config.name, pos.entry_id, pos.exit_attempts), pos,
                                      mark, bar_ts, now, "operator_flatten",
                                      f"halt --flatten: {event.reason}") or _NONE)
        return [e for e in out if e is not _NONE]

    # -- folding executions into the state ------------------------------------------------------

    def apply(self, execution: Execution) -> bool:
        """Folds one execution record (a decision or a later status of it) into the state.

        Idempotent per (id, status): a record seen again changes nothing. Returns whether the
        state changed. Used for the desk's own decisions, for broker updates, and to rebuild the
        state from the executions topic in order.
        """
        if execution.account != self.config.name:
            return False
        rid = execution.recommendation_id
        prev = self._status.get(rid)
        status = execution.status
        if prev == status:
            if status == ex.SUBMITTED and execution.broker_order_id:
                self._submitted[rid] = execution  # the broker's id became known
                self._broker_ids.add(execution.broker_order_id)
            return False
        if prev is not None and prev != ex.SUBMITTED:
            return False  # final statuses do not change
        self.note_decision(execution)
        if self.config.instrument == "option":
            self.note_resting(execution)
        if execution.intent in (ex.EXTERNAL_EXIT, ex.ADJUST):
            return self._apply_broker_intent(execution, prev)
        state = self.state
        book = state.book
        symbol = execution.symbol
        entry = execution.intent == "entry"
        if prev is None:
            if self._last_stamp is None or execution.decided_at > self._last_stamp:
                self._last_stamp = execution.decided_at
            state.roll(self._day(execution.decided_at)[3])
            if status != ex.SKIPPED:
                state.record_submit(execution.decided_at)
                if entry:
                    state.trades_today += 1
        qty = execution.qty or 0.0
        price = execution.price if execution.price is not None else 0.0
        if status in (ex.SIMULATED, ex.FILLED):
            if entry:
                if prev is None:
                    self._open(execution, qty, price, pending=False)
                else:
                    book.fill_entry(symbol, qty, price)
            else:
                state.realize(book.close(symbol, qty, price), self.config)
                if book.get(symbol) is None:
                    self._marks.pop(symbol, None)
        elif status == ex.SUBMITTED:
            if entry:
                self._open(execution, qty, price, pending=True)
            else:
                book.begin_exit(symbol)
        elif status == ex.FAILED and prev == ex.SUBMITTED:
            if entry:
                book.cancel_entry(symbol)
            else:
                book.abort_exit(symbol, execution.bar_used_ts)
        if status == ex.SUBMITTED:
            self._submitted[rid] = execution
        else:
            self._submitted.pop(rid, None)
        self._status[rid] = status
        return True

    def _apply_broker_intent(self, execution: Execution, prev: str | None) -> bool:
        """An external exit (status only: the book never held it) or an adopted quantity."""
        rid = execution.recommendation_id
        status = execution.status
        if prev is None:
            self.state.roll(self._day(execution.decided_at)[3])
            if self._last_stamp is None or execution.decided_at > self._last_stamp:
                self._last_stamp = execution.decided_at
            if execution.intent == ex.EXTERNAL_EXIT and status != ex.SKIPPED:
                self.state.record_submit(execution.decided_at)
        if execution.intent == ex.EXTERNAL_EXIT:
            self.fold_external(execution)
        elif status in (ex.FILLED, ex.SIMULATED):
            pos = self.state.book.get(execution.symbol)
            if pos is not None and execution.qty:
                pos.qty = execution.qty
                pos.side = 1 if execution.action == "BUY" else -1
                if execution.price:
                    pos.set_price(execution.price, self.state.book.rules)
        if status == ex.SUBMITTED:
            self._submitted[rid] = execution
        else:
            self._submitted.pop(rid, None)
        self._status[rid] = status
        return True

    def _flatten_now(self, now: datetime) -> bool:
        flatten_at = self._day(now)[2]
        return flatten_at is not None and now >= flatten_at

    def _open(self, execution: Execution, qty: float, price: float, *, pending: bool) -> None:
        book = self.state.book
        if book.get(execution.symbol) is not None:
            return  # only a history that lost a record can get here; the open position stands
        book.open(execution.symbol, execution.action, qty, price,
                  execution.bar_used_ts or execution.decided_at, execution.recommendation_id,
                  pending=pending)

    def rebuild(self, executions: Iterable[Execution]) -> int:
        """Folds a history of executions (this account's are picked) in decision order, with the
        last closes they tell: an exit sent to the broker carries the close (or mark) it was decided
        at, which stays the mark of a position whose exit failed. Bars that decided nothing are
        not in executions: the mark is the last close any exit was decided at."""
        mine = [e for e in executions if e.account == self.config.name]
        mine.sort(key=lambda e: e.decided_at)  # stable: a record's later statuses stay after it
        changed = 0
        for e in mine:
            changed += self.apply(e)
            if (e.intent == "exit" and e.status == ex.SUBMITTED and e.price is not None
                    and ex.exit_reason_of(e) != "reversal" and self.state.book.get(e.symbol) is not None):
                self._marks[e.symbol] = e.price  # a fill that closes the position drops it again
        return changed

    # -- the trading day ------------------------------------------------------------------------

    def _day(self, at: datetime) -> _Day:
        """(start, end, flatten-at, date, and the three times less a minute) of the trading day of
        `at`, times in UTC (fast to compare), cached: most calls fall in the day of the previous one."""
        cache = self._day_cache
        if cache is not None and cache[0] <= at < cache[1]:
            return cache
        day = trading_day(at)
        start = _ny_midnight(day).astimezone(UTC)
        end = _ny_midnight(day + timedelta(days=1)).astimezone(UTC)
        try:
            window = entry_window(self.config, self.calendar, day)
        except LookupError:
            window = None
        flatten_at = None if window is None else window[1]
        cache = (start, end, flatten_at, day, start - MINUTE, end - MINUTE,
                 None if flatten_at is None else flatten_at - MINUTE)
        self._day_cache = cache
        return cache


def _ny_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=NEW_YORK)


def with_status(execution: Execution, status: str, **changes: Any) -> Execution:
    """A later status of the same decision (decided_at and gates unchanged)."""
    return replace(execution, status=status, **changes)
