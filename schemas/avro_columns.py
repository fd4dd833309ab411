"""Columnar reads of the flat contract schemas: message values decoded together with numpy over
their concatenation, no Python object per field, anything unusual flagged for the codec
(schemas.column_decoder feeds it batches and joins the chunks).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TS_MIN_US = -62_135_596_800_000_000  # datetime.min and .max (UTC) in epoch microseconds: beyond them
_TS_MAX_US = 253_402_300_799_999_999  # fastavro's epoch + timedelta overflows, so the codec decides
_KINDS = frozenset({"string", "long", "int", "double", "float", "boolean", "timestamp-micros"})
_PAD = bytes(16)  # after the last value, so no fixed-width read runs off the buffer


class Unsupported(ValueError):
    """A schema uses a type these readers do not compile; use the codec for it."""


class ColumnReader:
    """Values of one flat record schema (primitives, alone or in a union with null) decoded together,
    with numpy over their concatenation: no Python object per field. Strict like the compiled
    readers: a value it cannot read to the byte (malformed, a varint beyond 64 bits, a time outside
    datetime's range, invalid UTF-8) is flagged, for the codec to decide and word the error."""

    def __init__(self, fields: Sequence[tuple[str, str, int | None]]) -> None:
        self.fields = tuple(fields)  # (name, kind, index of the null branch or None)

    @classmethod
    def for_schema(cls, schema: dict[str, Any]) -> ColumnReader | None:
        """A reader of this record schema, or None when a field is not a primitive it reads."""
        fields = []
        for spec in schema["fields"]:
            ftype, null_at = spec["type"], None
            if isinstance(ftype, list):
                if len(ftype) != 2 or "null" not in ftype:
                    return None
                null_at = ftype.index("null")
                ftype = ftype[1 - null_at]
            if isinstance(ftype, dict):
                logical = ftype.get("logicalType")
                if logical is not None and (logical, ftype["type"]) != ("timestamp-micros", "long"):
                    return None
                ftype = logical or ftype["type"]
            if ftype not in _KINDS:
                return None
            fields.append((spec["name"], ftype, null_at))
        return cls(fields)

    def blank(self, n: int) -> dict[str, Column]:
        """Columns of n rows to fill (with `Column.put`)."""
        import numpy as np

        dtypes = {"double": np.float64, "float": np.float64, "boolean": bool, "string": np.int32}
        return {
            name: Column(kind, np.zeros(n, dtypes.get(kind, np.int64)),
                         None if null_at is None else np.ones(n, bool), [] if kind == "string" else None)
            for name, kind, null_at in self.fields
        }  # fmt: skip

    def read(self, values: Sequence[bytes], prefix: bytes = b"") -> tuple[dict[str, Column], Any]:
        """(columns, ok): every column has a row per value; where `ok` is False the row holds
        garbage and the value is the caller's to decode another way. With `prefix`, each value must
        start with those bytes (a wire-format frame), and the record follows them."""
        import numpy as np

        n = len(values)
        lengths = np.fromiter(map(len, values), np.int64, n)
        end = np.cumsum(lengths)
        total = int(end[-1]) if n else 0
        data = _Bytes(b"".join(itertools.chain(values, (_PAD,))))
        pos = end - lengths
        ok = lengths >= len(prefix)
        for i, byte in enumerate(prefix):
            ok &= data.u8[pos + i] == byte
        pos += len(prefix)
        spans: dict[str, tuple[Any, Any]] = {}
        out: dict[str, Column] = {}
        for name, kind, null_at in self.fields:
            nulls = rows = None
            if null_at is not None:
                branch = data.u8[pos]
                ok &= (branch | 2) == 2  # 0 or 2: branch 0 or 1
                nulls = branch == 2 * null_at
                pos += 1
                if nulls.any():  # the non-null rows only (else every row, without an index)
                    rows = np.flatnonzero(~nulls)
            at = pos if rows is None else pos[rows]
            col, after, bad = data.read(kind, at)
            if kind == "string":
                good = (col >= 0) & (col <= (end if rows is None else end[rows]) - after)
                bad = ~good if bad is None else bad | ~good
                length = np.where(good, col, 0)
                spans[name] = (_spread(after, rows, n), _spread(length, rows, n))
                after = after + length
            if bad is not None:
                ok[bad if rows is None else rows[bad]] = False
            if rows is None:
                pos = after
            else:
                pos[rows] = after
            np.minimum(pos, total + 1, out=pos)  # past its own value: still past it at the end
            out[name] = Column(kind, _spread(col, rows, n), nulls)
        ok &= pos == end
        for name, (starts, length) in spans.items():
            column = out[name]
            keep = ok if column.nulls is None else ok & ~column.nulls
            column.values, column.labels, bad = _labels(data.u8, starts, length, keep)
            ok[bad] = False
        return out, ok


class _Bytes:
    """The values' concatenation, as bytes and as 8- and 4-byte numbers starting at every byte
    (arrays with a stride of one byte: a gather at any positions reads them, unaligned)."""

    def __init__(self, raw: bytes) -> None:
        import numpy as np

        self.u8 = np.frombuffer(raw, np.uint8)
        self.u64 = np.ndarray((len(raw) - 7,), "<u8", raw, 0, (1,))
        self.f8 = np.ndarray((len(raw) - 7,), "<f8", raw, 0, (1,))
        self.f4 = np.ndarray((len(raw) - 3,), "<f4", raw, 0, (1,))

    def read(self, kind: str, at: Any) -> tuple[Any, Any, Any]:
        """(values, positions after them, rows not read to the byte or None) of `kind` at `at`."""
        import numpy as np

        if kind == "double":
            return self.f8[at], at + 8, None
        if kind == "float":
            return self.f4[at].astype(np.float64), at + 4, None
        if kind == "boolean":
            byte = self.u8[at]
            return byte == 1, at + 1, byte > 1
        values, after, bad = _varints(self, at)
        if kind == "timestamp-micros":
            out_of_range = (values < _TS_MIN_US) | (values > _TS_MAX_US)
            bad = out_of_range if bad is None else bad | out_of_range
        return values, after, bad


_HIGH = 0x8080808080808080  # the continuation bit of each byte of a uint64


def _varints(data: _Bytes, at: Any) -> tuple[Any, Any, Any]:
    """Zigzag varints at positions `at`: (values, positions after them, rows beyond 64 bits or None).
    The usual ones, up to 8 bytes, from one unaligned uint64 each, their 7-bit groups packed
    together by masks and shifts; longer ones byte by byte."""
    import numpy as np

    first = data.u8[at]
    if not (first & 0x80).any():  # one byte each (counts, flags, revisions)
        small = first.astype(np.int64)
        return (small >> 1) ^ -(small & 1), at + 1, None
    u = np.uint64
    w = data.u64[at]
    stop = ~w & u(_HIGH)  # the high bit of each byte that ends a varint
    low = stop & (~stop + u(1))  # the first of them (0 where none is in these 8 bytes)
    mask = (low << u(1)) - u(1)  # the varint's bytes (all 8 when it ends in the 8th, or later)
    x = w & mask & u(0x7F7F7F7F7F7F7F7F)
    x = (x & u(0x007F007F007F007F)) | ((x >> u(1)) & u(0x3F803F803F803F80))
    x = (x & u(0x00003FFF00003FFF)) | ((x >> u(2)) & u(0x0FFFC0000FFFC000))
    x = (x & u(0x000000000FFFFFFF)) | ((x >> u(4)) & u(0x00FFFFFFF0000000))
    values = (x >> u(1)).astype(np.int64) ^ -(x & u(1)).astype(np.int64)
    after = at + (np.bitwise_count(mask) >> 3)
    longer = np.flatnonzero(stop == 0)
    if not longer.size:
        return values, after, None
    values[longer], after[longer], beyond = _long_varints(data.u8, at[longer])
    bad = np.zeros(len(at), bool)
    bad[longer] = beyond
    return values, after, bad


def _long_varints(buf: Any, at: Any) -> tuple[Any, Any, Any]:
    """Varints at `at` byte by byte: (values, positions after them, rows beyond 64 bits)."""
    import numpy as np

    first = buf[at].astype(np.uint64)
    acc = first & np.uint64(0x7F)
    nxt = at + 1
    more = np.flatnonzero(first & np.uint64(0x80))
    bad = np.zeros(len(at), bool)
    shift = 7
    while more.size:
        byte = buf[nxt[more]].astype(np.uint64)
        if shift == 63:  # the 10th byte: beyond 64 bits (or an 11th byte) is the codec's to judge
            bad[more[byte > 1]] = True
        acc[more] |= (byte & np.uint64(0x7F)) << np.uint64(shift)
        nxt[more] += 1
        more = more[(byte & np.uint64(0x80)) != 0] if shift < 63 else more[:0]
        shift += 7
    values = (acc >> np.uint64(1)).astype(np.int64) ^ -(acc & np.uint64(1)).astype(np.int64)
    return values, nxt, bad


def _spread(col: Any, rows: Any, n: int) -> Any:
    """A column read on `rows` only (the non-null ones; None: all) as a column of all n rows."""
    import numpy as np

    if rows is None:
        return col
    full = np.zeros(n, col.dtype)
    full[rows] = col
    return full


@dataclass
class Column:
    """One decoded column: numpy values (int64 microseconds for times; int32 codes into `labels`
    for strings) and, for a nullable field, where it is null."""

    kind: str
    values: Any
    nulls: Any = None
    labels: list[str] | None = None

    def arrow(self) -> Any:
        """As an Arrow array: strings dictionary-encoded, times timestamp[us, UTC]."""
        import pyarrow as pa

        if self.kind == "string":
            codes = pa.array(self.values, pa.int32(), mask=self.nulls)
            return pa.DictionaryArray.from_arrays(codes, pa.array(self.labels or [], pa.string()))
        kind = {"long": pa.int64(), "int": pa.int64(), "double": pa.float64(), "float": pa.float64(),
                "boolean": pa.bool_(), "timestamp-micros": pa.timestamp("us", tz="UTC")}  # fmt: skip
        return pa.array(self.values, kind[self.kind], mask=self.nulls)

    def put(self, row: int, value: Any, codes: dict[str, int]) -> None:
        """One value decoded another way, into its row."""
        if self.nulls is not None:
            self.nulls[row] = value is None
        if value is None:
            return
        if self.kind == "string":
            code = codes.get(value)
            if code is None:
                assert self.labels is not None
                code = codes[value] = len(self.labels)
                self.labels.append(value)
            value = code
        elif self.kind == "timestamp-micros":
            value = (value - _EPOCH) // _MICROSECOND
        self.values[row] = value


def _labels(buf: Any, starts: Any, length: Any, keep: Any) -> tuple[Any, list[str], Any]:
    """Strings as (codes, labels, rows not UTF-8): the bytes of the `keep` rows gathered, hashed by
    Arrow and decoded once per distinct value."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = np.flatnonzero(keep)
    lens = length[rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    data = buf[np.repeat(starts[rows] - offsets[:-1], lens) + np.arange(offsets[-1])]
    binary = pa.Array.from_buffers(
        pa.large_binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    encoded = pc.dictionary_encode(binary)
    labels: list[str] = []
    invalid: list[int] = []
    for i, raw in enumerate(encoded.dictionary.to_pylist()):
        try:
            labels.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            labels.append("")
            invalid.append(i)
    codes = np.zeros(len(keep), np.int32)
    codes[rows] = encoded.indices.to_numpy()
    bad = rows[np.isin(codes[rows], invalid)] if invalid else rows[:0]
    return codes, labels, bad
