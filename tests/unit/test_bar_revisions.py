"""The revision book: updated bars get the next revision; repeats and known minutes are dropped;
REST rechecking a published minute revises it only where its OHLCV differs."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from connectors.backfill import apply_recheck, asked_revisions
from connectors.gaps import chunks
from connectors.intake import BarIntake
from connectors.revisions import RevisionBook, fingerprint, same_ohlcv
from schemas.records import Bar
from tests.fakes import ListSink
from tests.fakes.alpaca_market import bar_msg, rest_bar

T = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
M = timedelta(minutes=1)


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


def test_same_ohlcv_ignores_trade_count_and_vwap_but_not_volume() -> None:
    published = fingerprint(bar(trade_count=12, vwap=100.25))
    assert same_ohlcv(published, fingerprint(bar(trade_count=13, vwap=100.3)))
    assert not same_ohlcv(published, fingerprint(bar(volume=11, trade_count=12, vwap=100.25)))
    assert not same_ohlcv(published, fingerprint(bar(100.6, trade_count=12, vwap=100.25)))


def test_rest_revises_a_published_minute_only_where_its_ohlcv_differs() -> None:
    book = RevisionBook()
    book.admit(bar(), "live")
    book.admit(bar(ts=T + M), "live")
    assert book.judge(bar(source="backfill", trade_count=40), asked=0) is None  # agrees on OHLCV
    revised = book.judge(bar(ts=T + M, volume=19, source="backfill"), asked=0)
    assert revised is not None and (revised.revision, revised.volume, revised.source) == (1, 19, "backfill")
    assert book.revision("AAPL", T + M) == 1
    assert book.judge(bar(ts=T + M, volume=19, source="backfill"), asked=1) is None  # asked again
    assert book.admit(bar(ts=T + M, volume=19, source="updated"), "updated") is None  # known now


def test_rest_neither_fills_an_unknown_minute_nor_overrides_a_newer_update() -> None:
    book = RevisionBook()
    assert book.judge(bar(volume=19), asked=0) is None  # a gap: the gap check's business
    book.admit(bar(), "live")
    book.admit(bar(volume=15, source="updated"), "updated")  # arrived while REST was asked
    assert book.judge(bar(volume=14, source="backfill"), asked=0) is None
    assert book.revision("AAPL", T) == 1


def test_recent_is_the_minutes_before_the_newest_one_known_for_any_symbol() -> None:
    book = RevisionBook()
    for i in range(10):
        book.admit(bar(ts=T + i * M), "live")
    book.admit(bar(ts=T + 3 * M, symbol="MSFT"), "live")  # quiet since: outside the window
    book.admit(bar(ts=T + 7 * M, symbol="MSFT"), "live")
    book.admit(bar(ts=T + 9 * M, symbol="IBM"), "live")  # not asked for
    assert book.recent(["AAPL", "MSFT", "TSLA"], 3) == {
        "AAPL": (T + 7 * M, T + 8 * M, T + 9 * M), "MSFT": (T + 7 * M,),
    }
    assert book.recent(["AAPL"], 0) == {} and RevisionBook().recent(["AAPL"], 5) == {}


def test_apply_recheck_publishes_the_differing_minutes_and_reports_the_rest() -> None:
    sink = ListSink()
    intake = BarIntake(sink, symbols=["AAPL", "MSFT"])
    for s in ("AAPL", "MSFT"):
        for i in range(3):
            intake.stream_message(bar_msg(s, T + i * M, c=100.5), now=T + 4 * M)
    sink.bars.clear()
    window = {"AAPL": (T + M, T + 2 * M), "MSFT": (T + M, T + 2 * M)}
    (chunk,) = chunks(window)
    asked = asked_revisions(intake.book, chunk)
    answer = {
        "AAPL": [rest_bar(T, v=5000), rest_bar(T + M), rest_bar(T + 2 * M, v=1900)],  # T: not asked
        "MSFT": [rest_bar(T + M, h=99.0)],  # high < low: the DLQ; MSFT at T+2M: REST has none
    }
    report = apply_recheck(intake, answer, asked=asked, now=T + 4 * M)
    assert [(b.symbol, b.ts, b.volume, b.revision, b.source) for b in sink.bars] == [
        ("AAPL", T + 2 * M, 1900, 1, "backfill")
    ]
    assert report.asked == 4 and report.revised == [("AAPL", T + 2 * M)]
    assert report.rejected == [("MSFT", T + M)] and report.absent == [("MSFT", T + 2 * M)]
    assert len(sink.dlq) == 1 and "high" in sink.dlq[0].error
    assert intake.book.revision("AAPL", T) == 0  # REST's other minutes were not judged
