"""A bar file's intake column-wise (pyarrow): what prepare_rows(load_bar_file(path)) gives, without a
dict, a parse and a validation per row. Rows it cannot judge column-wise take the row path, one by one.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.bar_columns import _EPOCH, _US, BarColumns
from connectors.bar_rows import (
    FILE_COLUMNS,
    Prepared,
    Rejected,
    _cell,
    _csv_row,
    load_bar_file,
    prepare_rows,
    row_to_bar,
)
from connectors.validation import BarRejected, parse_ts
from opsinfra.errors import InputError

_FLOATS = ("open", "high", "low", "close", "vwap")
_INTS = ("volume", "trade_count", "revision")
_DATETIME_US = tuple((t - _EPOCH) // _US for t in (datetime(1, 1, 1, tzinfo=UTC),
                                                    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)))
_INT_TEXT = r"^-?[0-9]{1,18}$"  # what int() and Arrow's cast read alike, in int64
_FLOAT_TEXT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"  # float() and Arrow's cast agree


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
