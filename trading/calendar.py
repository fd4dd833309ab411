"""The one XNYS calendar (holidays, early closes, from exchange_calendars), read once into plain UTC
datetimes so session lookups on the hot path need neither pandas nor a tz database.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo

from trading.clock import MINUTE, floor_minute

NEW_YORK = ZoneInfo("America/New_York")


class Session(NamedTuple):
    open: datetime
    close: datetime  # exclusive: the last bar starts one minute before


class SessionCalendar(Protocol):
    def session(self, day: date) -> Session | None:
        """(open, close) of the trading day, aware UTC; None if the exchange is closed."""
        ...


def trading_day(now: datetime) -> date:
    """The New York date of `now`: the day whose counters (trades, losses) `now` belongs to."""
    return now.astimezone(NEW_YORK).date()


def _ceil_minute(ts: datetime) -> datetime:
    floored = floor_minute(ts)
    return floored if floored == ts else floored + MINUTE


def _load_exchange(name: str) -> tuple[dict[date, Session], tuple[date, date]]:
    import exchange_calendars

    with warnings.catch_warnings():
        # exchange_calendars 4.x builds its tables with pandas APIs that pandas now deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            from pandas.errors import Pandas4Warning
        except ImportError:  # pandas < 3
            pass
        else:
            warnings.simplefilter("ignore", Pandas4Warning)
        cal = exchange_calendars.get_calendar(name)
        schedule = cal.schedule
        sessions = {
            label.date(): Session(o.to_pydatetime().astimezone(UTC), c.to_pydatetime().astimezone(UTC))
            for label, o, c in zip(schedule.index, schedule["open"], schedule["close"], strict=True)
        }
    return sessions, (cal.first_session.date(), cal.last_session.date())


class TradingCalendar:
    """An exchange's sessions (XNYS unless given), read on first use.

    `TradingCalendar(sessions)` takes explicit sessions (tests); a day outside the exchange
    calendar's range raises LookupError rather than pass for a holiday.
    """

    def __init__(self, sessions: Mapping[date, Session] | None = None, *, name: str = "XNYS") -> None:
        self.name = name
        self._sessions: dict[date, Session] | None = dict(sessions) if sessions is not None else None
        self._range: tuple[date, date] | None = None
        self._lock = threading.Lock()

    @classmethod
    def xnys(cls) -> TradingCalendar:
        return cls()

    def _loaded(self) -> dict[date, Session]:
        if self._sessions is None:
            with self._lock:
                if self._sessions is None:
                    sessions, self._range = _load_exchange(self.name)
                    self._sessions = sessions
        return self._sessions

    def session(self, day: date) -> Session | None:
        found = self._loaded().get(day)
        if found is None and self._range is not None and not self._range[0] <= day <= self._range[1]:
            raise LookupError(f"{self.name} calendar does not cover {day.isoformat()}")
        return found

    def is_open(self, ts: datetime) -> bool:
        s = self._loaded().get(ts.date())
        return s is not None and s.open <= ts < s.close

    def minutes(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Start times of the session minutes in [start, end), in order."""
        sessions = self._loaded()
        day = start.date()
        while day <= end.date():
            s = sessions.get(day)
            if s is not None:
                m = max(s.open, _ceil_minute(start))
                stop = min(s.close, end)
                while m < stop:
                    yield m
                    m += MINUTE
            day += timedelta(days=1)
