"""Watchlist builder snapshots (streams/watchlist_snapshot.py): a snapshot taken at any cut, through the
codec and back, plus the features after its offsets gives exactly the entries and builder state of a
full rebuild; and a snapshot that is not intact, of this code, for every partition, and within
[log start, committed offset] in each is not used (with the reason)."""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections import Counter
from datetime import UTC, datetime

import pytest

from opsinfra.errors import DecodeError
from schemas.codec import HeaderCodec, decode
from schemas.records import Features, WatchlistSnapshot
from streams.watchlist_snapshot import FORMAT, Choice, by_ts, checksum_of, choose, code_version, take
from tests.integration.test_trading_helpers import session_features
from trading.watchlist import WatchlistBuilder, WatchlistConfig

TOPIC = "state.watchlist"
SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA", "AMZN", "META", "GOOG")
PARTS = 6
CONFIG = WatchlistConfig(universe=SYMBOLS, top_n=3)


def sentiment(symbol: str, at: datetime) -> float | None:
    return (SYMBOLS.index(symbol) - 3) / 10 if at.minute % 10 else None


def history() -> list[tuple[int, Features]]:
    """(partition, features) in time order, with revised bars (a higher revision of a minute)."""
    out = []
    for i, f in enumerate(session_features(SYMBOLS, 95, seed=5)):
        p = SYMBOLS.index(f.symbol) % PARTS
        out.append((p, f))
        if i % 17 == 3:
            out.append((p, dataclasses.replace(f, close=f.close * 1.002, volume_current=f.volume_current + 9,
                                               revision=1)))
    return out


def through_codec(records: list[WatchlistSnapshot]) -> list[tuple[int, WatchlistSnapshot | DecodeError]]:
    codec = HeaderCodec()
    out: list[tuple[int, WatchlistSnapshot | DecodeError]] = []
    for offset, rec in enumerate(records):
        value, headers = codec.encode(TOPIC, rec)
        out.append((offset, decode(codec, WatchlistSnapshot, value, headers, topic=TOPIC)))
    return out


def with_offsets(items: list[tuple[int, Features]]) -> list[tuple[int, int, Features]]:
    seen: Counter[int] = Counter()
    out = []
    for p, f in items:
        out.append((p, seen[p], f))
        seen[p] += 1
    return out


def ends_of(items: list[tuple[int, int, Features]]) -> dict[int, int]:
    ends = dict.fromkeys(range(PARTS), 0)
    for p, o, _ in items:
        ends[p] = o + 1
    return ends


@pytest.mark.parametrize("cut", [0, 1, 40, 211, 350, 500, -1])
def test_snapshot_plus_tail_equals_the_full_rebuild(cut: int) -> None:
    items = with_offsets(history())
    cut = len(items) if cut == -1 else cut
    full = WatchlistBuilder(CONFIG, sentiment)
    expected = [e for f in by_ts(f for _, _, f in items) for e in full.on_features(f)]
    assert len({e.ts for e in expected}) >= 15

    live = WatchlistBuilder(CONFIG, sentiment)
    before = [e for _, _, f in items[:cut] for e in live.on_features(f)]
    offsets = ends_of(items[:cut])
    published = before[-1].ts if before else None
    rec = take(live, offsets, PARTS, published, worker="w")
    choice = choose(through_codec([rec]), partitions=PARTS, committed=ends_of(items), log_start={},
                    config=CONFIG, sentiment=sentiment)
    assert choice.rejected == [] and choice.builder is not None and choice.snapshot is not None
    assert choice.offsets == offsets and choice.snapshot.published == published
    restored = choice.builder
    assert restored.to_state() == live.to_state()
    tail = [f for p, o, f in items if o >= offsets[p]]
    after = [e for f in by_ts(tail) for e in restored.on_features(f)]
    assert before + after == expected
    assert restored.to_state() == full.to_state()
    # the redelivered records after the committed offset change nothing
    assert [e for _, _, f in items[cut:] for e in restored.on_features(f)] == []
    assert {k: v for k, v in restored.to_state().items() if k != "duplicates"} == \
        {k: v for k, v in full.to_state().items() if k != "duplicates"}


def good(offsets: dict[int, int] | None = None, **changes: object) -> WatchlistSnapshot:
    builder = WatchlistBuilder(CONFIG, sentiment)
    for _, f in history()[:100]:
        builder.on_features(f)
    rec = take(builder, offsets or dict.fromkeys(range(PARTS), 10), PARTS, None, worker="w",
               now=datetime(2026, 1, 5, tzinfo=UTC))
    return dataclasses.replace(rec, **changes) if changes else rec  # type: ignore[arg-type]


def resealed(rec: WatchlistSnapshot, **changes: object) -> WatchlistSnapshot:
    rec = dataclasses.replace(rec, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(rec, checksum=checksum_of(rec))


def pick(records: list[WatchlistSnapshot | DecodeError], *, committed: int = 10, log_start: int = 0
         ) -> Choice:
    return choose(list(enumerate(records)), partitions=PARTS, config=CONFIG,
                  committed=dict.fromkeys(range(PARTS), committed),
                  log_start=dict.fromkeys(range(PARTS), log_start))


@pytest.mark.parametrize(("record", "reason", "kw"), [
    (good(state=zlib.compress(b"{}")), "checksum mismatch", {}),
    (resealed(good(), code_version="0" * 20), "written by other code", {}),
    (resealed(good(), format=FORMAT + 1), "written by other code", {}),
    (resealed(good(), offsets=[10] * (PARTS - 1)), f"covers {PARTS - 1} partitions, not {PARTS}", {}),
    (good(), "partition 0: offset 10 past the committed offset 9", {"committed": 9}),
    (good(), "partition 0: offset 10 below the log start 11", {"log_start": 11}),
    (resealed(good(), state=b"not zlib"), "error: Error -3", {}),
    (resealed(good(), state=zlib.compress(json.dumps({"version": 99}).encode())),
     "unknown WatchlistBuilder state version 99", {}),
    (resealed(good(), state=zlib.compress(b"[1]")), "state is a list", {}),
    (DecodeError("record: bad", topic=TOPIC), "undecodable", {}),
])
def test_an_unusable_snapshot_is_rejected_with_its_reason(record: WatchlistSnapshot | DecodeError,
                                                          reason: str, kw: dict[str, int]) -> None:
    choice = pick([record], **kw)
    assert choice.builder is None and choice.snapshot is None
    assert len(choice.rejected) == 1 and reason in choice.rejected[0], choice.rejected


def test_the_newest_usable_snapshot_is_taken_past_unusable_newer_ones() -> None:
    older = good(dict.fromkeys(range(PARTS), 5))
    newer = good(dict.fromkeys(range(PARTS), 10))
    newest = good(dict.fromkeys(range(PARTS), 12))  # past the committed offsets
    broken = dataclasses.replace(good(), checksum="x")
    choice = pick([older, newer, newest, broken])
    assert choice.snapshot == newer and choice.builder is not None
    assert [r.split(":")[0] for r in choice.rejected] == ["offset 3", "offset 2"]
    assert pick([older, newer], committed=7).snapshot == older
    assert pick([older, newer], log_start=6).snapshot == newer


def test_the_code_version_covers_the_builder() -> None:
    assert len(code_version()) == 20 and good().code_version == code_version()
    assert take(WatchlistBuilder(CONFIG), {}, PARTS, None, worker="w").offsets == [0] * PARTS


def test_entries_are_in_time_order_for_the_replay() -> None:
    items = history()
    shuffled = [f for p in range(PARTS) for q, f in items if q == p]  # partition after partition
    assert [f.ts for f in by_ts(shuffled)] == sorted(f.ts for _, f in items)
