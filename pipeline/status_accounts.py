"""The per-account part of `ops-pipeline status`: each desk rebuilt from the executions topic, its
money and positions from the latest broker records, the broker's problems and the operator's changes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from rich.table import Table

from opsinfra.errors import DecodeError
from opsinfra.kafka_io import read_tail
from opsinfra.settings import Settings
from schemas.codec import decode
from schemas.records import BrokerAccount, BrokerPosition, EquityPoint, Execution, ReconcileEvent, Record
from schemas.topic_io import read_records
from schemas.topics import BROKER_ACCOUNTS, BROKER_POSITIONS, EQUITY, EXECUTIONS, RECONCILE, TopicSpec
from trading.accounts import AccountDesk, accounts_from_settings
from trading.calendar import TradingCalendar, trading_day
from trading.gates import AccountConfig
from trading.options import is_option, multiplier

if TYPE_CHECKING:
    from pipeline.status import Report

# How much of each broker topic's partitions status reads: enough for the latest record of every
# key (a snapshot of every account each 30 s, all its positions each time).
BROKER_TAILS: dict[TopicSpec, int] = {BROKER_ACCOUNTS: 100, BROKER_POSITIONS: 500, EQUITY: 50, RECONCILE: 50}


@dataclass
class HeldPosition:
    symbol: str
    qty: float  # signed: a short is negative
    origin: str  # pipeline or external
    asset_class: str | None
    avg_price: float
    market_value: float | None
    unrealized_pl: float | None  # the broker's; for a desk position, marked at the last bar's close


@dataclass
class ReconcileOutcome:
    kind: str
    symbol: str | None
    action: str
    decided_at: str


@dataclass
class AccountStatus:
    account: str
    kill_switch: bool
    trades_today: int
    realized_today: float
    open_positions: int  # in the desk's book
    # the money, from the latest broker snapshot ("broker"), else the desk's latest equity point
    # ("equity"), else nothing ("none": no broker snapshot)
    source: str = "none"
    equity: float | None = None
    cash: float | None = None
    buying_power: float | None = None
    as_of: str | None = None  # of that snapshot or point
    age_s: float | None = None
    positions: list[HeldPosition] = field(default_factory=list)  # the broker's, else the desk's
    last_reconcile: ReconcileOutcome | None = None


def control_changes(settings: Settings, bootstrap: str) -> list[dict[str, Any]]:
    """The operator's changes: the halts in force, then the last changes (newest first)."""
    from pipeline.control_cli import halts, history

    events = history(settings, bootstrap)
    names = [a.name for a in accounts_from_settings(settings)]
    out = [{"account": a, "halted": True, "at": e.at.isoformat(), "reason": e.reason}
           for a, e in sorted(halts(events, names).items())]
    out += [{"account": e.account, "halted": False, "at": e.at.isoformat(), "action": e.action,
             "change": ", ".join(f"{k}={v}" for k, v in e.settings.items()), "reason": e.reason,
             "operator": e.operator} for e in reversed(events[-10:])]
    return out


_SOURCES = {"broker": "broker snapshot", "equity": "no broker snapshot; desk equity point",
            "none": "no broker snapshot"}


def account_tables(report: Report) -> list[Table]:
    """The per-account section of the text output: money and the snapshot, then open positions."""

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.2f}"

    money = Table(title="accounts: equity, cash, buying power, last reconcile")
    for col in ("account", "equity", "cash", "buying power", "from", "age", "last reconcile"):
        money.add_column(col)
    held = Table(title="open positions")
    for col in ("account", "symbol", "qty", "origin", "class", "avg price", "market value", "unrealized P&L"):
        held.add_column(col)
    for a in report.accounts:
        r = a.last_reconcile
        money.add_row(a.account, num(a.equity), num(a.cash), num(a.buying_power), _SOURCES[a.source],
                      "-" if a.age_s is None else f"{a.age_s:.0f}s",
                      "-" if r is None else f"{r.kind} {r.symbol or ''}: {r.action} at {r.decided_at}")
        for p in a.positions:
            held.add_row(a.account, p.symbol, f"{p.qty:g}", p.origin, p.asset_class or "-",
                         num(p.avg_price), num(p.market_value), num(p.unrealized_pl))
    return [money, held]

def account_statuses(
    settings: Settings, bootstrap: str, codec: Any, now: datetime, closes: Mapping[str, float]
) -> list[AccountStatus]:
    """Each account's day as the dispatch agent sees it: its desk rebuilt from the executions topic,
    and its money and positions from the latest broker records."""

    history = [
        r
        for _, r in read_records(settings, bootstrap, codec, EXECUTIONS, quiet_s=0.3)
        if isinstance(r, Execution)
    ]
    tails = _broker_tails(settings, bootstrap, codec)
    snapshots: dict[str, BrokerAccount] = _latest(tails[BROKER_ACCOUNTS], lambda r: r.account,
                                                  lambda r: r.as_of)
    held: dict[tuple[str, str], BrokerPosition] = _latest(
        tails[BROKER_POSITIONS], lambda r: (r.account, r.symbol), lambda r: r.as_of)
    points: dict[str, EquityPoint] = _latest(tails[EQUITY], lambda r: r.account, lambda r: r.ts)
    reconciled: dict[str, ReconcileEvent] = _latest(tails[RECONCILE], lambda r: r.account,
                                                    lambda r: r.decided_at)
    out = []
    calendar = TradingCalendar()
    for config in accounts_from_settings(settings):
        desk = AccountDesk(config, calendar)
        desk.rebuild(history)
        state = desk.state
        state.roll(trading_day(now))
        status = AccountStatus(
            config.name,
            state.killed,
            state.trades_today,
            round(state.realized_today, 2),
            state.book.count(),
        )
        snap, point, rec = snapshots.get(config.name), points.get(config.name), reconciled.get(config.name)
        when: datetime | None = None
        if snap is not None:
            status.source, status.equity, status.cash = "broker", snap.equity, snap.cash
            status.buying_power, when = snap.buying_power, snap.as_of
            status.positions = [
                HeldPosition(p.symbol, p.qty, p.origin, p.asset_class, p.avg_entry_price, p.market_value,
                             p.unrealized_pl)
                for (account, _), p in sorted(held.items())
                if account == config.name and p.qty != 0
            ]
        else:
            status.positions = [_marked(p.symbol, p.qty * p.side, p.avg_price, closes) for p in state.book]
            if point is not None:
                status.source, status.equity, status.cash, when = "equity", point.equity, point.cash, point.ts
        if when is not None:
            status.as_of, status.age_s = when.isoformat(), (now - when).total_seconds()
        if rec is not None:
            status.last_reconcile = ReconcileOutcome(rec.kind, rec.symbol, rec.action,
                                                     rec.decided_at.isoformat())
        out.append(status)
    return out


def _marked(symbol: str, qty: float, avg_price: float, closes: Mapping[str, float]) -> HeldPosition:
    """A desk position (no broker snapshot) marked at the last bar's close, when there is one."""
    close, size = closes.get(symbol), multiplier(symbol)
    kind = "us_option" if is_option(symbol) else "us_equity"
    if close is None:
        return HeldPosition(symbol, qty, "pipeline", kind, avg_price, None, None)
    return HeldPosition(symbol, qty, "pipeline", kind, avg_price, round(close * qty * size, 2),
                        round((close - avg_price) * qty * size, 2))


def _broker_tails(settings: Settings, bootstrap: str, codec: Any) -> dict[TopicSpec, list[Any]]:
    """The decodable records at the tail of each broker topic, read concurrently."""

    def read(spec: TopicSpec) -> list[Record]:
        topic = settings.topic(spec.name)
        out = []
        for m in read_tail(settings, bootstrap, topic, per_partition=BROKER_TAILS[spec]):
            try:
                out.append(decode(codec, spec.record, m.value, m.headers, topic=topic,
                                  partition=m.partition, offset=m.offset))
            except DecodeError:
                continue
        return out

    with ThreadPoolExecutor(len(BROKER_TAILS), thread_name_prefix="status-tail") as pool:
        return dict(zip(BROKER_TAILS, pool.map(read, BROKER_TAILS), strict=True))


R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


def _latest(records: Iterable[R], key: Callable[[R], K], when: Callable[[R], datetime]) -> dict[K, R]:
    """The latest record per key by its own time; a tie goes to the later offset (read order)."""
    out: dict[K, R] = {}
    for r in records:
        k = key(r)
        if k not in out or when(r) >= when(out[k]):
            out[k] = r
    return out


def broker_problems(
    accounts: Sequence[AccountStatus], configs: Sequence[AccountConfig], market_open: bool
) -> list[str]:
    """An account whose gates read the broker fails its entries closed without a fresh snapshot."""
    if not market_open:
        return []
    limits = {c.name: c.max_broker_state_age_s for c in configs if c.uses_broker}
    out = []
    for a in accounts:
        limit = limits.get(a.account)
        if limit is None:
            continue
        if a.source != "broker":
            out.append(f"account {a.account}: no broker snapshot (its entries fail closed)")
        elif a.age_s is not None and a.age_s > limit:
            out.append(f"account {a.account}: broker snapshot {a.age_s:.0f}s old, over {limit:g}s "
                       "(its entries fail closed)")
    return out
