"""The codec's fast paths: readers compiled from the contract's schemas (the sink) and a flat-record
writer (the features agent). Both are strict, falling back to the codec on anything unusual, so they
only ever give fastavro's values and bytes (tests/unit/test_avro_fast.py checks it).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from schemas.avro_columns import Unsupported
from schemas.codec import SCHEMA_HEADER, VERSION_HEADER, Codec, HeaderCodec, SchemaSet
from schemas.records import Record

Reader = Callable[[bytes], dict[str, Any]]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # fastavro's timestamp-micros: epoch + timedelta
_MICROSECOND = timedelta(microseconds=1)


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro int and long)."""
    b = buf[pos]
    pos += 1
    acc = b & 0x7F
    shift = 7
    while b & 0x80:
        if shift > 63:
            raise ValueError("varint longer than 64 bits")
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        shift += 7
    return (acc >> 1) ^ -(acc & 1), pos


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = _read_long(buf, pos)
    end = pos + n
    if n < 0 or end > len(buf):
        raise ValueError("string length out of range")
    return buf[pos:end].decode("utf-8"), end


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_long(buf, pos)
    end = pos + n
    if n < 0 or end > len(buf):
        raise ValueError("bytes length out of range")
    return buf[pos:end], end


def _read_bool(buf: bytes, pos: int) -> tuple[bool, int]:
    b = buf[pos]
    if b > 1:
        raise ValueError("boolean byte is neither 0 nor 1")
    return b == 1, pos + 1


_NAMESPACE = {
    "_long": _read_long,
    "_str": _read_str,
    "_bytes": _read_bytes,
    "_bool": _read_bool,
    "_d": struct.Struct("<d").unpack_from,
    "_f": struct.Struct("<f").unpack_from,
    "_EPOCH": _EPOCH,
    "_td": timedelta,
}


class _Compiler:
    def __init__(self) -> None:
        self.functions: list[str] = []
        self.records: dict[str, str] = {}  # Avro full name -> generated function name
        self.counter = 0

    def var(self, stem: str) -> str:
        self.counter += 1
        return f"_{stem}{self.counter}"

    def record(self, schema: dict[str, Any], namespace: str = "") -> str:
        ns = schema.get("namespace", namespace)
        name = schema["name"] if "." in schema["name"] else f"{ns}.{schema['name']}".lstrip(".")
        fn = self.var("rec")
        self.records[name] = self.records[schema["name"]] = fn
        lines: list[str] = []
        names = []
        for field in schema["fields"]:
            target = self.var("f")
            names.append((field["name"], target))
            self.emit(field["type"], target, lines, "    ", ns)
        body = "\n".join(lines)
        fields = ", ".join(f"{n!r}: {t}" for n, t in names)
        self.functions.append(f"def {fn}(buf, pos):\n{body}\n    return {{{fields}}}, pos\n")
        return fn

    def emit(self, schema: Any, target: str, out: list[str], ind: str, ns: str) -> None:
        """Lines that read one value of `schema` into `target`, advancing `pos`."""
        if isinstance(schema, list):
            # a branch index below 64 is one byte, 2 * index (zigzag); anything else is invalid
            idx = self.var("u")
            out.append(f"{ind}{idx} = buf[pos]\n{ind}pos += 1")
            for i, branch in enumerate(schema):
                out.append(f"{ind}{'if' if i == 0 else 'elif'} {idx} == {2 * i}:")
                self.emit(branch, target, out, ind + "    ", ns)
            out.append(f"{ind}else:\n{ind}    raise ValueError('union index out of range')")
            return
        if isinstance(schema, dict):
            kind = schema["type"]
            logical = schema.get("logicalType")
            if logical is not None:
                if logical != "timestamp-micros" or kind != "long":
                    raise Unsupported(f"logical type {logical}")
                raw = self.var("us")
                out.append(f"{ind}{raw}, pos = _long(buf, pos)")
                out.append(f"{ind}{target} = _EPOCH + _td(microseconds={raw})")
                return
            if kind == "record":
                fn = self.record(schema, ns)
                out.append(f"{ind}{target}, pos = {fn}(buf, pos)")
                return
            if kind in ("array", "map"):
                self._block(schema, target, out, ind, ns)
                return
            return self.emit(kind, target, out, ind, ns)
        simple = {
            "null": f"{ind}{target} = None",
            "boolean": f"{ind}{target}, pos = _bool(buf, pos)",
            "int": self._small_long(target, ind),
            "long": self._small_long(target, ind),
            "double": f"{ind}{target} = _d(buf, pos)[0]\n{ind}pos += 8",
            "float": f"{ind}{target} = _f(buf, pos)[0]\n{ind}pos += 4",
            "string": f"{ind}{target}, pos = _str(buf, pos)",
            "bytes": f"{ind}{target}, pos = _bytes(buf, pos)",
        }
        if schema in simple:
            out.append(simple[schema])
        elif schema in self.records:
            out.append(f"{ind}{target}, pos = {self.records[schema]}(buf, pos)")
        else:
            raise Unsupported(f"type {schema!r}")

    def _small_long(self, target: str, ind: str) -> str:
        """A varint, inlined when it is one byte (most counts, flags and revisions)."""
        b = self.var("b")
        return (
            f"{ind}{b} = buf[pos]\n{ind}if {b} < 0x80:\n"
            f"{ind}    {target} = ({b} >> 1) ^ -({b} & 1)\n{ind}    pos += 1\n"
            f"{ind}else:\n{ind}    {target}, pos = _long(buf, pos)"
        )

    def _block(self, schema: dict[str, Any], target: str, out: list[str], ind: str, ns: str) -> None:
        is_map = schema["type"] == "map"
        n, item, key = self.var("n"), self.var("item"), self.var("key")
        out.append(f"{ind}{target} = {{}}" if is_map else f"{ind}{target} = []")
        out.append(f"{ind}while True:")
        out.append(f"{ind}    {n}, pos = _long(buf, pos)")
        out.append(f"{ind}    if {n} == 0:\n{ind}        break")
        out.append(f"{ind}    if {n} < 0:\n{ind}        {n} = -{n}\n{ind}        _, pos = _long(buf, pos)")
        out.append(f"{ind}    for _ in range({n}):")
        if is_map:
            out.append(f"{ind}        {key}, pos = _str(buf, pos)")
        self.emit(schema["values" if is_map else "items"], item, out, ind + "        ", ns)
        add = f"{target}[{key}] = {item}" if is_map else f"{target}.append({item})"
        out.append(f"{ind}        {add}")


def compile_reader(schema: dict[str, Any]) -> Reader:
    """A function reading one whole value of this record schema; raises on any oddity."""
    if schema.get("type") != "record":
        raise Unsupported("only record schemas are compiled")
    compiler = _Compiler()
    top = compiler.record(schema)
    source = "\n".join(compiler.functions) + (
        "\ndef read(buf):\n"
        f"    value, pos = {top}(buf, 0)\n"
        "    if pos != len(buf):\n"
        "        raise ValueError('trailing bytes')\n"
        "    return value\n"
    )
    namespace = dict(_NAMESPACE)
    # Generated from our own schema files, never from message data (as dataclasses do).
    exec(compile(source, f"<avro reader {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    reader: Reader = namespace["read"]  # type: ignore[assignment]
    return reader


def _write_long(n: int) -> bytes:
    """A zigzag varint (Avro int and long)."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _write_string(s: str) -> bytes:
    b = s.encode()
    return _write_long(len(b)) + b


def _write_timestamp_micros(ts: Any) -> bytes:
    if isinstance(ts, datetime):
        d = ts - _EPOCH  # a naive datetime raises here: contract records are aware
        return _write_long((d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds)
    return _write_long(ts)


def _write_boolean(b: bool) -> bytes:
    return b"\x01" if b else b"\x00"


def _write_nullable(write: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def nullable(x: Any) -> bytes:
        return b"\x00" if x is None else b"\x02" + write(x)

    return nullable


_FIELD_WRITERS: dict[str, Callable[[Any], bytes]] = {
    "string": _write_string,
    "long": _write_long,
    "int": _write_long,
    "double": struct.Struct("<d").pack,
    "boolean": _write_boolean,
    "timestamp-micros": _write_timestamp_micros,
}


class RecordWriter:
    """The codec's bytes for a flat record, one plain function per field: fastavro's generic union
    handling of nullable fields made encoding a large part of the features agent's cost per bar.

    `build` checks it against the codec itself on samples, byte for byte, and reuses the codec's
    framing (schema headers, or the Confluent magic byte and id, the same for every record of a topic).
    """

    def __init__(self, fields: Sequence[tuple[str, Callable[[Any], bytes]]]) -> None:
        self._get = attrgetter(*(name for name, _ in fields))
        self._writers = tuple(write for _, write in fields)
        self.prefix = b""
        self.headers: list[tuple[str, bytes]] = []

    @classmethod
    def for_schema(cls, schema: dict[str, Any]) -> RecordWriter | None:
        """A writer of this record schema's bare Avro body, or None when a field has a type it
        does not write (anything but the primitives above, alone or as ["null", type])."""
        fields = []
        for spec in schema["fields"]:
            ftype = spec["type"]
            nullable = isinstance(ftype, list) and len(ftype) == 2 and ftype[0] == "null"
            if nullable:
                ftype = ftype[1]
            if isinstance(ftype, dict):
                ftype = ftype.get("logicalType") or ftype["type"]
            write = _FIELD_WRITERS.get(ftype) if isinstance(ftype, str) else None
            if write is None:
                return None
            fields.append((spec["name"], _write_nullable(write) if nullable else write))
        return cls(fields)

    @classmethod
    def build(cls, codec: Codec, topic: str, samples: Sequence[Record]) -> RecordWriter | None:
        """A writer equal to `codec` on `samples`, or None (then the caller uses the codec)."""
        writer = cls.for_schema(SchemaSet.load().get(samples[0].SCHEMA).parsed)
        if writer is None:
            return None
        for sample in samples:
            value, headers = codec.encode(topic, sample)
            body = writer._body(sample)
            if not value.endswith(body) or (writer.headers and headers != writer.headers):
                return None
            writer.prefix, writer.headers = value[: len(value) - len(body)], list(headers)
        return writer

    def _body(self, record: Any) -> bytes:
        return b"".join([write(v) for write, v in zip(self._writers, self._get(record), strict=True)])

    def encode(self, record: Any) -> bytes:
        """`record`: any object with the schema's fields as attributes."""
        return self.prefix + self._body(record)


Decoder = Callable[[Any], dict[str, Any]]  # a confluent-kafka Message -> the record's fields


def decoder(codec: Codec, record: type[Record], topic: str) -> Decoder:
    """Decodes messages of one topic; raises the codec's DecodeError for anything undecodable."""
    decode_dict = codec.decode_dict

    def through_codec(msg: Any) -> dict[str, Any]:
        return decode_dict(
            record, msg.value(), msg.headers(), topic=topic, partition=msg.partition(), offset=msg.offset()
        )

    if not isinstance(codec, HeaderCodec):
        return through_codec
    schema = codec.schemas.get(record.SCHEMA)
    try:
        read = compile_reader(json.loads(schema.text))
    except Unsupported:
        return through_codec
    # exactly the headers HeaderCodec.encode writes for the current version of this schema
    expected = [(SCHEMA_HEADER, schema.full_name.encode()), (VERSION_HEADER, str(schema.version).encode())]

    def fast(msg: Any) -> dict[str, Any]:
        value = msg.value()
        if value is not None and msg.headers() == expected:
            try:
                return read(value)
            except Exception:  # malformed in some way: the codec decides, and words the error
                return through_codec(msg)
        return through_codec(msg)

    return fast
