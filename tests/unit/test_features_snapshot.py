"""Engine snapshots (streams/features_snapshot.py): a snapshot taken anywhere, through the codec and
back, plus the bars after it gives exactly the state and outputs of a full replay; and a snapshot
that is not whole, intact, of this code, and within [log start, committed offset] is not used."""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from opsinfra.errors import DecodeError
from schemas.codec import HeaderCodec, decode
from schemas.records import Bar, Features, FeatureSnapshot
from streams.features_snapshot import checksum_of, choose, engine_version, take
from streams.features_state import PartitionState

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
TOPIC = "state.features"


def bars(symbols: int = 6, minutes: int = 120, seed: int = 3) -> list[Bar]:
    """Random walks, with updated bars (a higher revision of the same minute) and exact repeats."""
    rng = random.Random(seed)
    price = {f"S{i}": 50 + 100 * rng.random() for i in range(symbols)}
    out = []
    for m in range(minutes):
        for s in price:
            price[s] *= 1 + rng.gauss(0, 0.002)
            c = price[s]
            bar = Bar(s, T0 + timedelta(minutes=m), c, c, c, c, rng.randint(0, 5000))
            out.append(bar)
            if rng.random() < 0.05:
                updated = dataclasses.replace(bar, close=c * 1.001, volume=bar.volume + 3, revision=1)
                out.append(updated)
            if rng.random() < 0.03:
                out.append(out[-1])
    return out


def apply(state: PartitionState, items: list[Bar]) -> list[Features | None]:
    out = []
    for b in items:
        out.append(state.apply((b.symbol, b.ts, b.close, b.volume, b.revision)))
        state.next_offset += 1
    return out


def through_codec(records: list[FeatureSnapshot]) -> list[tuple[int, FeatureSnapshot | DecodeError]]:
    codec = HeaderCodec()
    out: list[tuple[int, FeatureSnapshot | DecodeError]] = []
    for offset, rec in enumerate(records):
        value, headers = codec.encode(TOPIC, rec)
        out.append((offset, decode(codec, FeatureSnapshot, value, headers, topic=TOPIC)))
    return out


def same(a: Features | None, b: Features | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
               for x, y in zip(a.to_avro().values(), b.to_avro().values(), strict=True))


@pytest.mark.parametrize("cut", [1, 37, 300, 555, 770])
@pytest.mark.parametrize("max_chunk_bytes", [256 * 1024, 3000], ids=["one-chunk", "chunked"])
def test_snapshot_plus_tail_equals_the_full_replay(cut: int, max_chunk_bytes: int) -> None:
    history = bars()
    full = PartitionState()
    expected = apply(full, history)

    before = PartitionState()
    apply(before, history[:cut])
    records = take(2, before, worker="w", max_chunk_bytes=max_chunk_bytes)
    assert (len(records) > 1) == (max_chunk_bytes == 3000 and cut > 1)
    choice = choose(through_codec(records), 2, end=cut, log_start=0)
    assert choice.rejected == [] and choice.state is not None
    restored = choice.state
    assert restored.next_offset == cut
    got = apply(restored, history[cut:])
    assert all(same(a, b) for a, b in zip(got, expected[cut:], strict=True))
    assert {s: e.to_state() for s, e in restored.engines.items()} == \
        {s: e.to_state() for s, e in full.engines.items()}


def snapshot_at(n: int, partition: int = 2, **changes: object) -> list[FeatureSnapshot]:
    state = PartitionState()
    apply(state, bars()[:n])
    return [dataclasses.replace(r, **changes) for r in take(partition, state, worker="w")]  # type: ignore[arg-type]


def test_the_newest_usable_snapshot_is_taken() -> None:
    older, newer = snapshot_at(100), snapshot_at(200)
    choice = choose(through_codec(older + newer), 2, end=500, log_start=0)
    assert choice.snapshot is not None and choice.snapshot.next_offset == 200
    # one past the committed offset: the newest one that is not
    choice = choose(through_codec(older + newer), 2, end=150, log_start=0)
    assert choice.snapshot is not None and choice.snapshot.next_offset == 100
    assert any("past the committed offset 150" in r for r in choice.rejected)


@pytest.mark.parametrize(
    ("records", "kwargs", "reason"),
    [
        (lambda: [dataclasses.replace(r, state=r.state[:-1] + b"x") for r in snapshot_at(100)], {},
         "checksum mismatch"),
        (lambda: snapshot_at(100, engine_version="0" * 20), {}, "written by other code"),
        (lambda: snapshot_at(100, format=2), {}, "written by other code"),
        (lambda: snapshot_at(100), {"end": 99}, "past the committed offset 99"),
        (lambda: snapshot_at(100), {"log_start": 101}, "below the log start 101"),
        (lambda: snapshot_at(100), {"held": 100}, "the state held is at 100"),
        (lambda: snapshot_at(100, partition=3), {}, "for partition 3"),
        (lambda: [dataclasses.replace(r, chunks=2, checksum="") for r in snapshot_at(100)], {}, "checksum"),
    ],
    ids=["corrupt", "other-engine", "other-format", "ahead", "below-log-start", "not-newer",
         "other-partition", "chunks"],
)
def test_an_unusable_snapshot_means_a_replay(records: object, kwargs: dict[str, int], reason: str) -> None:
    recs = records()  # type: ignore[operator]
    args = {"end": 500, "log_start": 0, **kwargs}
    choice = choose(through_codec(recs), 2, **args)
    assert choice.state is None and choice.snapshot is None
    assert any(reason in r for r in choice.rejected), choice.rejected


def test_a_snapshot_missing_a_chunk_is_not_used() -> None:
    state = PartitionState()
    apply(state, bars()[:100])
    chunks = take(2, state, worker="w", max_chunk_bytes=3000)
    assert len(chunks) > 2
    choice = choose(through_codec(chunks[:1] + chunks[2:]), 2, end=500, log_start=0)
    assert choice.state is None and any(f"of {len(chunks)} chunks" in r for r in choice.rejected)


def test_an_undecodable_record_is_skipped_for_an_older_snapshot() -> None:
    older = through_codec(snapshot_at(100))
    bad = (len(older), DecodeError("garbage", topic=TOPIC, partition=2, offset=len(older)))
    choice = choose([*older, bad], 2, end=500, log_start=0)
    assert choice.snapshot is not None and choice.snapshot.next_offset == 100
    assert any("undecodable" in r for r in choice.rejected)


def test_the_checksum_covers_the_offset_and_the_engine_version() -> None:
    (rec,) = snapshot_at(100)
    assert checksum_of(rec) == rec.checksum and rec.engine_version == engine_version()
    assert checksum_of(dataclasses.replace(rec, next_offset=101)) != rec.checksum
    assert checksum_of(dataclasses.replace(rec, engine_version="x")) != rec.checksum
