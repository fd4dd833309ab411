"""Backtest bookkeeping from executions and bar closes: round trips, the equity curve and the
summary (Sharpe on per-minute returns, drawdown, exposure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from schemas.records import Execution
from trading.execution import ADJUST, exit_reason_of
from trading.options import multiplier

FILLED = ("SIMULATED", "FILLED")
MINUTES_PER_YEAR = 252 * 390


@dataclass(frozen=True, slots=True)
class Trade:
    """One round trip: an entry and the exit that closed it."""

    account: str
    symbol: str
    side: str  # long or short
    qty: float
    entry_ts: datetime
    entry_price: float
    exit_ts: datetime
    exit_price: float
    pnl: float
    exit_reason: str | None
    entry_id: str
    exit_id: str

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Ledger:
    """One account's cash, positions and equity curve, fed executions and marks in time order."""

    account: str
    starting_cash: float
    cash: float = 0.0
    positions: dict[str, tuple[float, float, datetime, str]] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[datetime, float]] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    minutes: int = 0
    minutes_exposed: int = 0

    def __post_init__(self) -> None:
        self.cash = self.starting_cash

    def on_execution(self, e: Execution) -> None:
        if e.status not in FILLED or e.qty is None or e.price is None or e.qty == 0:
            return
        if e.intent == ADJUST:  # a quantity adopted from the broker: the position as it now stands
            held = self.positions.get(e.symbol)
            if held is not None:
                signed = e.qty if e.action == "BUY" else -e.qty
                self.cash -= (signed - held[0]) * e.price
                self.positions[e.symbol] = (signed, e.price, held[2], held[3])
            return
        mult = multiplier(e.symbol)  # an option's qty is in contracts, its price per share: x 100
        signed = (e.qty if e.action == "BUY" else -e.qty) * mult
        self.cash -= signed * e.price
        held = self.positions.get(e.symbol)
        when = e.bar_used_ts or e.decided_at
        if e.intent == "entry" or held is None:
            self.positions[e.symbol] = (signed, e.price, when, e.recommendation_id)
        else:
            qty, price, opened, entry_id = held
            closed = min(abs(qty), abs(signed))
            side = "long" if qty > 0 else "short"
            pnl = (e.price - price) * closed * (1 if qty > 0 else -1)
            self.trades.append(
                Trade(
                    self.account,
                    e.symbol,
                    side,
                    closed / mult,
                    opened,
                    price,
                    when,
                    e.price,
                    pnl,
                    exit_reason_of(e),
                    entry_id,
                    e.recommendation_id,
                )
            )
            rest = qty + signed
            if abs(rest) < 1e-12:
                del self.positions[e.symbol]
            else:
                self.positions[e.symbol] = (rest, price, opened, entry_id)
        if e.symbol not in self.marks:
            self.marks[e.symbol] = e.price

    def mark(self, symbol: str, price: float) -> None:
        self.marks[symbol] = price

    def close_minute(self, ts: datetime) -> None:
        """Records equity at the end of a processed minute."""
        value = self.cash + sum(q * self.marks.get(s, p) for s, (q, p, _o, _i) in self.positions.items())
        self.curve.append((ts, value))
        self.minutes += 1
        if self.positions:
            self.minutes_exposed += 1

    def summary(self, *, bars: int, seconds: float) -> dict[str, Any]:
        equity = [v for _, v in self.curve] or [self.starting_cash]
        end = equity[-1]
        peak, max_dd = equity[0], 0.0
        for v in equity:
            peak = max(peak, v)
            max_dd = max(max_dd, (peak - v) / peak if peak > 0 else 0.0)
        rets = [b / a - 1 for a, b in zip(equity, equity[1:], strict=False) if a > 0]
        sharpe = None
        if len(rets) > 1:
            mean = sum(rets) / len(rets)
            var = sum((r - mean) ** 2 for r in rets) / (len(rets) - 1)
            sharpe = mean / math.sqrt(var) * math.sqrt(MINUTES_PER_YEAR) if var > 0 else None
        wins = [t for t in self.trades if t.pnl > 0]
        return {
            "account": self.account,
            "starting_cash": self.starting_cash,
            "ending_equity": round(end, 2),
            "pnl": round(end - self.starting_cash, 2),
            "realized_pnl": round(sum(t.pnl for t in self.trades), 2),
            "return": (end / self.starting_cash - 1) if self.starting_cash else 0.0,
            "sharpe": sharpe,
            "max_drawdown": max_dd,
            "win_rate": (len(wins) / len(self.trades)) if self.trades else None,
            "trades": len(self.trades),
            "open_positions": len(self.positions),
            "exposure": (self.minutes_exposed / self.minutes) if self.minutes else 0.0,
            "bars_processed": bars,
            "bars_per_s": (bars / seconds) if seconds > 0 else None,
        }


def drawdown(curve: Iterable[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    out, peak = [], -math.inf
    for ts, v in curve:
        peak = max(peak, v)
        out.append((ts, (v / peak - 1) if peak > 0 else 0.0))
    return out
