"""The revision book: updated bars get the next revision; repeats and known minutes are dropped."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from connectors.revisions import RevisionBook
from schemas.records import Bar

T = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def bar(close: float = 100.5, ts: datetime = T, symbol: str = "AAPL", **kw: object) -> Bar:
    return dataclasses.replace(Bar(symbol, ts, 100.0, 101.0, 99.0, close, 10), **kw)  # type: ignore[arg-type]


def test_first_bar_is_revision_zero_and_each_update_the_next() -> None:
    book = RevisionBook()
    assert book.admit(bar(), "live") == bar()
    first = book.admit(bar(100.6, source="updated"), "updated")
    second = book.admit(bar(100.7, source="updated"), "updated")
    assert first is not None and first.revision == 1
    assert second is not None and second.revision == 2
    assert book.revision("AAPL", T) == 2


def test_exact_repeats_are_dropped_whatever_their_kind() -> None:
    book = RevisionBook()
    book.admit(bar(), "live")
    assert book.admit(bar(), "live") is None
    assert book.admit(bar(source="updated"), "updated") is None


def test_backfill_never_overrides_a_known_minute() -> None:
    book = RevisionBook()
    book.admit(bar(), "live")
    assert book.admit(bar(99.5, source="backfill"), "backfill") is None
    assert book.admit(bar(ts=T + timedelta(minutes=1), source="backfill"), "backfill") is not None


def test_a_live_bar_after_a_backfill_with_other_values_is_a_correction() -> None:
    book = RevisionBook()
    book.admit(bar(source="backfill"), "backfill")
    assert book.admit(bar(), "live") is None  # the same values: a duplicate
    corrected = book.admit(bar(100.9), "live")
    assert corrected is not None and corrected.revision == 1


def test_an_update_for_an_unknown_minute_is_revision_one() -> None:
    got = RevisionBook().admit(bar(source="updated"), "updated")
    assert got is not None and got.revision == 1


def test_seeding_from_the_topic_continues_the_revisions() -> None:
    book = RevisionBook()
    book.seed([bar(revision=0), bar(100.7, revision=2), bar(100.6, revision=1)])
    assert book.revision("AAPL", T) == 2
    assert book.admit(bar(100.7, source="updated"), "updated") is None  # what the topic has
    nxt = book.admit(bar(100.8, source="updated"), "updated")
    assert nxt is not None and nxt.revision == 3


def test_symbols_are_independent() -> None:
    book = RevisionBook()
    book.admit(bar(), "live")
    got = book.admit(bar(symbol="MSFT"), "live")
    assert got is not None and got.revision == 0


def test_memory_is_bounded_to_the_newest_minutes() -> None:
    book = RevisionBook(memory=10)
    for i in range(25):
        book.admit(bar(ts=T + timedelta(minutes=i)), "live")
    assert book.revision("AAPL", T + timedelta(minutes=24)) == 0
    assert book.revision("AAPL", T) is None
    assert len(book._minutes["AAPL"]) <= 20
