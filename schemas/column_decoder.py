"""Messages of one topic decoded into columns as they are read: batches fed to a ColumnDecoder are
decoded a chunk at a time by the ColumnReader, the codec taking whatever it flags, then joined.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opsinfra.errors import DecodeError
from schemas.avro_columns import Column, ColumnReader, Unsupported
from schemas.codec import (
    SCHEMA_HEADER,
    VERSION_HEADER,
    Codec,
    HeaderCodec,
    RegistryCodec,
    SchemaSet,
    decode,
)
from schemas.records import Record

CHUNK = 16_384  # messages decoded together: numpy's per-call cost spread, its arrays still in cache


@dataclass
class Decoded:
    """Messages of one topic decoded into columns: a row per decodable message, in message order."""

    columns: dict[str, Column]
    index: Any  # numpy int64: the position of each row's message in the batch
    errors: list[tuple[int, DecodeError]]  # the undecodable messages, by position


class ColumnDecoder:
    """Messages of one topic decoded into columns as they are read: `add` batches of them (decoded
    a chunk at a time), then `finish` once. Values in the codec's framing of the current schema
    version go through the ColumnReader, every other one (another framing or version, anything it
    flags) through the codec, one at a time, with the codec's errors."""

    def __init__(self, codec: Codec, record: type[Record], topic: str, *, chunk: int = CHUNK) -> None:
        schemas = codec.schemas if isinstance(codec, HeaderCodec | RegistryCodec) else SchemaSet.load()
        schema = schemas.get(record.SCHEMA)
        reader = ColumnReader.for_schema(json.loads(schema.text))
        if reader is None:
            raise Unsupported(f"{record.SCHEMA} is not a flat schema")
        self.codec, self.record, self.topic, self.reader, self.chunk = codec, record, topic, reader, chunk
        self._headers = None  # exactly the headers HeaderCodec.encode writes, for its framing
        if isinstance(codec, HeaderCodec):
            self._headers = [(SCHEMA_HEADER, schema.full_name.encode()),
                             (VERSION_HEADER, str(schema.version).encode())]  # fmt: skip
        self._frames: dict[bytes, bool] = {}  # Confluent prefix -> written in the current schema
        self._pending: tuple[list[Any], ...] = ([], [], [], [])  # values, headers, partitions, offsets
        self._parts: list[Decoded] = []
        self._seen = 0

    def add(
        self,
        values: Sequence[bytes | None],
        headers: Sequence[Any],
        partitions: Sequence[int] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> None:
        """The next messages, in order (partitions and offsets only name undecodable ones)."""
        n = len(values)
        if n >= self.chunk // 2 and not self._pending[0]:  # big enough by itself: no copy to pend
            if n <= self.chunk:
                self._decode_part(values, headers, partitions, offsets)
                return
            for i in range(0, n, self.chunk):
                at = slice(i, i + self.chunk)
                self._decode_part(values[at], headers[at], None if partitions is None else partitions[at],
                                  None if offsets is None else offsets[at])  # fmt: skip
            return
        for into, part in zip(self._pending, (values, headers, partitions, offsets), strict=True):
            into.extend(itertools.repeat(None, n) if part is None else part)
        if len(self._pending[0]) >= self.chunk:
            self._flush()

    def finish(self) -> Decoded:
        """Everything added, as one set of columns."""
        self._flush()
        return _joined(self.reader, self._parts)

    def _flush(self) -> None:
        pending, self._pending = self._pending, ([], [], [], [])
        for i in range(0, len(pending[0]), self.chunk):
            self._decode_part(*(p[i : i + self.chunk] for p in pending))

    def _decode_part(
        self,
        values: Sequence[bytes | None],
        headers: Sequence[Any],
        partitions: Sequence[int | None] | None,
        offsets: Sequence[int | None] | None,
    ) -> None:
        part = self._decode(values, headers, partitions, offsets)
        part.index += self._seen
        part.errors = [(i + self._seen, exc) for i, exc in part.errors]
        self._seen += len(values)
        self._parts.append(part)

    def _frame(self, values: Sequence[bytes | None]) -> bytes | None:
        """The Confluent frame (magic byte and schema id) of the first framed value, when that
        id's schema is the current one of the record (the rest of the chunk is read with it)."""
        assert isinstance(self.codec, RegistryCodec)
        first = next((v[:5] for v in values if v is not None and len(v) >= 5 and v[0] == 0), None)
        if first is None:
            return None
        known = self._frames.get(first)
        if known is None:
            known = self._frames[first] = self.codec.is_current(int.from_bytes(first[1:], "big"), self.record)
        return first if known else None

    def _decode(
        self,
        values: Sequence[bytes | None],
        headers: Sequence[Any],
        partitions: Sequence[int | None] | None,
        offsets: Sequence[int | None] | None,
    ) -> Decoded:
        import numpy as np

        n = len(values)
        frame = self._frame(values) if isinstance(self.codec, RegistryCodec) else None
        if self._headers is not None or frame is not None:
            present = [b"" if v is None else v for v in values] if None in values else values
            columns, ok = self.reader.read(present, frame or b"")  # type: ignore[arg-type]
            if self._headers is not None and headers.count(self._headers) < n:  # not all as expected
                ok &= np.fromiter(map(operator.eq, itertools.repeat(self._headers), headers), bool, n)
        else:  # another framing: the codec per message, into the same columns
            columns, ok = self.reader.blank(n), np.zeros(n, bool)
        errors: list[tuple[int, DecodeError]] = []
        slow = np.flatnonzero(~ok).tolist()
        codes = {name: {label: i for i, label in enumerate(c.labels or ())} for name, c in columns.items()}
        for i in slow:
            try:
                rec = decode(self.codec, self.record, values[i], headers[i], topic=self.topic,
                             partition=None if partitions is None else partitions[i],
                             offset=None if offsets is None else offsets[i])  # fmt: skip
            except DecodeError as exc:
                errors.append((i, exc))
                continue
            ok[i] = True
            for name, value in rec.to_avro().items():
                column = columns.get(name)
                if column is not None:
                    column.put(i, value, codes[name])
        keep = np.flatnonzero(ok)
        if len(keep) < n:
            for column in columns.values():
                column.values = column.values[keep]
                column.nulls = None if column.nulls is None else column.nulls[keep]
        return Decoded(columns, keep, errors)


def _joined(reader: ColumnReader, parts: list[Decoded]) -> Decoded:
    """The chunks' columns as one (string codes mapped onto one label list)."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    if not parts:
        return Decoded(reader.blank(0), np.zeros(0, np.int64), [])
    columns: dict[str, Column] = {}
    for name, kind, null_at in reader.fields:
        chunks = [p.columns[name] for p in parts]
        labels: list[str] | None = None
        if kind == "string":
            codes: dict[str, int] = {}
            values = np.concatenate([_recoded(c, codes) for c in chunks])
            labels = list(codes)
        else:
            values = np.concatenate([c.values for c in chunks])
        nulls = None if null_at is None else np.concatenate([c.nulls for c in chunks])
        columns[name] = Column(kind, values, nulls, labels)
    return Decoded(
        columns, np.concatenate([p.index for p in parts]), [e for p in parts for e in p.errors]
    )


def _recoded(column: Column, codes: dict[str, int]) -> Any:
    """A chunk's string codes as codes into the joined labels (`codes` grows with its new labels)."""
    import numpy as np

    if not column.labels:
        return column.values
    labels = column.labels
    remap = np.fromiter((codes.setdefault(s, len(codes)) for s in labels), np.int32, len(labels))
    return remap[column.values]


def decode_columns(
    codec: Codec,
    record: type[Record],
    topic: str,
    values: Sequence[bytes | None],
    headers: Sequence[Any],
    *,
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
) -> Decoded:
    """A batch of messages as columns (a ColumnDecoder given them all at once)."""
    decoder = ColumnDecoder(codec, record, topic)
    decoder.add(values, headers, partitions, offsets)
    return decoder.finish()
