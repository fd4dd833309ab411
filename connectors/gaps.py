"""Which session minutes a symbol is missing: only candidates, since IEX has no bar for a minute
without trades; REST is the judge, and the minutes it confirms empty are never asked again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from trading.calendar import TradingCalendar
from trading.clock import MINUTE, floor_minute

Minute = tuple[str, datetime]


def stalled(last_data: datetime, now: datetime, timeout: timedelta, calendar: TradingCalendar) -> bool:
    """No market data for `timeout` although the market was open through that whole silence."""
    return (
        now - last_data >= timeout and calendar.is_open(now - timeout) and calendar.is_open(now)
    )


@dataclass(frozen=True, slots=True)
class Chunk:
    """One REST request: the missing minutes of one session, for the symbols missing any."""

    start: datetime
    end: datetime  # inclusive, as Alpaca's `end`
    asked: dict[str, tuple[datetime, ...]]

    @property
    def symbols(self) -> list[str]:
        return sorted(self.asked)


@dataclass(frozen=True, slots=True)
class GapReport:
    asked: int
    filled: list[Minute] = field(default_factory=list)  # gaps REST had bars for
    no_trade: list[Minute] = field(default_factory=list)  # REST has no bar: not a gap
    rejected: list[Minute] = field(default_factory=list)  # REST's bar failed validation (DLQ)


@dataclass(frozen=True, slots=True)
class RecheckReport:
    """REST's word on the published minutes before a drop."""

    asked: int
    revised: list[Minute] = field(default_factory=list)  # REST differed: a new revision published
    absent: list[Minute] = field(default_factory=list)  # published, but REST has no bar: left as is
    rejected: list[Minute] = field(default_factory=list)  # REST's bar failed validation (DLQ)


def chunks(missing: Mapping[str, Sequence[datetime]]) -> list[Chunk]:
    """The missing minutes grouped per session day, one REST request each."""
    by_day: dict[date, dict[str, list[datetime]]] = {}
    for symbol, minutes in missing.items():
        for m in minutes:
            by_day.setdefault(m.date(), {}).setdefault(symbol, []).append(m)
    out = []
    for day in sorted(by_day):
        asked = {s: tuple(sorted(ms)) for s, ms in by_day[day].items()}
        start = min(ms[0] for ms in asked.values())
        end = max(ms[-1] for ms in asked.values())
        out.append(Chunk(start, end, asked))
    return out


class GapDetector:
    """Expected session minutes minus the minutes seen (published or on the topic)."""

    def __init__(
        self,
        calendar: TradingCalendar,
        symbols: Iterable[str],
        *,
        lookback: timedelta = timedelta(days=1),
        settle: timedelta = timedelta(seconds=90),
    ) -> None:
        self.calendar = calendar
        self.symbols = tuple(symbols)
        self.lookback = lookback
        self.settle = settle
        self._seen: set[Minute] = set()
        self._no_trade: set[Minute] = set()

    def observe(self, symbol: str, ts: datetime) -> None:
        self._seen.add((symbol, ts))

    def forget_seen(self) -> None:
        """Drop what was observed (after a failed delivery): the topic tail is the truth again."""
        self._seen.clear()

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """[start, end) of the minutes that should be complete by `now`: a minute is due once it
        has ended and `settle` has passed (the live bar arrives a moment after the minute)."""
        end = floor_minute(now - self.settle - MINUTE) + MINUTE
        return now - self.lookback, end

    def missing(self, start: datetime, end: datetime) -> dict[str, list[datetime]]:
        out: dict[str, list[datetime]] = {}
        for m in self.calendar.minutes(start, end):
            for s in self.symbols:
                if (s, m) not in self._seen and (s, m) not in self._no_trade:
                    out.setdefault(s, []).append(m)
        return out

    def due(self, now: datetime) -> dict[str, list[datetime]]:
        start, end = self.window(now)
        self._prune(start - MINUTE)
        return self.missing(start, end)

    def resolve(
        self, chunk: Chunk, found: Iterable[Minute], rejected: Iterable[Minute] = ()
    ) -> GapReport:
        """After REST answered `chunk`: minutes it returned are filled (or rejected, when the bar
        was invalid: asking again would not help), the rest had no trades."""
        got, bad = set(found), set(rejected)
        report = GapReport(asked=sum(len(v) for v in chunk.asked.values()))
        for symbol, minutes in chunk.asked.items():
            for m in minutes:
                if (symbol, m) in got:
                    report.filled.append((symbol, m))
                    self._seen.add((symbol, m))
                elif (symbol, m) in bad:
                    report.rejected.append((symbol, m))
                    self._seen.add((symbol, m))
                else:
                    report.no_trade.append((symbol, m))
                    self._no_trade.add((symbol, m))
        return report

    def _prune(self, before: datetime) -> None:
        self._seen = {k for k in self._seen if k[1] >= before}
        self._no_trade = {k for k in self._no_trade if k[1] >= before}
