"""Codec: every contract record round-trips in both framings; evolution; bad input is typed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import ClassVar

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from opsinfra.errors import DecodeError, SchemaError
from schemas.codec import HeaderCodec, RegistryCodec, SchemaSet, decode
from schemas.records import Bar, DeadLetter, Features, Record
from schemas.topics import ALL_TOPICS, CONTRACT
from tests.samples import sample_records

TS = datetime(2026, 11, 20, 14, 31, tzinfo=UTC)


def _codecs() -> list[HeaderCodec | RegistryCodec]:
    return [HeaderCodec(), RegistryCodec("mock://codec-tests")]


def _all_samples() -> list[tuple[str, Record]]:
    samples = list(sample_records(TS).items())
    letter = DeadLetter(
        "market.bars.1m", 3, 42, b"AAPL", b"\x01garbage", {"h": b"v"}, "high < low", "InvalidBar", "bars", TS
    )
    return [*samples, ("market.bars.1m.dlq", letter)]


@pytest.mark.parametrize("codec", _codecs(), ids=["headers", "mock-registry"])
@pytest.mark.parametrize("topic,record", _all_samples(), ids=[t for t, _ in _all_samples()])
def test_every_record_round_trips(codec: HeaderCodec | RegistryCodec, topic: str, record: Record) -> None:
    value, headers = codec.encode(topic, record)
    back = decode(codec, type(record), value, headers, topic=topic, partition=0, offset=7)
    assert back == record
    assert type(back) is type(record)


def test_every_contract_topic_has_a_sample() -> None:
    assert {t for t, _ in _all_samples()} >= {t.name for t in CONTRACT}


def test_header_framing_names_schema_and_version() -> None:
    _, headers = HeaderCodec().encode("t", sample_records(TS)["market.bars.1m"])
    assert dict(headers) == {"ops.schema": b"ops.pipeline.Bar", "ops.schema.version": b"1"}


def test_mock_registry_framing_is_confluent_wire_format() -> None:
    value, headers = RegistryCodec("mock://wire").encode("bars", sample_records(TS)["market.bars.1m"])
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") >= 1
    assert headers == []


@pytest.mark.parametrize(
    "value,headers,reason",
    [
        (None, [("ops.schema", b"ops.pipeline.Bar"), ("ops.schema.version", b"1")], "tombstone"),
        (b"\x08AAPL", [("ops.schema", b"ops.pipeline.Bar"), ("ops.schema.version", b"1")], "undecodable"),
        (b"\x08AAPL", [], "missing"),
        (b"\x00\x00\x00\x00\x01", [], "Confluent-framed"),
        (b"\x08AAPL", [("ops.schema", b"ops.pipeline.Features"), ("ops.schema.version", b"1")], "expected"),
        (b"\x08AAPL", [("ops.schema", b"ops.pipeline.Bar"), ("ops.schema.version", b"x")], "version"),
    ],
)
def test_bad_messages_raise_one_typed_error_with_origin(
    value: bytes | None, headers: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(HeaderCodec(), Bar, value, headers, topic="market.bars.1m", partition=2, offset=99)
    err = info.value
    assert (err.topic, err.partition, err.offset) == ("market.bars.1m", 2, 99)
    assert reason in str(err)


def test_trailing_bytes_of_a_known_version_are_an_error() -> None:
    codec = HeaderCodec()
    value, headers = codec.encode("t", sample_records(TS)["market.bars.1m"])
    with pytest.raises(DecodeError, match="trailing"):
        decode(codec, Bar, value + b"\x00", headers, topic="t", partition=0, offset=1)


def test_registry_codec_rejects_unframed_bytes_mock_registry() -> None:
    with pytest.raises(DecodeError, match="magic"):
        decode(RegistryCodec("mock://x"), Bar, b"\x08AAPL", [], topic="t", partition=1, offset=5)


def test_encoding_a_wrong_value_is_a_schema_error() -> None:
    bad = Bar("AAPL", TS, 1.0, 2.0, 0.5, 1.5, "lots")  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        HeaderCodec().encode("t", bad)


# --- evolution: a record gains an optional field with a default ---------------------------

V1 = {
    "type": "record",
    "name": "Thing",
    "namespace": "ops.test",
    "ops.version": 1,
    "fields": [{"name": "a", "type": "string"}, {"name": "b", "type": "long"}],
}
V2 = {
    **V1,
    "ops.version": 2,
    "fields": [*V1["fields"], {"name": "c", "type": ["null", "double"], "default": None}],
}


@dataclass(frozen=True, slots=True)
class ThingV1(Record):
    SCHEMA: ClassVar[str] = "thing"
    a: str
    b: int


@dataclass(frozen=True, slots=True)
class ThingV2(Record):
    SCHEMA: ClassVar[str] = "thing"
    a: str
    b: int
    c: float | None = None


def _schema_dir(tmp: Path, current: dict, history: list[dict]) -> SchemaSet:
    (tmp / "history").mkdir(parents=True)
    (tmp / "thing.avsc").write_text(json.dumps(current))
    for h in history:
        (tmp / "history" / f"thing.v{h['ops.version']}.avsc").write_text(json.dumps(h))
    return SchemaSet.load(tmp)


def test_header_framing_old_writer_new_reader(tmp_path: Path) -> None:
    old = HeaderCodec(_schema_dir(tmp_path / "old", V1, []))
    new = HeaderCodec(_schema_dir(tmp_path / "new", V2, [V1]))
    value, headers = old.encode("t", ThingV1("x", 5))
    assert decode(new, ThingV2, value, headers, topic="t") == ThingV2("x", 5, None)


def test_header_framing_new_writer_old_reader(tmp_path: Path) -> None:
    old = HeaderCodec(_schema_dir(tmp_path / "old", V1, []))
    new = HeaderCodec(_schema_dir(tmp_path / "new", V2, [V1]))
    value, headers = new.encode("t", ThingV2("x", 5, 2.5))
    assert decode(old, ThingV1, value, headers, topic="t") == ThingV1("x", 5)


def test_registry_framing_evolves_both_ways_mock_registry(tmp_path: Path) -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://evolution"})
    old = RegistryCodec("mock://evolution", _schema_dir(tmp_path / "old", V1, []), client=client)
    new = RegistryCodec("mock://evolution", _schema_dir(tmp_path / "new", V2, [V1]), client=client)
    v1_bytes, _ = old.encode("things", ThingV1("x", 5))
    v2_bytes, _ = new.encode("things", ThingV2("y", 6, 1.5))
    assert decode(new, ThingV2, v1_bytes, [], topic="things") == ThingV2("x", 5, None)
    assert decode(old, ThingV1, v2_bytes, [], topic="things") == ThingV1("y", 6)
    assert v1_bytes[1:5] != v2_bytes[1:5]  # two registered versions


def history_problems(schemas: SchemaSet) -> tuple[list[str], int]:
    """What breaks the evolution rules, and how many (current, released) pairs were compared:
    a released version equal to the current one must be identical to it (a change needs a new
    ops.version); an older one must be a prefix of the current fields, the rest defaulted."""
    problems, compared = [], 0
    released = {(s.name, s.version): s for s in schemas.history}
    for name, current in schemas.current.items():
        if (name, current.version) not in released:
            problems.append(f"{name}.v{current.version}.avsc missing from schemas/history/")
        cur = json.loads(current.text)
        for old in (s for s in schemas.history if s.name == name):
            compared += 1
            was = json.loads(old.text)
            if old.version > current.version:
                problems.append(f"{name} v{old.version} is newer than the current v{current.version}")
            elif old.version == current.version:
                if was != cur:
                    problems.append(f"{name} changed but is still v{current.version}: give it a new version")
            elif cur["fields"][: len(was["fields"])] != was["fields"]:
                problems.append(f"{name} v{old.version}'s fields are not a prefix of v{current.version}'s")
            else:
                problems += [
                    f"{name}.{added['name']} added after v{old.version} without a default"
                    for added in cur["fields"][len(was["fields"]) :]
                    if "default" not in added
                ]
    return problems, compared


def test_contract_history_only_appends_fields_with_defaults() -> None:
    """The rule that keeps header-framed old readers working, checked on the real schemas: every
    current schema has its released copy at its version, equal to it, and older copies only lack
    defaulted fields at the end."""
    schemas = SchemaSet.load()
    problems, compared = history_problems(schemas)
    assert problems == []
    assert len(schemas.current) >= len(CONTRACT) and compared >= len(schemas.current), (
        f"only {compared} comparisons for {len(schemas.current)} schemas: is schemas/history/ there?"
    )


@pytest.mark.parametrize(
    ("current", "released", "problem"),
    [
        ({**V1, "fields": V1["fields"][::-1]}, [V1], "changed but is still v1"),  # a field moved
        ({**V2, "fields": V2["fields"][::-1]}, [V1, {**V2, "fields": V2["fields"][::-1]}], "not a prefix"),
        ({**V2, "fields": [*V1["fields"], {"name": "c", "type": "double"}]}, [V1], "without a default"),
        (V2, [V1], "thing.v2.avsc missing"),
        (V1, [V1, V2], "newer than the current"),
    ],
    ids=["moved-same-version", "moved-new-version", "no-default", "unreleased", "newer-released"],
)
def test_the_history_rules_fail_on_a_broken_schema(
    tmp_path: Path, current: dict, released: list[dict], problem: str
) -> None:
    problems, compared = history_problems(_schema_dir(tmp_path, current, released))
    assert compared == len(released)
    assert any(problem in p for p in problems), problems


def test_history_files_are_named_by_their_version() -> None:
    history = resources.files("schemas") / "history"
    names = [entry.name for entry in history.iterdir() if entry.name.endswith(".avsc")]
    assert len(names) >= len(CONTRACT)
    for name in names:
        raw = json.loads((history / name).read_text("utf-8"))
        stem = name.split(".", 1)[0]
        assert name == f"{stem}.v{raw['ops.version']}.avsc", name


def test_every_schema_matches_its_record_type() -> None:
    schemas = SchemaSet.load()
    for spec in ALL_TOPICS:
        fields = [f["name"] for f in json.loads(schemas.get(spec.record.SCHEMA).text)["fields"]]
        assert tuple(fields) == spec.record.field_names(), spec.name


def test_features_fields_are_nullable_until_warm() -> None:
    feats = Features(
        "AAPL", TS, 1.0, None, None, 0, None, None, None, None, None, None, None, None, None, None, 1
    )
    codec = HeaderCodec()
    value, headers = codec.encode("f", feats)
    assert decode(codec, Features, value, headers, topic="f") == feats
