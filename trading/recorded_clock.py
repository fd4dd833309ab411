"""Decisions as a function of the topics: one record decided by a desk at a given time (the dispatch
agent's rule, live and here), and a replay of the dispatch agent's minute steps over the recorded
topics, each step decided at the time its closure recorded: `backtest --clock recorded`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.records import (
    BrokerAccount,
    BrokerPosition,
    ControlEvent,
    Execution,
    Features,
    MinuteClosed,
    OptionQuote,
    Recommendation,
    ReconcileEvent,
)
from trading.accounts import AccountDesk
from trading.broker import decided_at
from trading.calendar import SessionCalendar
from trading.clock import MINUTE
from trading.gates import AccountConfig
from trading.ordering import FEATURES_INPUT, SIGNALS_INPUT, Closed, MinuteReleaser

QUIET = (BrokerAccount, BrokerPosition, OptionQuote, ControlEvent)  # ordered by broker_key, no watermark
DECIDED_ON = (Features, Recommendation, *QUIET)


def closed_of(record: MinuteClosed) -> Closed:
    return Closed(record.partition, record.minute, record.upto_offset, record.input_upto, record.at)


def decision_time(record: Any, clock: str, at: datetime | None) -> datetime | None:
    """When a record is decided: on the bar clock the end of its bar (broker records: of their
    event minute); on the wall clock the `at` of the closure that released it (None: the caller's
    wall clock, for quiet records let go without a closure)."""
    if clock == "bar":
        return decided_at(record) if isinstance(record, QUIET) else record.ts + MINUTE
    return at


def decide(desk: AccountDesk, record: Any, now: datetime
           ) -> tuple[Sequence[Execution], Sequence[ReconcileEvent]]:
    """One desk's decisions on one record (the dispatch agent's and the replay's)."""
    if isinstance(record, Recommendation):
        made = desk.on_recommendation(record, now)
        return ([] if made is None else [made]), []
    if isinstance(record, Features):
        return desk.on_bar(record.symbol, record.ts, record.close, now), []
    if isinstance(record, QUIET):
        return desk.on_broker(record, now)
    return [], []


@dataclass
class RecordedRun:
    executions: list[Execution] = field(default_factory=list)
    reconcile: list[ReconcileEvent] = field(default_factory=list)
    steps: int = 0
    late: int = 0
    held: int = 0  # records of minutes no closure let go (the run's last, open minute)


def replay_recorded(
    accounts: Sequence[AccountConfig],
    calendar: SessionCalendar,
    records: Iterable[tuple[str, int, int, Any]],
    *,
    partitions: int,
) -> RecordedRun:
    """The dispatch agent's decisions over recorded topics. `records`: (topic kind, partition,
    offset, record) with kind one of "features", "signals", "quiet" (broker and control records)
    or "clock" (MinuteClosed), each partition's records in offset order."""
    desks = [AccountDesk(a, calendar) for a in accounts]
    releaser = MinuteReleaser(partitions, max_hold_s=float("inf"))
    for kind, partition, offset, record in records:
        if kind == "clock":
            if isinstance(record, MinuteClosed) and record.stage == "signals":
                releaser.close(closed_of(record))
        elif kind in (FEATURES_INPUT, SIGNALS_INPUT):
            if isinstance(record, DECIDED_ON):
                releaser.add(record, record, kind=kind, partition=partition, offset=offset)
            else:
                releaser.consumed(kind, partition, offset)
        elif isinstance(record, QUIET):
            releaser.add(record, record)
    run = RecordedRun()
    for step in releaser.release():
        run.steps += 1
        for record in step.items:
            now = decision_time(record, "wall", step.at)
            assert now is not None
            for desk in desks:
                execs, events = decide(desk, record, now)
                run.executions.extend(execs)
                run.reconcile.extend(events)
    run.late = releaser.late
    run.held = len(releaser)
    return run
