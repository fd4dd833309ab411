"""The revision and values last published per recent minute: Alpaca's updated bars get the next
revision, exact repeats are dropped, a backfill fills only minutes nobody has published, and REST
rechecking a published minute after a drop revises it only where its OHLCV differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from schemas.records import Bar

Kind = Literal["live", "updated", "backfill"]
Fingerprint = tuple[float, float, float, float, int, int | None, float | None]


def fingerprint(bar: Bar) -> Fingerprint:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count, bar.vwap)


def same_ohlcv(a: Fingerprint, b: Fingerprint) -> bool:
    """REST's judgement ignores trade_count and vwap: OHLCV is what every consumer reads, and a
    vwap rounded differently by the two APIs must not spawn revisions after every reconnect."""
    return a[:5] == b[:5]


class RevisionBook:
    """Per symbol, the last `memory` minutes: minute -> (revision, fingerprint)."""

    def __init__(self, memory: int = 2000) -> None:
        if memory < 1:
            raise ValueError("memory must be at least one minute")
        self.memory = memory
        self._minutes: dict[str, dict[datetime, tuple[int, Fingerprint]]] = {}

    def seed(self, bars: Iterable[Bar]) -> int:
        """Learn from records already on the topic: the highest revision of each minute wins."""
        n = 0
        for bar in bars:
            known = self._minutes.setdefault(bar.symbol, {}).get(bar.ts)
            if known is None or bar.revision >= known[0]:
                self._remember(bar.symbol, bar.ts, bar.revision, fingerprint(bar))
            n += 1
        return n

    def revision(self, symbol: str, ts: datetime) -> int | None:
        known = self._minutes.get(symbol, {}).get(ts)
        return None if known is None else known[0]

    def admit(self, bar: Bar, kind: Kind) -> Bar | None:
        """The bar with its revision set, or None when it must not be published again.

        live: a new minute is revision 0; the same values again are a duplicate; different values
        for a known minute are a correction (next revision). updated: the next revision (1 for an
        unknown minute: a "u" always follows a first bar). backfill: only unknown minutes.
        """
        known = self._minutes.get(bar.symbol, {}).get(bar.ts)
        fp = fingerprint(bar)
        if known is not None and (kind == "backfill" or known[1] == fp):
            return None
        if known is not None:
            revision = known[0] + 1
        else:
            revision = 1 if kind == "updated" else 0
        self._remember(bar.symbol, bar.ts, revision, fp)
        return bar if bar.revision == revision else dataclasses.replace(bar, revision=revision)

    def recent(self, symbols: Iterable[str], minutes: int) -> dict[str, tuple[datetime, ...]]:
        """The known minutes of each symbol among the `minutes` ending at the newest one known for
        any of them: after a drop, the minutes whose updated bars may have been lost."""
        wanted = [s for s in symbols if self._minutes.get(s)]
        if minutes < 1 or not wanted:
            return {}
        start = max(max(self._minutes[s]) for s in wanted) - timedelta(minutes=minutes - 1)
        window = {s: tuple(sorted(t for t in self._minutes[s] if t >= start)) for s in wanted}
        return {s: ts for s, ts in window.items() if ts}

    def judge(self, bar: Bar, *, asked: int) -> Bar | None:
        """REST's bar for a minute that was at revision `asked` when REST was asked: the next
        revision when its OHLCV differs; None when it agrees, or when the minute is unknown (a gap,
        the gap check's) or moved on meanwhile (the stream spoke after REST was asked: it stands)."""
        known = self._minutes.get(bar.symbol, {}).get(bar.ts)
        fp = fingerprint(bar)
        if known is None or known[0] != asked or same_ohlcv(known[1], fp):
            return None
        self._remember(bar.symbol, bar.ts, asked + 1, fp)
        return dataclasses.replace(bar, revision=asked + 1)

    def _remember(self, symbol: str, ts: datetime, revision: int, fp: Fingerprint) -> None:
        minutes = self._minutes.setdefault(symbol, {})
        minutes[ts] = (revision, fp)
        if len(minutes) > 2 * self.memory:  # amortised: prune to the newest `memory` minutes
            keep = sorted(minutes)[-self.memory :]
            self._minutes[symbol] = {t: minutes[t] for t in keep}
