"""The revision and values last published per recent minute: Alpaca's updated bars get the next
revision, exact repeats are dropped, and a backfill fills only minutes nobody has published.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from schemas.records import Bar

Kind = Literal["live", "updated", "backfill"]
Fingerprint = tuple[float, float, float, float, int, int | None, float | None]


def fingerprint(bar: Bar) -> Fingerprint:
    return (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trade_count, bar.vwap)


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

    def _remember(self, symbol: str, ts: datetime, revision: int, fp: Fingerprint) -> None:
        minutes = self._minutes.setdefault(symbol, {})
        minutes[ts] = (revision, fp)
        if len(minutes) > 2 * self.memory:  # amortised: prune to the newest `memory` minutes
            keep = sorted(minutes)[-self.memory :]
            self._minutes[symbol] = {t: minutes[t] for t in keep}
