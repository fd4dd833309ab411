"""The injected clock: wall time live, bar time in replays and backtests.

Every time-dependent decision (bar age, session window, submit rate, trading day) reads a Clock,
never `datetime.now()`, which is what lets a replay make the decisions the live run made.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

BAR_INTERVAL = timedelta(minutes=1)


class Clock(Protocol):
    def now(self) -> datetime: ...


class WallClock:
    """The live clock."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)


class BarClock:
    """Time as the bars tell it: the end of the latest bar observed (a bar's ts is its minute start).

    A bar is complete one interval after its start, which is also when a live bar arrives, so a
    replayed bar is exactly `interval` old when it is decided on, as it is (about) live.
    """

    __slots__ = ("_now", "_interval")

    def __init__(self, start: datetime | None = None, interval: timedelta = BAR_INTERVAL) -> None:
        self._now = start
        self._interval = interval

    def observe(self, bar_ts: datetime) -> datetime:
        end = bar_ts + self._interval
        if self._now is None or end > self._now:
            self._now = end
        return self._now

    def now(self) -> datetime:
        if self._now is None:
            raise LookupError("BarClock: no bar observed yet")
        return self._now


class ManualClock:
    """A clock a test sets by hand."""

    __slots__ = ("_now",)

    def __init__(self, now: datetime) -> None:
        self._now = now

    def set(self, now: datetime) -> None:
        self._now = now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def now(self) -> datetime:
        return self._now
