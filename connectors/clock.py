"""The injected time edge: the wall clock live, a manual clock in tests, bar time in replay.

Every timing decision of the connectors (backoff, stall, gap checks, "not in the future") reads
`now()` and waits with `sleep()` from a Clock, so a test can stage a three-minute outage in
milliseconds and measure exactly how long the connector chose to wait.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol

MINUTE = timedelta(minutes=1)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "WallClock()"


def floor_minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)
