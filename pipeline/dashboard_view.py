"""The dashboard's in-memory view: topic records in, page sections out. No I/O, so the server, a
test and a replay drive it alike; every change names the sections it touched, which the server
renders (once per batch of records) and pushes as the SSE deltas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from schemas.records import (
    Alert,
    BrokerAccount,
    BrokerPosition,
    EquityPoint,
    Execution,
    MinuteClosed,
    Position,
)
from trading.calendar import trading_day

SECTIONS = ("accounts", "decisions", "skips", "alerts", "stages")

SKIPPED = "SKIPPED"


def equity_chart(points: Sequence[tuple[datetime, float]], width: float = 300.0, height: float = 80.0
                 ) -> dict[str, Any]:
    """An SVG path of equity over time, scaled to width x height (y grows downwards), with its range;
    a flat or single-point series sits mid-height."""
    if not points:
        return {"path": "", "min": None, "max": None, "first": None, "last": None}
    pts = sorted(points)
    t0, t1 = pts[0][0].timestamp(), pts[-1][0].timestamp()
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    span_t, span_v = t1 - t0, hi - lo

    def xy(t: datetime, v: float) -> str:
        x = (t.timestamp() - t0) / span_t * width if span_t else width / 2
        y = height - (v - lo) / span_v * height if span_v else height / 2
        return f"{x:.1f} {y:.1f}"

    path = "M" + " L".join(xy(t, v) for t, v in pts)
    return {"path": path, "min": lo, "max": hi, "first": pts[0][1], "last": pts[-1][1]}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def first_failing_gate(e: Execution) -> str:
    """Why a decision was skipped: its first failing gate, else its failure reason."""
    failed = next((g.name for g in e.gates if not g.passed), None)
    return failed or e.failure_reason or "unknown"


@dataclass
class _Account:
    points: dict[datetime, float] = field(default_factory=dict)  # today's equity by time
    latest_point: EquityPoint | None = None
    broker: BrokerAccount | None = None


class DashboardView:
    """The page's state for one deployment. `apply`, `set_status` and `roll` name the sections they
changed."""

    def __init__(self, accounts: Sequence[str], day: date, *, decisions: int = 20, alerts: int = 50) -> None:
        self.day = day
        self.max_decisions, self.max_alerts = decisions, alerts
        self.accounts: dict[str, _Account] = {a: _Account() for a in accounts}
        self.broker_positions: dict[tuple[str, str], BrokerPosition] = {}
        self.desk_positions: dict[tuple[str, str], Position] = {}
        self.executions: dict[str, Execution] = {}  # by key: the latest record of each decision
        self.alerts: dict[tuple[str, str], Alert] = {}
        self.progress: dict[str, MinuteClosed] = {}  # each stage's latest closed minute
        self.status: dict[str, Any] = {}

    # -- input ---------------------------------------------------------------------------------

    def apply(self, rec: Any) -> list[str]:
        """Fold one decoded record in; records of other types change nothing."""
        if isinstance(rec, EquityPoint):
            acc = self._account(rec.account)
            if trading_day(rec.ts) == self.day:
                acc.points[rec.ts] = rec.equity
            if acc.latest_point is None or rec.ts >= acc.latest_point.ts:
                acc.latest_point = rec
            return ["accounts"]
        if isinstance(rec, BrokerAccount):
            acc = self._account(rec.account)
            if acc.broker is None or rec.as_of >= acc.broker.as_of:
                acc.broker = rec
            return ["accounts"]
        if isinstance(rec, BrokerPosition):
            self._account(rec.account)
            k = (rec.account, rec.symbol)
            old = self.broker_positions.get(k)
            if old is None or rec.as_of >= old.as_of:
                self.broker_positions[k] = rec
            return ["accounts"]
        if isinstance(rec, Position):
            self._account(rec.account)
            k = (rec.account, rec.symbol)
            old_p = self.desk_positions.get(k)
            if old_p is None or rec.updated_at >= old_p.updated_at:
                self.desk_positions[k] = rec
            return ["accounts"]
        if isinstance(rec, Execution):
            self._account(rec.account)
            self.executions[rec.key()] = rec  # a decision's later record (its fill, its failure) wins
            return ["decisions", "skips"]
        if isinstance(rec, Alert):
            self.alerts[(rec.rule, rec.subject)] = rec
            return ["alerts"]
        if isinstance(rec, MinuteClosed):
            old_m = self.progress.get(rec.stage)
            if old_m is None or (rec.minute, rec.at) >= (old_m.minute, old_m.at):
                self.progress[rec.stage] = rec
            return ["stages"]
        return []

    def set_status(self, status: Mapping[str, Any]) -> list[str]:
        """The latest `ops-pipeline status` report (its JSON), or {"error": why} when it failed."""
        self.status = dict(status)
        return ["stages"]

    def roll(self, day: date) -> list[str]:
        """A new trading day: today's chart and skips start empty."""
        if day == self.day:
            return []
        self.day = day
        for acc in self.accounts.values():
            acc.points.clear()
        self.executions = {k: e for k, e in self.executions.items() if trading_day(e.decided_at) == day}
        return ["accounts", "skips"]

    def _account(self, name: str) -> _Account:
        return self.accounts.setdefault(name, _Account())

    # -- output --------------------------------------------------------------------------------

    def section(self, name: str) -> Any:
        """One section's whole content, JSON-able."""
        return {"accounts": self.accounts_section, "decisions": self.decisions_section,
                "skips": self.skips_section, "alerts": self.alerts_section,
                "stages": self.stages_section}[name]()

    def snapshot(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), **{name: self.section(name) for name in SECTIONS}}

    def accounts_section(self) -> list[dict[str, Any]]:
        out = []
        for name, acc in sorted(self.accounts.items()):
            point, snap = acc.latest_point, acc.broker
            row: dict[str, Any] = {
                "account": name, "source": "none", "equity": None, "cash": None, "buying_power": None,
                "as_of": None, "unrealized": point.unrealized_pnl if point else None,
                "realized": point.realized_pnl if point else None,
                "chart": equity_chart(sorted(acc.points.items())),
            }
            if snap is not None:
                row.update(source="broker", equity=snap.equity, cash=snap.cash,
                           buying_power=snap.buying_power, as_of=_iso(snap.as_of))
            elif point is not None:
                row.update(source="equity", equity=point.equity, cash=point.cash, as_of=_iso(point.ts))
            row["positions"] = self._positions(name, broker=snap is not None)
            out.append(row)
        return out

    def _positions(self, account: str, *, broker: bool) -> list[dict[str, Any]]:
        """The broker's positions when it has a snapshot of the account, else the desk's open ones."""
        if broker or any(a == account for a, _ in self.broker_positions):
            return [
                {"symbol": p.symbol, "qty": p.qty, "origin": p.origin, "avg_price": p.avg_entry_price,
                 "market_value": p.market_value, "unrealized_pl": p.unrealized_pl}
                for (a, _), p in sorted(self.broker_positions.items()) if a == account and p.qty != 0
            ]
        return [
            {"symbol": p.symbol, "qty": p.qty, "origin": "pipeline", "avg_price": p.avg_price,
             "market_value": None, "unrealized_pl": None}
            for (a, _), p in sorted(self.desk_positions.items())
            if a == account and p.status == "OPEN" and p.qty != 0
        ]

    def decisions_section(self) -> list[dict[str, Any]]:
        latest = sorted(self.executions.values(), key=lambda e: (e.decided_at, e.key()), reverse=True)
        return [
            {"key": e.key(), "recommendation_id": e.recommendation_id, "account": e.account,
             "symbol": e.symbol, "action": e.action, "status": e.status, "intent": e.intent, "mode": e.mode,
             "qty": e.qty, "price": e.price, "decided_at": _iso(e.decided_at),
             "failure_reason": e.failure_reason, "broker_order_id": e.broker_order_id,
             "gates": [{"name": g.name, "passed": g.passed, "value": g.value, "limit": g.limit,
                        "reason": g.reason} for g in e.gates]}
            for e in latest[: self.max_decisions]
        ]

    def skips_section(self) -> list[dict[str, Any]]:
        counts: dict[tuple[str, str], int] = {}
        for e in self.executions.values():
            if e.status == SKIPPED and trading_day(e.decided_at) == self.day:
                k = (e.account, first_failing_gate(e))
                counts[k] = counts.get(k, 0) + 1
        return [{"account": a, "reason": r, "count": n}
                for (a, r), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def alerts_section(self) -> list[dict[str, Any]]:
        firing = sorted((a for a in self.alerts.values() if a.state == "firing"),
                        key=lambda a: a.started_at, reverse=True)
        return [{"rule": a.rule, "subject": a.subject, "severity": a.severity,
                 "started_at": _iso(a.started_at), "summary": a.summary}
                for a in firing[: self.max_alerts]]

    def stages_section(self) -> dict[str, Any]:
        s = self.status
        return {
            "as_of": s.get("now"), "error": s.get("error"), "healthy": s.get("healthy"),
            "market_open": s.get("market_open"), "problems": list(s.get("problems") or []),
            "groups": [{k: g.get(k) for k in ("group", "lag", "partitions_behind", "oldest_wait_s")}
                       for g in s.get("groups") or []],
            "symbols": [{k: x.get(k) for k in ("symbol", "last_bar", "age_s", "missing_minutes")}
                        for x in s.get("symbols") or []],
            "progress": [{"stage": m.stage, "minute": _iso(m.minute), "at": _iso(m.at), "reason": m.reason}
                         for _, m in sorted(self.progress.items())],
        }
