"""The injected clock (wall time live, bar time in replays and backtests, manual in tests): no decision
reads `datetime.now()`, which is what lets a replay decide as the live run did.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol

#: The bar interval: a bar's ts is its minute's start, and it is complete one MINUTE later.
MINUTE = timedelta(minutes=1)


def floor_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class WaitingClock(Clock, Protocol):
    """A clock that can also be waited on (the connectors' reconnect and poll loops)."""

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real clock."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "WallClock()"


class BarClock:
    """Time as the bars tell it: the end of the latest bar observed (a bar's ts is its minute start).

    A bar is complete one interval after its start, which is also when a live bar arrives, so a
    replayed bar is exactly `interval` old when it is decided on, as it is (about) live.
    """

    __slots__ = ("_now", "_interval")

    def __init__(self, start: datetime | None = None, interval: timedelta = MINUTE) -> None:
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
