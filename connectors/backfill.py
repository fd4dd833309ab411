"""`ops-pipeline backfill`: the live connector's gap logic over a range of history; a minute REST
has no bar for had no trades and is reported as such, never as a gap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from connectors.gaps import GapDetector, GapReport, chunks
from connectors.intake import BarIntake, BarSink, IntakeStats
from connectors.revisions import RevisionBook
from schemas.records import Bar
from trading.calendar import TradingCalendar

if TYPE_CHECKING:  # alpaca-py loads pandas: imported where a client is made
    from connectors.alpaca_rest import BarHistory


@dataclass
class BackfillResult:
    start: datetime
    end: datetime
    expected: Counter[str] = field(default_factory=Counter)  # session minutes per symbol
    present: Counter[str] = field(default_factory=Counter)  # of those, already on the topic
    reports: list[GapReport] = field(default_factory=list)
    stats: IntakeStats = field(default_factory=IntakeStats)

    def filled(self) -> Counter[str]:
        return Counter(s for r in self.reports for s, _ in r.filled)

    def no_trade(self) -> Counter[str]:
        return Counter(s for r in self.reports for s, _ in r.no_trade)


def backfill(
    *,
    symbols: Sequence[str],
    start: datetime,
    end: datetime,
    existing: Iterable[Bar],
    history: BarHistory,
    sink: BarSink,
    calendar: TradingCalendar,
    now: datetime,
    settle: timedelta = timedelta(seconds=90),
) -> BackfillResult:
    """Fill the session minutes in [start, end) that `existing` (the topic) lacks."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    detector = GapDetector(calendar, symbols, lookback=now - start, settle=settle)
    end = min(end, detector.window(now)[1])  # never ask for minutes that are not over yet
    result = BackfillResult(start=start, end=end)
    wanted = set(symbols)
    in_range = [b for b in existing if b.symbol in wanted and start <= b.ts < end]
    book = RevisionBook(memory=max(1000, len(in_range)))
    book.seed(in_range)
    for bar in in_range:
        detector.observe(bar.symbol, bar.ts)
    seen = {(b.symbol, b.ts) for b in in_range}
    for minute in calendar.minutes(start, end):
        for s in symbols:
            result.expected[s] += 1
            result.present[s] += (s, minute) in seen
    intake = BarIntake(sink, symbols=symbols, book=book, detector=detector)
    for chunk in chunks(detector.missing(start, end)):
        answer = history.fetch(chunk.symbols, chunk.start, chunk.end)
        result.reports.append(intake.apply_backfill(chunk, answer, now=now))
    sink.flush()
    result.stats = intake.stats
    return result
