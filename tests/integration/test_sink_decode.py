"""The sink's compiled Avro readers agree with fastavro, or refuse: on random records of every
contract schema, and on corrupted bytes (no services needed)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.avro_fast import compile_reader
from schemas.codec import HeaderCodec
from schemas.topics import CONTRACT
from tests.avro_values import avro_values as values
from tests.samples import sample_records

CODEC = HeaderCodec()
SCHEMAS = {spec.name: CODEC.schemas.get(spec.record.SCHEMA) for spec in CONTRACT}
READERS = {name: compile_reader(json.loads(s.text)) for name, s in SCHEMAS.items()}
TS = datetime(2026, 11, 20, 15, tzinfo=UTC)


def fast_avro(name: str, value: bytes) -> Any:
    buf = io.BytesIO(value)
    out = fastavro.schemaless_reader(buf, SCHEMAS[name].parsed, None)
    if buf.tell() != len(value):
        raise ValueError("trailing bytes")
    return out


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_sample_record_of_every_topic_reads_the_same(name: str) -> None:
    value, _ = CODEC.encode("t", sample_records(TS)[name])
    assert READERS[name](value) == fast_avro(name, value)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_and_corrupted_records_read_the_same_or_are_refused(name: str, data: st.DataObject) -> None:
    raw = json.loads(SCHEMAS[name].text)
    record = data.draw(values(raw))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMAS[name].parsed, record)
    value = buf.getvalue()
    assert READERS[name](value) == fast_avro(name, value)
    # a corrupted copy: the compiled reader may refuse it (the codec then decides), but whatever
    # it accepts, fastavro must read identically
    pos = data.draw(st.integers(0, max(len(value) - 1, 0)))
    cut = data.draw(st.booleans())
    bad = value[:pos] if cut else value[:pos] + bytes([data.draw(st.integers(0, 255))]) + value[pos + 1:]
    try:
        got = READERS[name](bad)
    except Exception:
        return
    # corrupted bytes can decode to NaN doubles, which never equal themselves: compare by repr
    assert repr(got) == repr(fast_avro(name, bad))
