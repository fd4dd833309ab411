"""Replay: bars from a file, a topic range or Postgres, re-published in (ts, revision) order; rows
pass the live bars' parse/validate, and a bad row goes to the DLQ (or rejected.csv) with its reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors.bar_columns import BarColumns, gc_paused
from connectors.bar_files import PreparedColumns, load_bar_columns, prepare_file
from connectors.bar_rows import (
    FILE_COLUMNS,
    OPTIONAL_COLUMNS,
    Prepared,
    Rejected,
    counts_text,
    load_bar_file,
    prepare_bars,
    prepare_rows,
    row_to_bar,
)
from connectors.intake import BarIntake
from schemas.records import Bar

__all__ = [  # the row path, the columns and the file intake live in their modules; imported from here
    "FILE_COLUMNS", "OPTIONAL_COLUMNS", "BarColumns", "Prepared", "PreparedColumns", "Rejected",
    "ReplayReport", "counts_text", "gc_paused", "load_bar_columns", "load_bar_file", "parse_speed",
    "prepare_bars", "prepare_file", "prepare_rows", "publish", "read_postgres", "row_to_bar",
]


def parse_speed(text: str) -> float | None:
    """"max" -> None (as fast as possible); "1x", "60x" -> bar-time seconds per wall second."""
    t = text.strip().lower()
    if t == "max":
        return None
    try:
        speed = float(t.removesuffix("x"))
    except ValueError:
        raise ValueError(f"speed must be 'max' or like '1x', '60x'; got {text!r}") from None
    if not speed > 0:
        raise ValueError(f"speed must be positive; got {text!r}")
    return speed


def read_postgres(database_url: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """lane_telemetry rows with start <= ts < end, as bar rows."""
    import psycopg
    from psycopg.rows import dict_row

    query = (
        "SELECT ticker AS symbol, ts, open, high, low, close, volume, trade_count, vwap, revision "
        "FROM lane_telemetry WHERE ts >= %s AND ts < %s ORDER BY ts, revision, ticker"
    )
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return list(conn.execute(query, (start, end)).fetchall())


@dataclass
class ReplayReport:
    published: int = 0
    rejected: int = 0
    repeats: int = 0
    slept_s: float = 0.0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


def publish(
    prep: Prepared,
    intake: BarIntake,
    *,
    origin: str,
    speed: float | None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Rejections to the DLQ, then the bars in order, paced by bar time when `speed` is set."""
    report = ReplayReport(rejected=len(prep.rejected), repeats=prep.repeats,
                          rejected_by_reason=prep.rejected_by_reason())
    for rej in prep.rejected:
        payload = json.dumps(rej.row, default=str).encode()
        sym = rej.row.get("symbol")
        intake.reject(origin, rej.reason, payload, "application/json",
                      sym if isinstance(sym, str) else None, now())
    bars: Sequence[Bar] = prep.bars
    if not bars:
        intake.sink.flush()
        return report
    t0, wall0 = bars[0].ts, monotonic()
    pending = 0
    for bar in bars:
        if speed is not None:
            due = wall0 + (bar.ts - t0).total_seconds() / speed
            wait = due - monotonic()
            if wait > 0:
                if on_progress and pending:
                    on_progress(pending)
                    pending = 0
                sleep(wait)
                report.slept_s += wait
        intake.replayed(bar)
        report.published += 1
        pending += 1
        if on_progress and pending >= 256:
            on_progress(pending)
            pending = 0
    if on_progress and pending:
        on_progress(pending)
    intake.sink.flush()
    return report
