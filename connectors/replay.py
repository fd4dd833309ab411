"""Replay: bars from a file, a topic range or Postgres, re-published in (ts, revision) order; rows
pass the live bars' parse/validate, and a bad row goes to the DLQ (or rejected.csv) with its reason.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import Any

from connectors.intake import BarIntake
from connectors.validation import BarRejected, parse_bar, parse_ts, validate_bar
from opsinfra.errors import InputError
from schemas.records import Bar
from trading.execution import new_record

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
# parse and a validation per row. Rows it cannot judge column-wise take the row path, one by one.

_FLOATS = ("open", "high", "low", "close", "vwap")
_INTS = ("volume", "trade_count", "revision")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_DATETIME_US = tuple((t - _EPOCH) // _US for t in (datetime(1, 1, 1, tzinfo=UTC),
                                                    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)))
_INT_TEXT = r"^-?[0-9]{1,18}$"  # what int() and Arrow's cast read alike, in int64
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # float() and Arrow's cast agree


@dataclass
class BarColumns:
    """Bars as numpy columns: symbols as codes into `symbols`, times in epoch microseconds (UTC),
    `seq` the position in the input (file row, message) that keeps ties stable."""

    symbol: Any
    symbols: list[str]
    ts: Any
    open: Any
    high: Any
    low: Any
    close: Any
    volume: Any
    trade_count: Any
    trade_count_null: Any
    vwap: Any
    vwap_null: Any
    revision: Any
    seq: Any

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, rows: Any) -> BarColumns:
        def part(name: str) -> Any:
            return getattr(self, name) if name == "symbols" else getattr(self, name)[rows]

        return BarColumns(**{f.name: part(f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_bars(cls, bars: Sequence[Bar], seq: Sequence[int]) -> BarColumns:
        import numpy as np

        symbols = sorted({b.symbol for b in bars})
        code = {s: i for i, s in enumerate(symbols)}

        def col(name: str, dtype: Any) -> Any:
            data = [0 if (v := getattr(b, name)) is None else v for b in bars]
            try:
                return np.array(data, dtype)
            except OverflowError:  # a count beyond int64, which Python took: kept as is
                return np.array(data, object)

        return cls(
            symbol=np.array([code[b.symbol] for b in bars], np.int32), symbols=symbols,
            ts=np.array([(b.ts - _EPOCH) // _US for b in bars], np.int64),
            open=col("open", float), high=col("high", float), low=col("low", float),
            close=col("close", float),
            volume=col("volume", np.int64), trade_count=col("trade_count", np.int64),
            trade_count_null=np.array([b.trade_count is None for b in bars], bool),
            vwap=col("vwap", float), vwap_null=np.array([b.vwap is None for b in bars], bool),
            revision=col("revision", np.int64), seq=np.array(seq, np.int64),
        )  # fmt: skip

    @classmethod
    def from_decoded(cls, columns: Mapping[str, Any], seq: Any) -> BarColumns:
        """Bar records decoded column-wise (schemas.avro_fast.decode_columns), read back to be
        replayed: their source becomes replay, as `prepare_bars` does."""
        import numpy as np

        def nulls(name: str) -> Any:
            c = columns[name]
            return np.zeros(len(c.values), bool) if c.nulls is None else c.nulls

        v = {name: c.values for name, c in columns.items()}
        return cls(
            symbol=v["symbol"], symbols=list(columns["symbol"].labels), ts=v["ts"], open=v["open"],
            high=v["high"], low=v["low"], close=v["close"], volume=v["volume"], trade_count=v["trade_count"],
            trade_count_null=nulls("trade_count"), vwap=v["vwap"], vwap_null=nulls("vwap"),
            revision=v["revision"], seq=np.asarray(seq, np.int64),
        )  # fmt: skip

    @classmethod
    def concat(cls, parts: Sequence[BarColumns]) -> BarColumns:
        """One set of columns (symbol codes remapped onto one label list)."""
        import numpy as np

        symbols = sorted({s for p in parts for s in p.symbols})
        code = {s: i for i, s in enumerate(symbols)}
        remapped = [np.array([code[s] for s in p.symbols], np.int32)[p.symbol] if len(p) else p.symbol
                    for p in parts]
        fields = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in dataclasses.fields(cls) if f.name not in ("symbol", "symbols")}
        return cls(symbol=np.concatenate(remapped).astype(np.int32), symbols=symbols, **fields)

    def ordered(self) -> tuple[BarColumns, int]:
        """In replay order ((ts, revision), stable), exact repeats dropped: (columns, repeats)."""
        import numpy as np

        ts, rev, seq = self.ts, self.revision, self.seq
        dts, drev = np.diff(ts), np.diff(rev)
        if not ((dts > 0) | (dts == 0) & ((drev > 0) | (drev == 0) & (np.diff(seq) > 0))).all():
            return self.take(np.lexsort((seq, rev, ts))).ordered()
        # a repeat has the (ts, revision, symbol) of an earlier row: only those are compared in full
        group = np.concatenate([[0], np.cumsum((dts != 0) | (drev != 0))])
        pairs = group * max(len(self.symbols), 1) + self.symbol
        flat = np.sort(pairs)
        twice = flat[1:][flat[1:] == flat[:-1]]
        if not len(twice):
            return self, 0
        seen: set[tuple[Any, ...]] = set()
        drop = []
        for i in np.flatnonzero(np.isin(pairs, twice)).tolist():
            key = (int(pairs[i]), float(self.open[i]), float(self.high[i]), float(self.low[i]),
                   float(self.close[i]), int(self.volume[i]),
                   None if self.trade_count_null[i] else int(self.trade_count[i]),
                   None if self.vwap_null[i] else float(self.vwap[i]))  # fmt: skip
            if key in seen:
                drop.append(i)
            else:
                seen.add(key)
        keep = np.ones(len(self), bool)
        keep[drop] = False
        return self.take(keep), len(drop)

    def select(
        self, start: datetime | None, end: datetime | None, symbols: Collection[str] | None
    ) -> BarColumns:
        """The bars with start <= ts < end of the given symbols (None: no bound)."""
        import numpy as np

        keep = np.ones(len(self), bool)
        if start is not None:
            keep &= self.ts >= (start - _EPOCH) // _US
        if end is not None:
            keep &= self.ts < (end - _EPOCH) // _US
        if symbols is not None:
            keep &= np.isin(self.symbol, [i for i, s in enumerate(self.symbols) if s in symbols])
        return self if keep.all() else self.take(keep)

    def bars(self, source: str = "replay") -> list[Bar]:
        """Bar records, built once, column-wise: one datetime per distinct minute, shared."""
        import numpy as np

        if not len(self):
            return []
        stamps, where = np.unique(self.ts, return_inverse=True)
        times = np.array([_EPOCH + timedelta(microseconds=us) for us in stamps.tolist()] + [None], object)
        names = np.array([*self.symbols, None], object)
        with gc_paused():
            return list(map(
                new_record, repeat(Bar), names[self.symbol].tolist(), times[where].tolist(),
                self.open.tolist(), self.high.tolist(), self.low.tolist(), self.close.tolist(),
                self.volume.tolist(), _nullable(self.trade_count, self.trade_count_null),
                _nullable(self.vwap, self.vwap_null), repeat(source), self.revision.tolist(),
            ))  # fmt: skip


def _nullable(values: Any, nulls: Any) -> Any:
    if not nulls.any():
        return values.tolist()
    if nulls.all():
        return repeat(None)
    out = values.astype(object)
    out[nulls] = None
    return out.tolist()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off while a million records are made or read (each full collection would walk
    every live one again; what they make is acyclic)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class PreparedColumns:
    columns: BarColumns
    rejected: list[Rejected] = field(default_factory=list)
    repeats: int = 0

    def prepared(self) -> Prepared:
        return Prepared(self.columns.bars(), self.rejected, self.repeats)


def prepare_file(path: Path) -> Prepared:
    """`prepare_rows(load_bar_file(path))`, column-wise."""
    return load_bar_columns(path).prepared()


def load_bar_columns(path: Path) -> PreparedColumns:
    """A bar file's valid rows as columns in replay order, and its rejected rows: the rows, rules,
    reasons and order of `prepare_rows(load_bar_file(path))`. Files or rows it cannot judge
    column-wise (odd headers or types, quoting Arrow cannot read, any cell it does not parse as
    exactly as Python) take the row path."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".txt"):
        raise InputError(f"{path}: bar files are .csv or .parquet", hint="convert it, or rename it")
    try:
        intake = _parquet_intake(path) if suffix in (".parquet", ".pq") else _csv_intake(path)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}", hint="check the path") from exc
    except (ValueError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable bar file: {exc}",
                         hint="give a UTF-8 CSV with a header row, or a Parquet file") from exc
    if intake is not None:
        return intake.prepare()
    prep = prepare_rows(load_bar_file(path))
    columns = BarColumns.from_bars(prep.bars, range(len(prep.bars)))
    return PreparedColumns(columns, prep.rejected, prep.repeats)


@dataclass
class _Intake:
    """A file's columns as read, before judgement: `good` rows are typed and parsed; the others,
    and those the rules reject, go through `row_to_bar` with the raw row from `raw_rows`."""

    n: int
    values: dict[str, Any]  # numpy columns of _FLOATS and _INTS, plus their "<name>_null"
    symbol: Any
    symbols: list[str]
    ts: Any
    good: Any
    raw_rows: Callable[[Any], list[dict[str, Any]]]

    def prepare(self) -> PreparedColumns:
        import numpy as np

        from connectors.validation import validate_columns

        v = self.values
        good = self.good.copy()
        for name in ("open", "high", "low", "close", "volume"):  # missing: the row path says which first
            good &= ~v[f"{name}_null"]
        columns = {**v, "ts": self.ts, "revision": np.where(v["revision_null"], 0, v["revision"])}
        good &= validate_columns(columns) == 0
        accepted = np.flatnonzero(good)
        parts = [BarColumns(
            symbol=self.symbol[accepted], symbols=self.symbols, ts=self.ts[accepted],
            **{k: columns[k][accepted] for k in ("open", "high", "low", "close", "volume", "trade_count",
                                                  "trade_count_null", "vwap", "vwap_null", "revision")},
            seq=accepted.astype(np.int64),
        )]  # fmt: skip
        rejected: list[Rejected] = []
        others = np.flatnonzero(~good)
        if len(others):
            bars, seq = [], []
            for i, row in zip(others.tolist(), self.raw_rows(others), strict=True):
                try:
                    bars.append(row_to_bar(row))
                    seq.append(i)
                except BarRejected as exc:
                    rejected.append(Rejected(exc.reason, row, exc.kind, i + 1))
            if bars:
                parts.append(BarColumns.from_bars(bars, seq))
        merged = parts[0] if len(parts) == 1 else BarColumns.concat(parts)
        ordered, repeats = merged.ordered()
        return PreparedColumns(ordered, rejected, repeats)


def _csv_intake(path: Path) -> _Intake | None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with path.open(newline="", encoding="utf-8") as fh:
        names = next(csv.reader(fh), [])
    stripped = [c.strip() for c in names]
    if stripped != names or len(set(names)) != len(names):
        return None  # the row path strips names, and keeps the last of two: leave the odd ones to it
    kinds = {**dict.fromkeys(_FLOATS, pa.float64()), **dict.fromkeys(_INTS, pa.int64())}

    def read(typed: bool) -> Any:
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=1),
            convert_options=pcsv.ConvertOptions(
                column_types={c: kinds.get(c, pa.string()) if typed else pa.string() for c in names},
                null_values=[""], strings_can_be_null=False, quoted_strings_can_be_null=True,
            ),
        )

    try:
        table = read(typed=True)
        text = None
    except pa.ArrowException:
        try:
            table = text = read(typed=False)  # some cell is not a number Arrow reads: judge each
        except pa.ArrowException:
            return None  # not a shape Arrow reads as the csv module does (ragged rows, say)
    _check_columns(path, names)
    n = table.num_rows
    good = np.ones(n, bool)
    values: dict[str, Any] = {}
    for name in (*_FLOATS, *_INTS):
        if name not in names:
            values[name] = np.zeros(n, np.int64 if name in _INTS else float)
            values[f"{name}_null"] = np.ones(n, bool)
            continue
        col, nulls, clean = _number_column(table[name], name in _INTS, parsed=True)
        values[name], values[f"{name}_null"] = col, nulls
        good &= clean
    symbol, symbols, ok = _distinct(table["symbol"], _csv_symbol)
    good &= ok
    ts, ok = _times(table["ts"], csv=True)
    good &= ok

    def raw_rows(rows: Any) -> list[dict[str, Any]]:
        source = text if text is not None else read(typed=False)
        return [_csv_row(r.items()) for r in source.take(pa.array(rows)).to_pylist()]

    return _Intake(n, values, symbol, symbols, ts, good, raw_rows)


def _check_columns(path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in FILE_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}",
                         hint=f"a bar file has the columns {', '.join(FILE_COLUMNS)}")


def _number_column(col: Any, integer: bool, *, parsed: bool) -> tuple[Any, Any, Any]:
    """(values, nulls, clean): a numeric column as `_cell` and the row path's checks read it; rows
    not `clean` are left to the row path (not a number Python and Arrow read alike, -0 whose sign
    int() drops, non-finite, a fractional count)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    nulls = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(col.type):
        nulls |= pc.fill_null(pc.equal(col, ""), False).to_numpy(zero_copy_only=False)  # `_cell`: None
        as_int, as_float = (_numpy(pc.fill_null(pc.match_substring_regex(col, p), False))
                            for p in (_INT_TEXT, _FLOAT_TEXT))
        clean = nulls | as_float
        floats = _numpy(pc.cast(pc.if_else(pa.array(as_float), col, "0"), pa.float64()))
        if integer:
            ints = _numpy(pc.cast(pc.if_else(pa.array(as_int), col, "0"), pa.int64()))
            whole = np.isfinite(floats) & (floats == np.floor(floats)) & (np.abs(floats) < 2.0**53)
            clean &= nulls | as_int | whole
            return np.where(as_int, ints, np.where(whole, floats, 0).astype(np.int64)), nulls, clean
        floats = np.where(as_int, floats + 0.0, floats)  # int("-0") is 0, float("-0") is -0.0
        return floats, nulls, clean & (nulls | np.isfinite(floats) & ~((floats == 0) & np.signbit(floats)))
    if pa.types.is_integer(col.type):
        raw = pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
        fits = raw <= np.iinfo(np.int64).max if raw.dtype == np.uint64 else np.ones(len(raw), bool)
        return raw.astype(np.int64 if integer else float), nulls, nulls | fits
    floats = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    if integer:  # a count as a float: `_count` takes a whole one, as int
        whole = np.isfinite(floats) & (floats == np.floor(floats)) & (np.abs(floats) < 2.0**63)
        return np.where(whole, floats, 0).astype(np.int64), nulls, nulls | whole
    clean = nulls | np.isfinite(floats)
    if not parsed:
        return floats, nulls, clean  # a Parquet double is the value itself, -0.0 included
    return floats, nulls, clean & ~((floats == 0) & np.signbit(floats))  # "-0" (int() drops the sign)?


def _numpy(array: Any) -> Any:
    return array.to_numpy(zero_copy_only=False)


def _distinct(col: Any, judge: Callable[[Any], Any]) -> tuple[Any, list[Any], Any]:
    """(codes, labels, ok): a column judged once per distinct value (`judge` -> the label, or None
    when the row path must look at the rows holding that value)."""
    import numpy as np
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(col).combine_chunks()
    labels: list[Any] = []
    where: dict[Any, int] = {}

    def code_of(value: Any) -> int:
        label = judge(value)
        if label is None:
            return -1
        code = where.get(label)
        if code is None:
            code = where[label] = len(labels)
            labels.append(label)
        return code

    per_value = [code_of(v) for v in encoded.dictionary.to_pylist()] + [code_of(None)]
    idx = pc.fill_null(encoded.indices, len(per_value) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    mapped = np.array(per_value, np.int32)[idx]
    return np.maximum(mapped, 0), labels, mapped >= 0


def _csv_symbol(value: str | None) -> str | None:
    text = (value or "").strip()
    return text.upper() if text else None


def _times(col: Any, *, csv: bool) -> tuple[Any, Any]:
    """(epoch microseconds, ok) of a ts column of text: each distinct text parsed once, as the row
    path parses it (`_cell` first for a CSV cell)."""
    import numpy as np

    def judge(value: Any) -> int | None:
        cell = _cell(value) if csv else value
        if cell is None:
            return None
        try:
            return int((parse_ts(cell) - _EPOCH) // _US)
        except BarRejected:
            return None

    codes, labels, ok = _distinct(col, judge)
    return np.array(labels or [0], np.int64)[codes], ok


def _parquet_intake(path: Path) -> _Intake | None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    names = table.column_names
    if len(set(names)) != len(names):
        return None
    _check_columns(path, names)
    n = table.num_rows
    good = np.ones(n, bool)
    values: dict[str, Any] = {}
    for name in (*_FLOATS, *_INTS):
        integer = name in _INTS
        if name not in names:
            values[name] = np.zeros(n, np.int64 if integer else float)
            values[f"{name}_null"] = np.ones(n, bool)
            continue
        col = table[name]
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            return None  # bool, decimal, text...: the row path says what is wrong with each row
        numbers, nulls, clean = _number_column(col, integer, parsed=False)
        values[name], values[f"{name}_null"] = numbers, nulls
        good &= clean
    symbol = table["symbol"]
    if not _is_text(symbol.type):
        return None
    codes, symbols, ok = _distinct(symbol, lambda v: v.upper() if isinstance(v, str) and v else None)
    good &= ok
    ts_col = table["ts"]
    if _is_text(ts_col.type):
        ts, ok = _times(ts_col, csv=False)
    elif pa.types.is_timestamp(ts_col.type) and ts_col.type.tz is not None:
        ts, ok = _stamps(ts_col)
    else:
        return None  # naive or not a time: every row is rejected, by the row path
    good &= ok
    return _Intake(n, values, codes, symbols, ts, good, lambda rows: table.take(pa.array(rows)).to_pylist())


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _stamps(col: Any) -> tuple[Any, Any]:
    """(epoch microseconds, ok) of an aware timestamp column; times with nanoseconds or beyond
    datetime's range are left to the row path."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    raw = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}[col.type.unit]
    with np.errstate(over="ignore"):
        us = raw // 1000 if col.type.unit == "ns" else raw * scale
    ok = ~col.is_null().to_numpy(zero_copy_only=False) & (us >= _DATETIME_US[0]) & (us <= _DATETIME_US[1])
    if col.type.unit == "ns":
        ok &= raw % 1000 == 0
    elif scale > 1:
        ok &= np.abs(raw) < 2**63 // scale
    return us, ok

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
