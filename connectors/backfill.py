"""`ops-pipeline backfill`: the live connector's gap logic over a range of history; a minute REST
has no bar for had no trades and is reported as such, never as a gap. Also REST's recheck of the
minutes before a drop, which the live connector runs after every reconnect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from connectors.gaps import Chunk, GapDetector, GapReport, Minute, RecheckReport, chunks
from connectors.intake import BarIntake, BarSink, IntakeStats
from connectors.revisions import RevisionBook
from connectors.validation import BarRejected, parse_ts
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


def asked_revisions(book: RevisionBook, chunk: Chunk) -> dict[Minute, int]:
    """The revision of each asked minute when REST is asked, for RevisionBook.judge."""
    return {
        (s, m): r for s, ms in chunk.asked.items() for m in ms if (r := book.revision(s, m)) is not None
    }


def apply_recheck(
    intake: BarIntake, answer: Mapping[str, list[dict[str, Any]]], *, asked: Mapping[Minute, int],
    now: datetime,
) -> RecheckReport:
    """Publish REST's bar as the next revision of each asked minute where its OHLCV differs.

    The bar keeps source "backfill", as every REST bar has: the source says where the values came
    from, the revision that they replace the minute's earlier ones."""
    report = RecheckReport(asked=len(asked))
    answered: set[Minute] = set()
    for symbol, raws in answer.items():
        for raw in raws:
            minute = _minute(symbol, raw)
            if minute is not None and minute not in asked:
                continue  # REST answers the whole span; only the asked minutes are judged here
            bar = intake.rest_valid(symbol, raw, now=now)
            if bar is None:
                if minute is not None:
                    report.rejected.append(minute)
                    answered.add(minute)
                continue
            answered.add((bar.symbol, bar.ts))
            if intake.rest_correction(bar, asked=asked[(bar.symbol, bar.ts)]) is not None:
                report.revised.append((bar.symbol, bar.ts))
    report.absent.extend(sorted(m for m in asked if m not in answered))
    return report


def _minute(symbol: str, raw: Mapping[str, Any]) -> Minute | None:
    try:
        return symbol, parse_ts(raw.get("t"))
    except BarRejected:
        return None  # rest_bar sends it to the DLQ with its reason
