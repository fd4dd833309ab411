"""The files of a backtest or a demo session: record tables (CSV or Parquet, written column-wise,
the CSV byte for byte what csv.writer made of the records) and report.html (pipeline.report_html)."""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Any

from pipeline.json_cells import JsonCells, json_default, to_json  # noqa: F401 - json_default too
from pipeline.report_html import _fmt, write_html  # noqa: F401 - where they were
from schemas.codec import SchemaSet
from schemas.records import Record

# Record tables. A column's kind comes from the record's Avro schema (a file and a topic hold the
# same thing); a CSV cell is what csv.writer wrote for the value: repr of a float, str of an int
# or a bool, isoformat of a time, JSON (sorted keys) of a map or a list, nothing for None.

FORMATS = ("csv", "parquet")
_KINDS = {"double": "float", "float": "float", "long": "int", "int": "int", "boolean": "bool",
          "string": "str", "timestamp-micros": "time"}  # anything else (a map, an array, a record): "json"
_PYTHON = {"float": float, "int": int, "bool": bool, "str": str, "time": datetime}
_CHUNK = 262_144  # rows of CSV text joined at a time
_ROWS = 4096  # records read into columns at a time


def _arrow_type(kind: str) -> Any:
    import pyarrow as pa

    types = {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string(),
             "time": pa.timestamp("us", tz="UTC")}
    return types[kind]


def record_kinds(record_type: type[Record]) -> dict[str, str]:
    """Field name -> float, int, bool, str, time or json, from the record's schema."""
    return dict(_kinds(record_type.SCHEMA))


@functools.cache
def _kinds(schema: str) -> tuple[tuple[str, str], ...]:
    kinds = {}
    for spec in SchemaSet.load().get(schema).parsed["fields"]:
        ftype = spec["type"]
        if isinstance(ftype, list):
            branches = [t for t in ftype if t != "null"]
            ftype = branches[0] if len(branches) == 1 else "union"
        if isinstance(ftype, dict):
            ftype = ftype.get("logicalType") or ftype["type"]
        kinds[spec["name"]] = _KINDS.get(ftype, "json")
    return tuple(kinds.items())


def write_records(
    path: Path, record_type: type[Record], records: Sequence[Any], fmt: str = "csv", *, by_time: bool = False
) -> int:
    """Records as a table named after their fields; `by_time`: ordered by (ts, symbol), stably."""
    import pyarrow as pa

    kinds = record_kinds(record_type)
    columns = _columns(records, kinds, csv=fmt != "parquet")
    order = _time_order(records, columns["ts"], columns["symbol"]) if by_time and records else None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pa.table({name: c.arrow() for name, c in columns.items()})
        pq.write_table(table if order is None else table.take(order), path)
    else:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # Arrow's kernels let go of the GIL
            cells = list(pool.map(_Column.cells, columns.values()))
        _write_csv(path, list(kinds), cells if order is None else [c.take(order) for c in cells])
    return len(records)


def write_rows(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]], fmt: str = "csv") -> int:
    """Small tables of plain rows (trades, rejected rows): the csv module, or Arrow for Parquet."""
    rows = list(rows)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        plain = [{c: to_json(v) if isinstance(v := r.get(c), dict | list) else v for c in columns}
                 for r in rows]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(plain) if plain else pa.table({c: [] for c in columns}), path)
        return len(rows)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return len(rows)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return to_json(value)
    return value


def _columns(records: Sequence[Any], kinds: dict[str, str], csv: bool = False) -> dict[str, _Column]:
    """The records' fields as columns, a few thousand records at a time: each record and its values
    are touched while they are in the CPU's cache (records made over a long run lie far apart);
    `csv`: the columns formatted by Python (JSON, say) are kept as their CSV cells."""
    builders = {name: _Builder(kind) for name, kind in kinds.items()}
    getters = [(attrgetter(name), b) for name, b in builders.items()]
    for start in range(0, len(records), _ROWS):
        part = records[start: start + _ROWS]
        for get, builder in getters:
            builder.add(list(map(get, part)))
    return {name: b.finish(functools.partial(_field, records, name), csv) for name, b in builders.items()}


def _field(records: Sequence[Any], name: str) -> list[Any]:
    return list(map(attrgetter(name), records))


class _Builder:
    """Collects one column chunk by chunk as Arrow arrays (text and times as codes into their
    distinct values), or gives up when a value's Python type is not the schema's (an int in a
    double field, say): then the column is formatted by Python, as csv.writer formatted it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.ok = kind in _PYTHON
        self.parts: list[Any] = []
        self.code: dict[Any, int] = {None: -1}
        self.labels: list[Any] = []
        self.zones: set[Any] = set()
        self.type = _arrow_type(kind) if self.ok else None

    def add(self, values: list[Any]) -> None:
        import numpy as np
        import pyarrow as pa

        if not self.ok:
            return
        expected = _PYTHON[self.kind]
        if self.kind in ("str", "time"):
            if self.kind == "time":  # equal instants in two zones would share one isoformat
                self.zones.update(map(getattr, values, repeat("tzinfo"), repeat(None)))
                if len(self.zones - {None}) > 1:
                    self.ok = False
                    return
            new = set(values).difference(self.code)
            if not all(type(v) is expected for v in new):
                self.ok = False
                return
            for v in new:
                self.code[v] = len(self.labels)
                self.labels.append(v)
            self.parts.append(np.fromiter(map(self.code.__getitem__, values), np.int32, len(values)))
            return
        if not set(map(type, values)) <= {expected, type(None)}:
            self.ok = False
            return
        try:
            self.parts.append(pa.array(values, self.type))
        except (OverflowError, pa.ArrowException):  # an int beyond int64
            self.ok = False

    def finish(self, values: Callable[[], list[Any]], csv: bool = False) -> _Column:
        """The column; `values`: its Python values, for a column given up on (`csv`: then kept as
        its CSV cells, quoted as csv.writer quotes them)."""
        import numpy as np
        import pyarrow as pa

        if not self.ok:  # JSON of maps and lists; values of a type the schema does not say
            text = JsonCells() if self.kind == "json" else lambda v: str(_cell(v))
            texts = [None if v is None else text(v) for v in values()]
            if csv:
                return _Column("cell", _text_array([None if t is None else _csv_cell(t) for t in texts]))
            return _Column("text", _text_array(texts))
        if self.kind in ("str", "time"):
            codes = np.concatenate(self.parts) if self.parts else np.zeros(0, np.int32)
            labels = pa.array(self.labels, _arrow_type(self.kind))
            coded = pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), labels)
            return _Column(self.kind, coded, self.labels)
        empty = pa.array([], _arrow_type(self.kind))
        return _Column(self.kind, pa.concat_arrays(self.parts) if self.parts else empty)


def _text_array(texts: list[str | None]) -> Any:
    """An Arrow string array of `texts`; when all are ASCII, none None (JSON cells, say), made from
    their concatenation and lengths, which is several times faster than converting each string."""
    import numpy as np
    import pyarrow as pa

    if None not in texts:
        data = "".join(texts)  # type: ignore[arg-type]
        if data.isascii() and len(data) < 2**31:  # characters are bytes; int32 offsets
            offsets = np.zeros(len(texts) + 1, np.int32)
            np.cumsum(np.fromiter(map(len, texts), np.int32, len(texts)), out=offsets[1:])  # type: ignore[arg-type]
            return pa.StringArray.from_buffers(len(texts), pa.py_buffer(offsets), pa.py_buffer(data.encode()))
    return pa.array(texts, pa.string())


class _Column:
    """One column as written: its Arrow array (dictionary-encoded for text and times, whose
    distinct values are `labels`) and, on demand, its CSV cells."""

    def __init__(self, kind: str, array: Any, labels: list[Any] | None = None) -> None:
        self.kind = kind
        self.array = array
        self.labels = labels or []

    def cells(self) -> Any:
        """The CSV cells as an Arrow string array (null: an empty cell)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.kind == "float":
            return _float_cells(self.array)
        if self.kind == "int":
            return pc.cast(self.array, pa.string())
        if self.kind == "bool":
            return pc.if_else(self.array, "True", "False")
        if self.kind == "time":
            labels = pa.array([t.isoformat() for t in self.labels], pa.string())
            return pa.DictionaryArray.from_arrays(self.array.indices, labels).cast(pa.string())
        if self.kind == "str":
            return _quoted(self.array.dictionary).take(self.array.indices)
        if self.kind == "cell":  # quoted already
            return self.array
        return _quoted(self.array)

    def arrow(self) -> Any:
        """The column for Parquet (plain types; Parquet dictionary-encodes by itself)."""
        return self.array.dictionary_decode() if self.kind in ("time", "str") else self.array


def _float_cells(array: Any) -> Any:
    """repr() of each double: Arrow's shortest round-trip text where it is provably repr's (zero,
    and 1e-4 <= |x| < 1e9, where both write positional digits; ".0" added to whole numbers), repr
    itself for the rest (tests/unit/test_columnar.py checks the agreement)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    x = array.to_numpy(zero_copy_only=False)
    text = pc.cast(array, pa.string())
    with np.errstate(invalid="ignore"):
        size = np.abs(x)
        trusted = (x == 0) | (size >= 1e-4) & (size < 1e9)
        whole = trusted & (x == np.floor(x))  # Arrow writes "100", repr "100.0"
    trusted &= ~pc.fill_null(pc.match_substring(text, "e"), False).to_numpy(zero_copy_only=False)
    python = ~trusted & ~array.is_null().to_numpy(zero_copy_only=False)
    if whole.any():
        text = _replaced(text, whole & trusted, lambda cells: pc.binary_join_element_wise(cells, ".0", ""))
    if python.any():
        text = pc.replace_with_mask(text, pa.array(python), pa.array([repr(v) for v in x[python].tolist()]))
    return text


def _replaced(text: Any, where: Any, change: Callable[[Any], Any]) -> Any:
    """`text` with the cells at `where` changed (only those are computed)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pa.array(where)
    return pc.replace_with_mask(text, mask, change(text.filter(mask)))



def _csv_cell(text: str) -> str:
    """One text as csv.writer writes it (QUOTE_MINIMAL: quoted when it holds a comma, a quote,
    CR or LF; a quote doubled)."""
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    if "," in text or "\r" in text or "\n" in text:
        return '"' + text + '"'
    return text


def _quoted(array: Any) -> Any:
    """Text cells quoted as csv.writer quotes them (QUOTE_MINIMAL: a comma, a quote, CR or LF)."""
    import pyarrow.compute as pc

    special = pc.match_substring_regex(array, '[,"\r\n]')
    if not pc.any(special).as_py():
        return array
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(array, '"', '""'), '"', "")
    return pc.if_else(pc.fill_null(special, False), quoted, array)


def _time_order(records: Sequence[Any], ts: _Column, symbol: _Column) -> Any:
    """Row order by (ts, symbol), stable; None when already in it."""
    import numpy as np
    import pyarrow as pa

    if (ts.kind, symbol.kind) != ("time", "str"):  # values of unexpected types: as sorted() orders them
        return pa.array(sorted(range(len(records)), key=lambda i: (records[i].ts, records[i].symbol)))
    stamps = ts.arrow().cast(pa.int64()).to_numpy(zero_copy_only=False)
    codes = symbol.array.indices.to_numpy(zero_copy_only=False)
    rank = np.argsort(np.argsort(np.array(symbol.labels, object)))[codes]  # codes ranked by name
    dt, ds = np.diff(stamps), np.diff(rank)
    if ((dt > 0) | (dt == 0) & (ds >= 0)).all():
        return None
    return pa.array(np.lexsort((rank, stamps)))


def _write_csv(path: Path, header: list[str], cells: list[Any]) -> None:
    """The header as csv.writer writes it, then the rows joined by Arrow, CRLF-terminated."""
    import pyarrow.compute as pc

    head = io.StringIO()
    csv.writer(head).writerow(header)
    n = len(cells[0]) if cells else 0
    with path.open("wb") as fh:
        fh.write(head.getvalue().encode())
        for start in range(0, n, _CHUNK):
            part = [c.slice(start, _CHUNK) for c in cells]
            part[-1] = pc.binary_join_element_wise(pc.fill_null(part[-1], ""), "\r\n", "")  # the line's end
            lines = pc.binary_join_element_wise(*part, ",", null_handling="replace")
            fh.write(_string_data(lines))


def _string_data(array: Any) -> memoryview:
    """The concatenated bytes of an Arrow string array's values."""
    import numpy as np

    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset: array.offset + len(array) + 1]
    return memoryview(array.buffers()[2])[int(offsets[0]): int(offsets[-1])]
