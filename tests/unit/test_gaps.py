"""Gap candidates from the XNYS calendar: holidays, early closes, DST; REST is the judge."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from connectors.gaps import Chunk, GapDetector, chunks, stalled
from trading.calendar import TradingCalendar

M = timedelta(minutes=1)


@pytest.fixture(scope="module")
def cal() -> TradingCalendar:
    return TradingCalendar.xnys()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_a_regular_session_has_390_minutes(cal: TradingCalendar) -> None:
    minutes = list(cal.minutes(utc(2026, 11, 20), utc(2026, 11, 21)))
    assert len(minutes) == 390
    assert minutes[0] == utc(2026, 11, 20, 14, 30)  # 9:30 EST
    assert minutes[-1] == utc(2026, 11, 20, 20, 59)  # the 15:59 bar; the close is 16:00


def test_summer_sessions_open_an_hour_earlier_in_utc(cal: TradingCalendar) -> None:
    minutes = list(cal.minutes(utc(2026, 7, 14), utc(2026, 7, 15)))
    assert (minutes[0], minutes[-1]) == (utc(2026, 7, 14, 13, 30), utc(2026, 7, 14, 19, 59))
    assert len(minutes) == 390


def test_thanksgiving_has_no_minutes_and_the_day_after_closes_early(cal: TradingCalendar) -> None:
    assert list(cal.minutes(utc(2026, 11, 26), utc(2026, 11, 27))) == []
    friday = list(cal.minutes(utc(2026, 11, 27), utc(2026, 11, 28)))
    assert len(friday) == 210  # 9:30-13:00 ET
    assert friday[-1] == utc(2026, 11, 27, 17, 59)
    assert cal.session(date(2026, 11, 26)) is None


def test_weekends_are_closed(cal: TradingCalendar) -> None:
    assert list(cal.minutes(utc(2026, 11, 21), utc(2026, 11, 23))) == []
    assert not cal.is_open(utc(2026, 11, 21, 15, 0))


def test_minutes_respect_a_partial_range(cal: TradingCalendar) -> None:
    got = list(cal.minutes(utc(2026, 11, 20, 14, 35, 30), utc(2026, 11, 20, 14, 39)))
    assert got == [utc(2026, 11, 20, 14, m) for m in (36, 37, 38)]


def test_is_open_follows_the_session(cal: TradingCalendar) -> None:
    assert not cal.is_open(utc(2026, 11, 20, 14, 29, 59))
    assert cal.is_open(utc(2026, 11, 20, 14, 30))
    assert cal.is_open(utc(2026, 11, 20, 20, 59, 59))
    assert not cal.is_open(utc(2026, 11, 20, 21, 0))
    assert not cal.is_open(utc(2026, 11, 27, 18, 0))  # early close


def test_missing_is_expected_minus_seen(cal: TradingCalendar) -> None:
    det = GapDetector(cal, ["AAPL", "MSFT"], lookback=timedelta(hours=1), settle=timedelta(seconds=30))
    t = utc(2026, 11, 20, 14, 30)
    for i in range(5):
        det.observe("AAPL", t + i * M)
        if i != 2:
            det.observe("MSFT", t + i * M)
    assert det.missing(t, t + 5 * M) == {"MSFT": [t + 2 * M]}


def test_due_waits_for_the_minute_to_end_and_settle(cal: TradingCalendar) -> None:
    det = GapDetector(cal, ["AAPL"], lookback=timedelta(hours=1), settle=timedelta(seconds=30))
    t = utc(2026, 11, 20, 14, 30)
    assert det.due(t + M + timedelta(seconds=29)) == {}
    assert det.due(t + M + timedelta(seconds=30)) == {"AAPL": [t]}


def test_due_looks_back_only_as_far_as_configured(cal: TradingCalendar) -> None:
    det = GapDetector(cal, ["AAPL"], lookback=timedelta(minutes=10), settle=timedelta(0))
    now = utc(2026, 11, 20, 15, 0)
    assert det.due(now)["AAPL"] == [utc(2026, 11, 20, 14, m) for m in range(50, 60)]


def test_nothing_is_due_overnight_or_on_a_holiday(cal: TradingCalendar) -> None:
    det = GapDetector(cal, ["AAPL"], lookback=timedelta(hours=6), settle=timedelta(0))
    assert det.due(utc(2026, 11, 21, 3, 0)) == {}  # Saturday 22:00 ET
    assert det.due(utc(2026, 11, 26, 18, 0)) == {}  # Thanksgiving


def test_rest_is_the_judge_no_trade_minutes_are_not_gaps(cal: TradingCalendar) -> None:
    det = GapDetector(cal, ["AAPL", "MSFT"], lookback=timedelta(hours=1), settle=timedelta(0))
    t = utc(2026, 11, 20, 14, 30)
    now = t + 3 * M
    due = det.due(now)
    assert due == {"AAPL": [t, t + M, t + 2 * M], "MSFT": [t, t + M, t + 2 * M]}
    (chunk,) = chunks(due)
    report = det.resolve(chunk, [("AAPL", t), ("AAPL", t + 2 * M), ("MSFT", t)])
    assert report.asked == 6
    assert sorted(report.filled) == [("AAPL", t), ("AAPL", t + 2 * M), ("MSFT", t)]
    assert sorted(report.no_trade) == [("AAPL", t + M), ("MSFT", t + M), ("MSFT", t + 2 * M)]
    assert det.due(now) == {}  # neither filled nor empty minutes are asked again


def test_chunks_are_one_request_per_session_day(cal: TradingCalendar) -> None:
    a, b = utc(2026, 11, 19, 20, 58), utc(2026, 11, 20, 14, 31)
    got = chunks({"AAPL": [a, b], "MSFT": [b, b + M]})
    assert got == [
        Chunk(a, a, {"AAPL": (a,)}),
        Chunk(b, b + M, {"AAPL": (b,), "MSFT": (b, b + M)}),
    ]
    assert got[1].symbols == ["AAPL", "MSFT"]


def test_old_minutes_are_pruned(cal: TradingCalendar) -> None:
    det = GapDetector(cal, ["AAPL"], lookback=timedelta(minutes=5), settle=timedelta(0))
    t = utc(2026, 11, 20, 14, 30)
    det.observe("AAPL", t)
    det.due(t + 30 * M)
    assert ("AAPL", t) not in det._seen


@pytest.mark.parametrize(
    ("last", "now", "expected"),
    [
        (utc(2026, 11, 20, 15, 0), utc(2026, 11, 20, 15, 2, 59), False),  # under the timeout
        (utc(2026, 11, 20, 15, 0), utc(2026, 11, 20, 15, 3), True),  # open, silent 3 min
        (utc(2026, 11, 20, 14, 0), utc(2026, 11, 20, 14, 31), False),  # silence began pre-open
        (utc(2026, 11, 20, 14, 0), utc(2026, 11, 20, 14, 33), True),  # open for the whole timeout
        (utc(2026, 11, 20, 21, 0, 5), utc(2026, 11, 20, 21, 30), False),  # after the close
        (utc(2026, 11, 21, 1, 0), utc(2026, 11, 21, 15, 0), False),  # Saturday
        (utc(2026, 11, 27, 17, 58), utc(2026, 11, 27, 18, 5), False),  # early close at 18:00 UTC
    ],
)
def test_a_stall_needs_silence_while_the_market_is_open(
    cal: TradingCalendar, last: datetime, now: datetime, expected: bool
) -> None:
    assert stalled(last, now, timedelta(minutes=3), cal) is expected
