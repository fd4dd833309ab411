"""BarIntake: one route for stream, REST and replay bars to the sink or the DLQ."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
import pytest

from connectors.gaps import GapDetector, chunks
from connectors.intake import BarIntake
from schemas.records import Bar
from tests.fakes import ListSink
from tests.fakes.alpaca_market import bar_msg, rest_bar
from trading.calendar import TradingCalendar

T = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
M = timedelta(minutes=1)


@pytest.fixture(scope="module")
def cal() -> TradingCalendar:
    return TradingCalendar.xnys()


def make(cal: TradingCalendar) -> tuple[BarIntake, ListSink, GapDetector]:
    sink = ListSink()
    det = GapDetector(cal, ["AAPL", "MSFT"], lookback=timedelta(hours=1), settle=timedelta(0))
    return BarIntake(sink, symbols=["AAPL", "MSFT"], detector=det), sink, det


def test_live_then_updated_then_repeat(cal: TradingCalendar) -> None:
    intake, sink, det = make(cal)
    now = T + M
    intake.stream_message(bar_msg("AAPL", T), now=now)
    intake.stream_message(bar_msg("AAPL", T, c=100.9, kind="u"), now=now)
    intake.stream_message(bar_msg("AAPL", T, c=100.9, kind="u"), now=now)
    assert [(b.source, b.revision, b.close) for b in sink.bars] == [("live", 0, 100.5), ("updated", 1, 100.9)]
    assert intake.stats.duplicates == 1
    assert det.missing(T, T + M) == {"MSFT": [T]}


def test_a_rejected_stream_bar_goes_to_the_dlq_with_its_raw_payload(cal: TradingCalendar) -> None:
    intake, sink, _ = make(cal)
    bad = bar_msg("AAPL", T, h=90.0)
    intake.stream_message(bad, now=T + M)
    (letter,) = sink.dlq
    assert sink.bars == []
    assert "high 90.0 < low 99.5" in letter.error
    assert (letter.topic, letter.stage, letter.original_key) == ("alpaca.ws", "bars", b"AAPL")
    assert letter.value is not None and msgpack.unpackb(letter.value) == bad
    assert letter.failed_at == T + M


def test_backfill_publishes_only_asked_unknown_minutes(cal: TradingCalendar) -> None:
    intake, sink, det = make(cal)
    now = T + 4 * M
    intake.stream_message(bar_msg("AAPL", T), now=now)
    (chunk,) = chunks(det.due(now))
    answer = {
        "AAPL": [rest_bar(T, c=100.0), rest_bar(T + M), rest_bar(T + 3 * M, h=1.0)],  # T known; T+3 bad
        "MSFT": [rest_bar(T + 2 * M)],
    }
    report = intake.apply_backfill(chunk, answer, now=now)
    assert [(b.symbol, b.ts, b.source) for b in sink.bars[1:]] == [
        ("AAPL", T + M, "backfill"), ("MSFT", T + 2 * M, "backfill")
    ]
    assert sorted(report.filled) == [("AAPL", T + M), ("MSFT", T + 2 * M)]
    assert ("AAPL", T + 2 * M) in report.no_trade and ("MSFT", T) in report.no_trade
    assert report.rejected == [("AAPL", T + 3 * M)]
    (letter,) = sink.dlq
    assert letter.topic == "alpaca.rest" and "high 1.0" in letter.error
    assert det.due(now) == {}  # filled, rejected and no-trade minutes are all settled


def test_replayed_bars_pass_through(cal: TradingCalendar) -> None:
    sink = ListSink()
    intake = BarIntake(sink, symbols=None)
    b = Bar("ZZZ", T, 1, 1, 1, 1, 0, None, None, "replay", 3)
    intake.replayed(b)
    assert sink.bars == [b] and intake.stats.replay == 1


def test_rechecked_minutes_count_as_corrections_not_duplicates_or_backfill(cal: TradingCalendar) -> None:
    intake, sink, _ = make(cal)
    now = T + 4 * M
    for i in range(2):
        intake.stream_message(bar_msg("AAPL", T + i * M), now=now)
    agrees = intake.rest_valid("AAPL", rest_bar(T), now=now)
    differs = intake.rest_valid("AAPL", rest_bar(T + M, v=1900), now=now)
    assert agrees is not None and differs is not None
    assert intake.rest_correction(agrees, asked=0) is None
    revised = intake.rest_correction(differs, asked=0)
    assert revised is not None and (revised.revision, revised.volume) == (1, 1900)
    assert sink.bars[-1] == revised
    s = intake.stats
    assert (s.live, s.corrections, s.backfill, s.duplicates, s.published()) == (2, 1, 0, 0, 3)
