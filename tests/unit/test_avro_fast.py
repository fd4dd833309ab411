"""The codec's fast paths against fastavro itself: a compiled reader returns exactly fastavro's values
and the record writer writes exactly fastavro's bytes, on every contract schema each one takes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.avro_columns import ColumnReader
from schemas.avro_fast import RecordWriter, compile_reader
from schemas.codec import AvroSchema, HeaderCodec, RegistryCodec, SchemaSet
from schemas.records import RECORD_TYPES, DeadLetter, Record
from tests.avro_values import avro_values
from tests.samples import sample_records

SCHEMAS: dict[str, AvroSchema] = SchemaSet.load().current  # every .avsc of the contract
READERS = {name: compile_reader(json.loads(s.text)) for name, s in SCHEMAS.items()}
WRITERS = {name: w for name, s in SCHEMAS.items() if (w := RecordWriter.for_schema(s.parsed)) is not None}
COLUMNS = {name: c for name, s in SCHEMAS.items()
           if (c := ColumnReader.for_schema(json.loads(s.text))) is not None}
TS = datetime(2026, 11, 20, 15, 31, 7, 250, tzinfo=UTC)
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])


def fastavro_bytes(name: str, value: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMAS[name].parsed, value)
    return buf.getvalue()


def fastavro_value(name: str, value: bytes) -> Any:
    buf = io.BytesIO(value)
    out = fastavro.schemaless_reader(buf, SCHEMAS[name].parsed, None)
    assert buf.tell() == len(value)
    return out


def exactly(a: Any, b: Any) -> bool:
    """Equal to the last detail: types (True is not 1, 1.0 is not 1), key order, NaN, -0.0, zones."""
    return repr(a) == repr(b)


def _samples() -> list[Record]:
    letter = DeadLetter(
        "market.bars.1m", 3, 42, b"AAPL", b"\x01junk", {"h": b"v"}, "high < low", "InvalidBar", "bars", TS
    )
    return [*sample_records(TS).values(), letter]


def test_the_fast_paths_cover_the_schemas_they_are_for() -> None:
    # readers: every schema (the sink reads them all); the writer: flat records of primitives
    assert set(READERS) == set(SCHEMAS) == set(RECORD_TYPES)
    assert set(WRITERS) == {"bar", "features", "news_item", "position", "broker_position", "option_quote",
                            "equity_point", "reconcile_event", "minute_closed"}


@pytest.mark.parametrize("record", _samples(), ids=lambda r: r.SCHEMA)
def test_the_sample_of_every_schema(record: Record) -> None:
    value = fastavro_bytes(record.SCHEMA, record.to_avro())
    assert exactly(READERS[record.SCHEMA](value), fastavro_value(record.SCHEMA, value))
    writer = WRITERS.get(record.SCHEMA)
    if writer is not None:
        assert writer.encode(record) == value


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_readers_return_what_fastavro_returns(name: str, data: st.DataObject) -> None:
    value = fastavro_bytes(name, data.draw(avro_values(json.loads(SCHEMAS[name].text), nan=True)))
    assert exactly(READERS[name](value), fastavro_value(name, value))


@pytest.mark.parametrize("name", sorted(WRITERS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_writer_writes_fastavros_bytes(name: str, data: st.DataObject) -> None:
    fields = data.draw(avro_values(json.loads(SCHEMAS[name].text), nan=True, zones=ZONES))
    record = RECORD_TYPES[name](**fields)
    assert WRITERS[name].encode(record) == fastavro_bytes(name, record.to_avro())


@pytest.mark.parametrize(
    "codec", [HeaderCodec(), RegistryCodec("mock://avro-fast")], ids=["headers", "mock_registry"]
)
@pytest.mark.parametrize("record", [r for r in _samples() if r.SCHEMA in WRITERS], ids=lambda r: r.SCHEMA)
def test_a_built_writer_frames_like_the_codec(codec: HeaderCodec | RegistryCodec, record: Record) -> None:
    writer = RecordWriter.build(codec, "t", [record])
    assert writer is not None
    assert (writer.encode(record), writer.headers) == codec.encode("t", record)


def test_build_refuses_a_schema_it_cannot_write() -> None:
    assert RecordWriter.build(HeaderCodec(), "t", [_samples()[-1]]) is None  # a DeadLetter: bytes, map


def test_the_writer_refuses_a_naive_timestamp() -> None:
    bar = sample_records(TS)["market.bars.1m"]
    with pytest.raises(TypeError):
        WRITERS["bar"].encode(type(bar)(**{**bar.to_avro(), "ts": datetime(2026, 1, 2)}))


def test_the_column_reader_takes_the_flat_schemas() -> None:
    assert {"bar", "features", "news_item", "position"} <= set(COLUMNS)
    assert not {"execution", "recommendation", "dead_letter"} & set(COLUMNS)  # arrays, maps, bytes


@pytest.mark.parametrize("name", sorted(COLUMNS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_column_reader_reads_what_fastavro_reads(name: str, data: st.DataObject) -> None:
    schema = json.loads(SCHEMAS[name].text)
    values = [fastavro_bytes(name, v) for v in data.draw(st.lists(avro_values(schema, nan=True), max_size=6))]
    junk = data.draw(st.lists(st.binary(max_size=12), max_size=3))  # flagged, or read as fastavro reads them
    batch = values + junk
    columns, ok = COLUMNS[name].read(batch)
    assert ok[: len(values)].all()
    for row, value in enumerate(batch):
        if not ok[row]:
            continue
        got = {}
        for field, c in columns.items():
            if c.nulls is not None and c.nulls[row]:
                got[field] = None
            elif c.kind == "string":
                got[field] = c.labels[c.values[row]]
            elif c.kind == "timestamp-micros":
                got[field] = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(c.values[row]))
            else:
                got[field] = c.values[row].item()
        assert exactly(got, fastavro_value(name, value))
