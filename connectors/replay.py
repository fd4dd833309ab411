"""Replay: re-publish bars to market.bars.1m (or under another prefix) in (ts, revision) order.

Sources: a bar file (CSV or Parquet; columns symbol, ts, open, high, low, close, volume and
optionally trade_count, vwap, revision), a time range of a topic (chosen by the records' own ts,
never offsets_for_times), or a time range of Postgres' lane_telemetry. Rows go through the same
parse/validate as live bars; bad rows go to the DLQ with the raw row, the replay goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.intake import BarIntake
from connectors.validation import BarRejected, parse_bar, validate_bar
from schemas.records import Bar

FILE_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS = ("trade_count", "vwap", "revision")
_WIRE = {"symbol": "S", "ts": "t", "open": "o", "high": "h", "low": "l", "close": "c",
         "volume": "v", "trade_count": "n", "vwap": "vw"}


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


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    row: dict[str, Any]


@dataclass
class Prepared:
    bars: list[Bar]
    rejected: list[Rejected] = field(default_factory=list)
    repeats: int = 0


def _cell(value: str) -> Any:
    text = value.strip()
    if text == "":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def load_bar_file(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV or Parquet bar file as dicts (CSV numbers converted, blanks None)."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    elif suffix in (".csv", ".txt"):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [{k.strip(): (_cell(v) if k != "symbol" else (v or "").strip())
                     for k, v in row.items() if k is not None} for row in reader]
    else:
        raise ValueError(f"{path}: bar files are .csv or .parquet")
    if rows:
        missing = [c for c in FILE_COLUMNS if c not in rows[0]]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return rows


def row_to_bar(row: dict[str, Any]) -> Bar:
    """One file/table row as a validated replay Bar (raises BarRejected)."""
    wire = {_WIRE[k]: v for k, v in row.items() if k in _WIRE and v is not None}
    revision = row.get("revision")
    if revision is None:
        revision = 0
    if isinstance(revision, float) and revision.is_integer():
        revision = int(revision)
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise BarRejected(f"revision is not an integer: {revision!r}")
    return validate_bar(parse_bar(wire, source="replay", revision=revision))


def prepare_rows(rows: Iterable[dict[str, Any]]) -> Prepared:
    """Valid rows as bars in (ts, revision) order, stable for ties; exact repeats dropped."""
    out = Prepared(bars=[])
    for row in rows:
        try:
            out.bars.append(row_to_bar(row))
        except BarRejected as exc:
            out.rejected.append(Rejected(exc.reason, row))
    return _ordered(out)


def prepare_bars(bars: Iterable[Bar]) -> Prepared:
    """Records read back (topic, Postgres) re-published as source=replay, in replay order."""
    return _ordered(Prepared(bars=[dataclasses.replace(b, source="replay") for b in bars]))


def _ordered(prep: Prepared) -> Prepared:
    prep.bars.sort(key=lambda b: (b.ts, b.revision))  # list.sort is stable
    seen: set[Bar] = set()
    unique = []
    for bar in prep.bars:
        if bar in seen:
            prep.repeats += 1
            continue
        seen.add(bar)
        unique.append(bar)
    prep.bars = unique
    return prep


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
    report = ReplayReport(rejected=len(prep.rejected), repeats=prep.repeats)
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
