"""The runbook's checks of a run's decisions: what the topics say was decided against what the
tables hold, each a count that is 0 on a correct run and can be non-zero on a wrong one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from opsinfra.settings import Settings
from schemas.codec import Codec
from schemas.records import Execution, Recommendation, ScoredNews
from schemas.topic_io import read_records
from schemas.topics import EXECUTIONS, NEWS_SCORED, SIGNALS, TopicSpec
from trading.execution import FAILED, FILLED, FINAL_STATUSES, SUBMITTED

R = TypeVar("R")


@dataclass(frozen=True)
class LiveRecords:
    """What the live stages decided, as their topics hold it (each partition in offset order)."""

    executions: list[Execution]
    signals: list[Recommendation]
    scored: list[ScoredNews]

    @classmethod
    def read(cls, settings: Settings, bootstrap: str, codec: Codec) -> LiveRecords:
        def records(spec: TopicSpec, kind: type[R]) -> list[R]:
            got = read_records(settings, bootstrap, codec, spec, quiet_s=0.3)
            got.sort(key=lambda m: (m[0].partition, m[0].offset))
            return [r for _, r in got if isinstance(r, kind)]

        return cls(records(EXECUTIONS, Execution), records(SIGNALS, Recommendation),
                   records(NEWS_SCORED, ScoredNews))


def decision_checks(
    executions: Sequence[Execution],
    signals: Iterable[Recommendation],
    accounts: Iterable[str],
    recommendation_rows: Collection[str],
    execution_rows: Collection[tuple[str, str]],
) -> dict[str, int]:
    """Runbook checks of the decisions, each a count that is 0 on a correct run: `executions` and
    `signals` as read from their topics (each partition in offset order), the rows the keys of
    dispatch_recommendations and of dispatch_executions (recommendation, account)."""
    statuses: dict[tuple[str, str], list[str]] = {}
    for e in executions:
        statuses.setdefault((e.recommendation_id, e.account), []).append(e.status)
    ids = {r.id for r in signals}
    names = list(accounts)
    rows = set(execution_rows)
    return {
        "executions topic: (recommendation, account) without exactly one final decision": sum(
            not _one_decision(s) for s in statuses.values()
        ),
        "signals without a dispatch_recommendations row": len(ids - set(recommendation_rows)),
        "(signal, account) without a dispatch_executions row": sum(
            (i, a) not in rows for i in ids for a in names
        ),
        "dispatch_executions rows without a dispatch_recommendations row": sum(
            i not in recommendation_rows for i, _ in rows
        ),
    }


def execution_checks(
    executions: Sequence[Execution], *, as_of: datetime | None = None,
    unresolved_after: timedelta = timedelta(minutes=5),
) -> dict[str, int]:
    """Runbook checks of the executions topic alone (each partition in offset order), each a count
    that is 0 on a correct run: the same (recommendation, account) decided twice, a decision that
    names no bar, an order SUBMITTED whose last record is still SUBMITTED `unresolved_after` before
    `as_of` (default: the latest decided_at on the topic, the clock the run reached)."""
    records: dict[tuple[str, str], list[Execution]] = {}
    for e in executions:
        records.setdefault((e.recommendation_id, e.account), []).append(e)
    if as_of is None:
        as_of = max((e.decided_at for e in executions), default=None)
    minutes = unresolved_after.total_seconds() / 60
    return {
        "executions topic: (recommendation, account) decided more than once": sum(
            _decided_twice([e.status for e in rs]) for rs in records.values()
        ),
        "executions topic: records without bar_used_ts": sum(e.bar_used_ts is None for e in executions),
        f"executions topic: SUBMITTED with no final status after {minutes:g} min": sum(
            rs[-1].status == SUBMITTED and as_of is not None and as_of - rs[-1].decided_at > unresolved_after
            for rs in records.values()
        ),
    }


def _decided_twice(statuses: Sequence[str]) -> bool:
    """More than one final status, or anything after the final one (SUBMITTED records before it
    are the order's write-ahead and the broker's acknowledgement)."""
    finals = [i for i, s in enumerate(statuses) if s != SUBMITTED]
    return len(finals) > 1 or (bool(finals) and finals[0] != len(statuses) - 1)


def _one_decision(statuses: Sequence[str]) -> bool:
    """A single final status, or SUBMITTED records (the order's write-ahead, the broker's
    acknowledgement) followed by one FILLED or FAILED."""
    *before, last = statuses
    if not before:
        return last in FINAL_STATUSES
    return last in (FILLED, FAILED) and all(s == SUBMITTED for s in before)
