"""Open positions of one account and the rules that close them (stop, target, trailing, flat at the
close, reversal): it decides, the account's desk trades, like any entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from schemas.records import Execution, Position
from trading.execution import (
    ADJUST,
    EXTERNAL_EXIT,
    FAILED,
    FILLED,
    SIMULATED,
    SKIPPED,
    SUBMITTED,
    exit_id,
    exit_reason_of,
)
from trading.options import multiplier

PENDING = "PENDING"  # entry order sent, not filled yet: counts toward limits already
OPEN = "OPEN"
EXITING = "EXITING"  # exit order sent, not filled yet: no second exit
_STATUSES = (PENDING, OPEN, EXITING)

EXIT_REASONS = ("stop_loss", "take_profit", "trailing_stop", "end_of_session", "reversal", "option_expiry")


@dataclass(frozen=True, slots=True)
class ExitRules:
    """How positions close. Percentages are fractions of the entry price."""

    stop_loss_pct: float = 0.02
    take_profit_pct: float = 0.04
    trailing_stop_pct: float | None = 0.015
    trailing_activation_pct: float = 0.015  # the trail arms once the position gained this much
    flat_at_close: bool = True
    exit_on_reversal: bool = True

    def __post_init__(self) -> None:
        if self.stop_loss_pct <= 0 or self.take_profit_pct <= 0:
            raise ValueError("stop_loss_pct and take_profit_pct must be positive")
        if self.trailing_stop_pct is not None and not 0 < self.trailing_stop_pct < 1:
            raise ValueError("trailing_stop_pct must be in (0, 1)")


class OpenPosition:
    """One position; side is +1 (long, entered by BUY) or -1 (short, entered by SELL)."""

    __slots__ = (
        "symbol",
        "side",
        "qty",
        "avg_price",
        "opened_at",
        "entry_id",
        "stop",
        "target",
        "extreme",
        "status",
        "exit_attempts",
        "last_bar",
        "mult",
    )

    def __init__(
        self,
        symbol: str,
        side: int,
        qty: float,
        avg_price: float,
        opened_at: datetime,
        entry_id: str,
        rules: ExitRules,
        status: str = OPEN,
    ) -> None:
        if side not in (1, -1):
            raise ValueError(f"side must be +1 or -1, not {side!r}")
        self.symbol = symbol
        self.side = side
        self.qty = qty
        self.opened_at = opened_at
        self.entry_id = entry_id
        self.status = status
        self.exit_attempts = 0
        # The latest bar that acted on the position (its entry, a failed exit): older or equal bars,
        # as redelivered after a restart, are ignored; both come back from the executions topic.
        self.last_bar = opened_at
        self.mult = multiplier(symbol)  # 100 for an option contract (prices are per share)
        self.set_price(avg_price, rules)

    def set_price(self, avg_price: float, rules: ExitRules) -> None:
        self.avg_price = avg_price
        self.stop = avg_price * (1.0 - self.side * rules.stop_loss_pct)
        self.target = avg_price * (1.0 + self.side * rules.take_profit_pct)
        self.extreme = avg_price

    @property
    def exit_action(self) -> str:
        return "SELL" if self.side == 1 else "BUY"

    def describe(self) -> str:
        side = "long" if self.side == 1 else "short"
        return f"{side} {self.qty:g} @ {self.avg_price:.4f} ({self.status})"

    def to_state(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "side": self.side,
            "qty": self.qty,
            "avg_price": self.avg_price,
            "opened_at": self.opened_at.isoformat(),
            "entry_id": self.entry_id,
            "stop": self.stop,
            "target": self.target,
            "extreme": self.extreme,
            "status": self.status,
            "exit_attempts": self.exit_attempts,
            "last_bar": self.last_bar.isoformat(),
        }

    @classmethod
    def from_state(cls, s: dict[str, Any], rules: ExitRules) -> OpenPosition:
        if s["status"] not in _STATUSES:
            raise ValueError(f"position status {s['status']!r}")
        p = cls(s["symbol"], int(s["side"]), float(s["qty"]), float(s["avg_price"]),
                datetime.fromisoformat(s["opened_at"]), s["entry_id"], rules, s["status"])
        p.stop = float(s["stop"])
        p.target = float(s["target"])
        p.extreme = float(s["extreme"])
        p.exit_attempts = int(s["exit_attempts"])
        p.last_bar = datetime.fromisoformat(s["last_bar"])
        return p


class PositionBook:
    """Positions of one account by symbol (one position per symbol)."""

    __slots__ = ("rules", "_positions")

    def __init__(self, rules: ExitRules | None = None) -> None:
        self.rules = rules or ExitRules()
        self._positions: dict[str, OpenPosition] = {}

    def __iter__(self) -> Iterator[OpenPosition]:
        return iter(list(self._positions.values()))

    def __len__(self) -> int:
        return len(self._positions)

    def get(self, symbol: str) -> OpenPosition | None:
        return self._positions.get(symbol)

    def count(self) -> int:
        return len(self._positions)

    def exposure(self) -> float:
        """Entry notional of every position, pending and exiting ones included."""
        return sum(p.qty * p.avg_price * p.mult for p in self._positions.values())

    # -- fills ----------------------------------------------------------------------------------

    def open(
        self,
        symbol: str,
        action: str,
        qty: float,
        price: float,
        opened_at: datetime,
        entry_id: str,
        *,
        pending: bool = False,
    ) -> OpenPosition:
        if symbol in self._positions:
            raise ValueError(f"{symbol}: a position is already open")
        side = 1 if action == "BUY" else -1
        pos = OpenPosition(symbol, side, qty, price, opened_at, entry_id, self.rules,
                           PENDING if pending else OPEN)
        self._positions[symbol] = pos
        return pos

    def fill_entry(self, symbol: str, qty: float, price: float) -> OpenPosition | None:
        pos = self._positions.get(symbol)
        if pos is None:
            return None
        pos.qty = qty
        pos.set_price(price, self.rules)
        if pos.status == PENDING:
            pos.status = OPEN
        return pos

    def cancel_entry(self, symbol: str) -> None:
        pos = self._positions.get(symbol)
        if pos is not None and pos.status == PENDING:
            del self._positions[symbol]

    def begin_exit(self, symbol: str) -> OpenPosition | None:
        pos = self._positions.get(symbol)
        if pos is None or pos.status != OPEN:
            return None
        pos.status = EXITING
        return pos

    def abort_exit(self, symbol: str, bar_ts: datetime | None = None) -> None:
        """The exit order failed: the position is open again and retries on a later bar."""
        pos = self._positions.get(symbol)
        if pos is not None and pos.status == EXITING:
            pos.status = OPEN
            pos.exit_attempts += 1
            if bar_ts is not None and bar_ts > pos.last_bar:
                pos.last_bar = bar_ts

    def close(self, symbol: str, qty: float, price: float) -> float:
        """Closes `qty` of the position at `price`; returns the realized P&L."""
        pos = self._positions.get(symbol)
        if pos is None:
            return 0.0
        qty = min(qty, pos.qty)
        pnl = (price - pos.avg_price) * qty * pos.side * pos.mult
        pos.qty -= qty
        if pos.qty <= 1e-9:
            del self._positions[symbol]
        elif pos.status == EXITING:
            pos.status = OPEN  # a partial exit: the rest stays open
        return pnl

    # -- exit rules -----------------------------------------------------------------------------

    def check_bar(self, symbol: str, close: float, flatten: bool = False) -> str | None:
        """Marks an open position to this bar's close; the exit reason if it must close now."""
        pos = self._positions.get(symbol)
        if pos is None or pos.status != OPEN:
            return None
        rules = self.rules
        if pos.side == 1:
            if close > pos.extreme:
                pos.extreme = close
            if close <= pos.stop:
                return "stop_loss"
            if close >= pos.target:
                return "take_profit"
            trail = rules.trailing_stop_pct
            if trail is not None and pos.extreme >= pos.avg_price * (1.0 + rules.trailing_activation_pct):
                if close <= pos.extreme * (1.0 - trail):
                    return "trailing_stop"
        else:
            if close < pos.extreme:
                pos.extreme = close
            if close >= pos.stop:
                return "stop_loss"
            if close <= pos.target:
                return "take_profit"
            trail = rules.trailing_stop_pct
            if trail is not None and pos.extreme <= pos.avg_price * (1.0 - rules.trailing_activation_pct):
                if close >= pos.extreme * (1.0 + trail):
                    return "trailing_stop"
        if flatten and rules.flat_at_close:
            return "end_of_session"
        return None

    def reverses(self, symbol: str, action: str) -> OpenPosition | None:
        """The open position `action` reverses (a SELL against a long, a BUY against a short)."""
        pos = self._positions.get(symbol)
        if pos is None or pos.status != OPEN or not self.rules.exit_on_reversal:
            return None
        if (action == "SELL") == (pos.side == 1):
            return pos
        return None

    # -- records and state ----------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"positions": [p.to_state() for _, p in sorted(self._positions.items())]}

    @classmethod
    def from_state(cls, state: dict[str, Any], rules: ExitRules | None = None) -> Self:
        book = cls(rules)
        for s in state["positions"]:
            p = OpenPosition.from_state(s, book.rules)
            book._positions[p.symbol] = p
        return book


def position_record(
    account: str,
    pos: OpenPosition,
    updated_at: datetime,
    *,
    realized_pnl: float = 0.0,
    closed: bool = False,
    exit_reason: str | None = None,
) -> Position:
    """The positions-topic record of a position (qty signed: negative for a short)."""
    return Position(
        account=account,
        symbol=pos.symbol,
        qty=0.0 if closed else pos.qty * pos.side,
        avg_price=pos.avg_price,
        opened_at=pos.opened_at,
        stop=None if closed else pos.stop,
        target=None if closed else pos.target,
        status="CLOSED" if closed else "OPEN",
        realized_pnl=realized_pnl,
        updated_at=updated_at,
        exit_reason=exit_reason,
    )


_FILLS = frozenset({SIMULATED, FILLED})
_RANK = {SUBMITTED: 0, SKIPPED: 1, SIMULATED: 1, FILLED: 1, FAILED: 1}

Key = tuple[str, str]  # (account, symbol)


class PositionProjection:
    """Positions of every (account, symbol) from executions, whatever order they arrive in.

    An (account, symbol)'s executions are folded sorted by decided_at, and settled (folded into a
    closed record and forgotten) once it is flat with nothing pending. A rule exit names its entry
    (its id is `exit_id(account, entry id, attempt)`), so one whose entry has not arrived yet is
    held apart rather than closing an earlier entry, and stays pending when the rest settles.
    """

    def __init__(self, rules: dict[str, ExitRules] | None = None) -> None:
        self.rules = rules or {}  # account -> its exit rules (for the stop and target shown)
        self._pending: dict[Key, dict[str, Execution]] = {}
        self._settled: dict[tuple[str, str], Key] = {}  # (account, recommendation id) -> position key
        self._last: dict[Key, Position] = {}

    def current(self, account: str, symbol: str) -> Position | None:
        return self._last.get((account, symbol))

    def apply(self, e: Execution) -> Position | None:
        """Folds one execution; the position record it concerns (None if nothing is filled yet)."""
        settled = self._settled.get((e.account, e.recommendation_id))
        if settled is not None:
            return self._last.get(settled)
        if e.status == SKIPPED or e.intent == EXTERNAL_EXIT:
            return None  # external positions are shown from broker.positions
        key = (e.account, e.symbol)
        pending = self._pending.setdefault(key, {})
        prev = pending.get(e.recommendation_id)
        if prev is None or _RANK[e.status] > _RANK[prev.status] or (
            prev.status == e.status == SUBMITTED and e.broker_order_id
        ):
            pending[e.recommendation_id] = e
        record = self._fold(key, pending)
        if record is not None:
            self._last[key] = record
        return record

    def _fold(self, key: Key, pending: dict[str, Execution]) -> Position | None:
        account, symbol = key
        book = PositionBook(self.rules.get(account, ExitRules()))
        realized = 0.0
        closed = None
        unresolved = False
        orphans: set[str] = set()  # exits whose entry has not arrived yet
        latest = None
        for e in sorted(pending.values(), key=lambda x: x.decided_at):
            if e.status == SUBMITTED:
                unresolved = True
                continue
            if e.status not in _FILLS:
                continue
            latest = e.decided_at  # the last fill: when the position last changed
            qty = e.qty or 0.0
            price = e.price or 0.0
            if e.intent == ADJUST:  # reconcile adopted the broker's quantity and price
                pos = book.get(symbol)
                if pos is not None and qty > 0:
                    pos.qty, pos.side = qty, 1 if e.action == "BUY" else -1
                    pos.set_price(price, book.rules)
                continue
            if e.intent == "entry":
                if book.get(symbol) is None:
                    book.open(symbol, e.action, qty, price, e.bar_used_ts or e.decided_at,
                              e.recommendation_id)
                    closed = None
            else:
                pos = book.get(symbol)
                if pos is None or not _closes(e, account, pos.entry_id, len(pending)):
                    orphans.add(e.recommendation_id)  # its entry has not arrived yet
                    continue
                realized += book.close(symbol, qty, price)
                if book.get(symbol) is None:
                    closed = (pos, exit_reason_of(e))
        if latest is None:
            return None
        pos = book.get(symbol)
        if pos is not None:
            return position_record(account, pos, latest, realized_pnl=realized)
        if closed is None:
            return None
        record = position_record(account, closed[0], latest, realized_pnl=realized, closed=True,
                                 exit_reason=closed[1])
        if not unresolved:
            for rid in [rid for rid in pending if rid not in orphans]:
                self._settled[(account, rid)] = key
                del pending[rid]
            if not pending:
                del self._pending[key]
        return record

    def open_positions(self) -> list[Position]:
        return sorted((p for p in self._last.values() if p.status == "OPEN"), key=Position.key)


# exits whose id is exit_id(account, entry id, attempt); a reversal's id is its signal's
_NAMED_EXITS = frozenset({"stop_loss", "take_profit", "trailing_stop", "end_of_session", "operator_flatten",
                          "option_expiry"})


def _closes(e: Execution, account: str, entry_id: str, attempts: int) -> bool:
    """Whether exit `e` may close the position opened by `entry_id`: a rule or operator exit only
    its own entry's; any other (a reversal names no entry) whatever is open."""
    if exit_reason_of(e) not in _NAMED_EXITS:
        return True
    rid = e.recommendation_id
    return any(rid == exit_id(account, entry_id, a) for a in range(attempts + 1))
