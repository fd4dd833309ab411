"""The column decoder against the record-by-record decoder it stands for: fed in batches of any size,
decoded a chunk at a time, in both framings (headers; the Confluent wire format, mock registry),
it gives the codec's records, the codec's errors, and reads the usual values without the codec."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas.column_decoder as column_decoder
from schemas.avro_columns import _Bytes, _varints
from schemas.avro_fast import _read_long, _write_long
from schemas.codec import HeaderCodec, RegistryCodec, decode
from schemas.column_decoder import ColumnDecoder
from schemas.records import Bar, Features, Record
from tests.avro_values import avro_values

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CODECS: dict[str, HeaderCodec | RegistryCodec] = {
    "headers": HeaderCodec(), "mock_registry": RegistryCodec("mock://avro-columns")
}
SPOILERS = ["cut", "extra", "no frame", "tombstone", "garbage"]


def spoil(codec: Any, how: str, value: bytes, headers: list[Any]) -> tuple[bytes | None, list[Any]]:
    return {
        "cut": (value[:-1], headers),
        "extra": (value + b"\0", headers),
        "no frame": (value[5:] if isinstance(codec, RegistryCodec) else value, []),
        "tombstone": (None, headers),
        "garbage": (b"\xff" * 7, headers),
    }[how]


def row(columns: dict[str, Any], i: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, c in columns.items():
        if c.nulls is not None and c.nulls[i]:
            out[name] = None
        elif c.kind == "string":
            out[name] = c.labels[c.values[i]]
        elif c.kind == "timestamp-micros":
            out[name] = EPOCH + timedelta(microseconds=int(c.values[i]))
        else:
            out[name] = c.values[i].item()
    return out


@pytest.mark.parametrize("framing", sorted(CODECS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_batches_decode_to_the_codecs_records_mock_registry(framing: str, data: st.DataObject) -> None:
    codec = CODECS[framing]
    record_type: type[Record] = data.draw(st.sampled_from([Bar, Features]))
    schema = json.loads(codec.schemas.get(record_type.SCHEMA).text)
    # nulls in every optional field, unicode text, the whole range of longs and doubles
    values = data.draw(st.lists(avro_values(schema, nan=True), min_size=1, max_size=30))
    messages: list[tuple[bytes | None, list[Any]]] = [codec.encode("t", record_type(**v)) for v in values]
    for i in data.draw(st.lists(st.integers(0, len(messages) - 1), max_size=3, unique=True)):
        value, headers = messages[i]
        assert value is not None
        messages[i] = spoil(codec, data.draw(st.sampled_from(SPOILERS)), value, headers)
    chunk = data.draw(st.sampled_from([1, 2, 3, 7, 64]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(messages)), max_size=4)))
    decoder = ColumnDecoder(codec, record_type, "t", chunk=chunk)
    for lo, hi in zip([0, *cuts], [*cuts, len(messages)], strict=True):
        part = messages[lo:hi]
        decoder.add([m[0] for m in part], [m[1] for m in part], list(range(lo, hi)), [7] * len(part))
    got = decoder.finish()

    expected, errors = [], []
    for i, (value, headers) in enumerate(messages):
        try:
            expected.append((i, decode(codec, record_type, value, headers, topic="t").to_avro()))
        except Exception as exc:  # noqa: BLE001 - which ones fail, and how, is what is compared
            errors.append((i, str(exc)))
    assert got.index.tolist() == [i for i, _ in expected]
    named = [(i, e.replace("[None]@None", f"[{i}]@7")) for i, e in errors]  # the partition and offset given
    assert [(i, str(e)) for i, e in got.errors] == named
    for r, (_, want) in enumerate(expected):
        assert repr(row(got.columns, r)) == repr(want)


@pytest.mark.parametrize("framing", sorted(CODECS))
def test_the_usual_values_are_read_without_the_codec_mock_registry(
    framing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = CODECS[framing]
    t = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
    bars = [Bar(s, t + timedelta(minutes=i), 1.5, 2.0, 1.0, 1.75, 10**i, None if i % 2 else i, None,
                "replay", 0) for i in range(12) for s in ("AAPL", "Ünï", "MSFT")]  # fmt: skip
    messages = [codec.encode("t", b) for b in bars]
    messages.insert(5, (b"junk", messages[0][1]))
    through_codec: list[Any] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        through_codec.append(args[2])
        return decode(*args, **kwargs)

    monkeypatch.setattr(column_decoder, "decode", counted)
    decoder = ColumnDecoder(codec, Bar, "t", chunk=8)
    decoder.add([m[0] for m in messages], [m[1] for m in messages])
    got = decoder.finish()
    assert through_codec == [b"junk"]
    assert [row(got.columns, i) for i in range(len(bars))] == [b.to_avro() for b in bars]


def test_nothing_added_is_no_rows() -> None:
    got = ColumnDecoder(HeaderCodec(), Features, "t").finish()
    assert len(got.index) == 0 and got.errors == [] and set(got.columns) == set(Features.field_names())


LONGS = [0, 1, -1, 63, -64, 64, -65, 2**20, 2**27, -(2**27) - 1, 2**34, 2**41, 2**48, 2**55 - 1, -(2**55),
         2**55, 2**62, -(2**63), 2**63 - 1, 1_795_185_000_000_000]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(LONGS), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=20))
def test_varints_of_every_length_read_as_the_scalar_reader_reads_them(numbers: list[int]) -> None:
    raw = b"".join(_write_long(n) for n in numbers)
    at, pos = [], 0
    for _ in numbers:
        at.append(pos)
        pos = _read_long(raw, pos)[1]
    values, after, bad = _varints(_Bytes(raw + bytes(16)), np.array(at, np.int64))
    assert values.tolist() == numbers
    assert after.tolist() == [*at[1:], len(raw)]
    assert bad is None or not bad.any()


def test_varints_beyond_64_bits_are_flagged() -> None:
    eleven = b"\xff" * 10 + b"\x01"  # no end within 10 bytes
    big_tenth = b"\xff" * 9 + b"\x02"  # a 10th byte carrying more than the 64th bit
    ok = _write_long(-(2**63))
    raw = eleven + big_tenth + ok + bytes(16)
    values, after, bad = _varints(_Bytes(raw), np.array([0, 11, 21], np.int64))
    assert bad.tolist() == [True, True, False]
    assert values[2] == -(2**63) and after[2] == 21 + len(ok)
