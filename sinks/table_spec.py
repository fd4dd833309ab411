"""What a table spec is: a topic's columns, its staging table and upsert SQL, the in-batch reduction,
and the checks a row builder raises InvalidRecord from (the record then goes to the DLQ).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from psycopg import sql

from schemas.records import EXECUTION_STATUSES
from schemas.topics import TopicSpec

Row = tuple[Any, ...]

# An execution's status only moves up this order, so its last state is the highest one seen,
# whatever order records arrive in. SUBMITTED -> FILLED/FAILED is the only real transition; the
# order among final states only makes a contradiction between duplicates deterministic.
EXECUTION_RANK: tuple[str, ...] = ("SUBMITTED", "SKIPPED", "SIMULATED", "FAILED", "FILLED")
# A recommendation's status is the furthest any of its accounts got towards a filled order
# (PENDING while no account has decided), recomputed from all of its executions.
RECOMMENDATION_RANK: tuple[str, ...] = (
    "PENDING", "SKIPPED", "SIMULATED", "FAILED", "SUBMITTED", "FILLED"
)
EXEC_RANK = {s: i for i, s in enumerate(EXECUTION_RANK)}
_RANKS = {
    "exec_rank": sql.Literal(list(EXECUTION_RANK)),
    "rec_rank": sql.Literal(list(RECOMMENDATION_RANK)),
}
assert set(EXECUTION_RANK) == set(EXECUTION_STATUSES)


class InvalidRecord(ValueError):
    """A decoded record that breaks a rule of its table; it goes to the DLQ."""


@dataclass(frozen=True)
class TableSpec:
    """One contract topic's table. Columns are (name, staging type) in row order; `slot` names the
    spec's batch rows and staging table (the table's name unless two topics write one table)."""

    topic: TopicSpec
    table: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    build: Callable[[dict[str, Any]], Row]
    on_conflict: str  # the ON CONFLICT action, with {t} for the target table
    rank: Callable[[Row], Any] | None = None  # highest wins in a batch; ties and None: first seen
    after: tuple[str, ...] = ()  # statements run after the upsert, in the same transaction
    order_by_key: bool = False  # insert in key order: a fixed lock order between writers
    conflict: str = ""  # the ON CONFLICT target when it is not the key's columns (an index expression)
    slot: str = ""
    key_of: Callable[[Row], Any] = field(init=False)

    def __post_init__(self) -> None:
        names = [c for c, _ in self.columns]
        object.__setattr__(self, "key_of", itemgetter(*(names.index(k) for k in self.key)))
        if not self.slot:
            object.__setattr__(self, "slot", self.table)

    @property
    def stage(self) -> sql.Composed:
        return sql.SQL("pg_temp.{}").format(sql.Identifier(f"sink_stage_{self.slot}"))

    @property
    def stage_types(self) -> list[str]:
        return [t for _, t in self.columns]

    def create_stage_sql(self) -> sql.Composed:
        # Explicit types, not LIKE: binary COPY needs float8 for numeric targets and int8 for
        # every integer (psycopg's binary int4 dumper wraps silently; the cast in the upsert
        # raises instead, and the record goes to the DLQ).
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in self.columns
        )
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            self.stage, cols
        )

    def copy_sql(self) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(self.stage, self._cols())

    def clear_sql(self) -> sql.Composed:
        return sql.SQL("TRUNCATE {}").format(self.stage)

    def upsert_sql(self) -> sql.Composed:
        order = sql.SQL(" ORDER BY {}").format(self._cols(self.key)) if self.order_by_key else sql.SQL("")
        return sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM {stage}{order} ON CONFLICT ({key}) {act}"
        ).format(
            t=sql.Identifier(self.table),
            cols=self._cols(),
            stage=self.stage,
            order=order,
            key=sql.SQL(self.conflict) if self.conflict else self._cols(self.key),
            act=sql.SQL(self.on_conflict).format(t=sql.Identifier(self.table), **_RANKS),
        )

    def after_sql(self) -> list[sql.Composed]:
        return [sql.SQL(s).format(stage=self.stage, **_RANKS) for s in self.after]

    def reduce(self, rows: list[Row], msgs: list[Any]) -> tuple[list[Row], list[Any]]:
        """One row per key (ON CONFLICT cannot touch a row twice in one statement)."""
        key_of, rank = self.key_of, self.rank
        best: dict[Any, int] = {}
        for i, row in enumerate(rows):
            k = key_of(row)
            j = best.get(k)
            if j is None:
                best[k] = i
            elif rank is not None and rank(row) > rank(rows[j]):
                best[k] = i
        if len(best) == len(rows):
            return rows, msgs
        keep = sorted(best.values())
        return [rows[i] for i in keep], [msgs[i] for i in keep]

    def _cols(self, names: tuple[str, ...] | None = None) -> sql.Composed:
        names = names if names is not None else tuple(c for c, _ in self.columns)
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def update_all(columns: tuple[tuple[str, str], ...], key: tuple[str, ...], *extra: str) -> str:
    sets = [f"{c} = excluded.{c}" for c, _ in columns if c not in key]
    return "DO UPDATE SET " + ", ".join([*sets, *extra])


def as_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidRecord(f"not a UUID: {value!r}") from exc


def one_of(value: str, allowed: frozenset[str] | tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidRecord(f"{what} {value!r} is not one of {sorted(allowed)}")
    return value


def finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise InvalidRecord(f"{what} is not a finite number: {value!r}")
    return value
