"""Bar files read row by row, the reference intake: each row passes the live bars' parse/validate,
and a bad row is a Rejected with its reason; bars come out in replay order.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.validation import BarRejected, parse_bar, validate_bar
from opsinfra.errors import InputError
from schemas.records import Bar

FILE_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS = ("trade_count", "vwap", "revision")
_WIRE = {"symbol": "S", "ts": "t", "open": "o", "high": "h", "low": "l", "close": "c",
         "volume": "v", "trade_count": "n", "vwap": "vw"}



@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    row: dict[str, Any]
    kind: str | None = None  # the reason without the row's values, for counting
    number: int | None = None  # 1-based among the data rows of the file

    @property
    def label(self) -> str:
        return self.kind or self.reason


@dataclass
class Prepared:
    bars: list[Bar]
    rejected: list[Rejected] = field(default_factory=list)
    repeats: int = 0

    def rejected_by_reason(self) -> dict[str, int]:
        """Rejected rows per kind of reason, most frequent first."""
        return dict(Counter(r.label for r in self.rejected).most_common())


def counts_text(counts: Mapping[str, int]) -> str:
    """{"high < low": 2, "ts unparseable": 1} -> "2 high < low, 1 ts unparseable"."""
    return ", ".join(f"{n} {reason}" for reason, n in counts.items())


def _cell(value: str | None) -> Any:
    if value is None:  # a short row: the cells it lacks
        return None
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
    """The rows of a CSV or Parquet bar file as dicts (CSV numbers converted, blanks None).

    A file that cannot be read as a bar file at all is an InputError; bad rows are left to
    `prepare_rows`."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".txt"):
        raise InputError(f"{path}: bar files are .csv or .parquet", hint="convert it, or rename it")
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            columns = list(table.column_names)
            rows: list[dict[str, Any]] = table.to_pylist()
        else:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = [c.strip() for c in reader.fieldnames or ()]
                rows = [_csv_row(row.items()) for row in reader]
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}", hint="check the path") from exc
    except (ValueError, csv.Error) as exc:  # pyarrow's ArrowInvalid is a ValueError too
        raise InputError(f"{path}: not a readable bar file: {exc}",
                         hint="give a UTF-8 CSV with a header row, or a Parquet file") from exc
    missing = [c for c in FILE_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}",
                         hint=f"a bar file has the columns {', '.join(FILE_COLUMNS)}")
    return rows


def _csv_row(cells: Iterable[tuple[str | None, str | None]]) -> dict[str, Any]:
    """A CSV row as `load_bar_file` gives it: names stripped, numbers converted, blanks None."""
    return {k.strip(): (_cell(v) if k != "symbol" else (v or "").strip()) for k, v in cells if k is not None}


def row_to_bar(row: dict[str, Any]) -> Bar:
    """One file/table row as a validated replay Bar (raises BarRejected)."""
    wire = {_WIRE[k]: v for k, v in row.items() if k in _WIRE and v is not None}
    revision = row.get("revision")
    if revision is None:
        revision = 0
    if isinstance(revision, float) and revision.is_integer():
        revision = int(revision)
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise BarRejected(f"revision is not an integer: {revision!r}", "revision not an integer")
    return validate_bar(parse_bar(wire, source="replay", revision=revision))


def prepare_rows(rows: Iterable[dict[str, Any]]) -> Prepared:
    """Valid rows as bars in (ts, revision) order, stable for ties; exact repeats dropped."""
    out = Prepared(bars=[])
    for number, row in enumerate(rows, 1):
        try:
            out.bars.append(row_to_bar(row))
        except BarRejected as exc:
            out.rejected.append(Rejected(exc.reason, row, exc.kind, number))
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



# The same intake, column-wise: what prepare_rows(load_bar_file(path)) gives, without a dict, a
