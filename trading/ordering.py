"""Event-time order for decisions that span symbols: one account's limits depend on the order its
inputs are decided in, so the backtester and the dispatch agent both decide in canonical order, and
the dispatch agent decides a minute once the minute watermarks (clock.minutes) say it is closed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trading.broker import broker_key

BAR_KIND = 0
SIGNAL_KIND = 1


def canonical_key(record: Any) -> tuple[datetime, int, str, int, str]:
    """The decision order of a features record, a recommendation or a broker record."""
    if hasattr(record, "as_of") or hasattr(record, "at"):
        return broker_key(record)
    action = getattr(record, "action", None)
    if action is not None:
        return (record.ts, SIGNAL_KIND, record.symbol, 0, action)
    return (record.ts, BAR_KIND, record.symbol, getattr(record, "revision", 0), "")


FEATURES_INPUT = "features"  # features.1m: bars for exits
SIGNALS_INPUT = "signals"


@dataclass(frozen=True, slots=True)
class Closed:
    """A signals closure of one partition: every signal of `minute` there is below `upto` (signals
    topic) and every features record below `input_upto` (features.1m); made at `at`."""

    partition: int
    minute: datetime
    upto: int
    input_upto: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Step:
    """Items decided together, in canonical order. `minute`/`at`: the closed minute and the clock
    the closure recorded; both None for quiet items let go after max_hold_s without any closure."""

    minute: datetime | None
    at: datetime | None
    items: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Held:
    key: tuple[Any, ...]
    seq: int
    kind: str | None  # FEATURES_INPUT, SIGNALS_INPUT, or None: a quiet record (no watermark)
    partition: int
    offset: int
    added: float
    item: Any


class MinuteReleaser:
    """Holds decision inputs and lets them go minute by minute, as the watermarks close minutes.

    A minute M is closed in partition p by the first signals closure of p (in topic order) whose
    minute is at least M; M may be decided once every partition has closed it and this consumer has
    consumed features.1m and signals of each partition up to that closure's offsets. A step is
    taken at every minute some partition's closures moved to; it decides the held items of minutes
    up to it that lie below the offsets of the closures covering it (quiet records: all), in
    canonical order, at the latest `at` of those closures. A record beyond those offsets is late:
    it goes out at the first later step that covers it. All of this depends on the topics only,
    so a replay of them (trading/recorded_clock.py) takes the same steps with the same items.
    Quiet records (broker snapshots, control) that no closure lets go for `max_hold_s` (the
    features or signal agent is down) are let go on their own.
    """

    def __init__(self, partitions: int, *, max_hold_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.partitions = partitions
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._next: dict[str, dict[int, int]] = {FEATURES_INPUT: {}, SIGNALS_INPUT: {}}
        self._queued: dict[int, deque[Closed]] = {}  # p -> closures not consumed up to yet
        self._covers: dict[int, list[Closed]] = {}  # p -> closures that moved p on, ascending
        self._items: list[_Held] = []
        self._seq = 0
        self.released: datetime | None = None  # the latest step taken
        self._last_step = clock()
        self.late = 0

    def __len__(self) -> int:
        return len(self._items)

    def expect(self, starts: Mapping[str, Mapping[int, int]]) -> None:
        """Where this consumer starts each partition of features.1m and signals (earlier records
        were decided before)."""
        for kind, parts in starts.items():
            mine = self._next.setdefault(kind, {})
            for p, start in parts.items():
                mine[p] = max(mine.get(p, 0), start)

    def consumed(self, kind: str, partition: int, offset: int) -> None:
        mine = self._next[kind]
        if offset >= mine.get(partition, 0):
            mine[partition] = offset + 1

    def add(self, record: Any, item: Any, *, kind: str | None = None, partition: int = 0,
            offset: int = 0) -> None:
        """Holds `item` (of `record`'s canonical key); `kind` None: a quiet record."""
        if kind is not None:
            self.consumed(kind, partition, offset)
        self._items.append(_Held(canonical_key(record), self._seq, kind, partition, offset,
                                 self._clock(), item))
        self._seq += 1

    def close(self, closed: Closed) -> None:
        self._queued.setdefault(closed.partition, deque()).append(closed)

    def _promote(self) -> None:
        features, signals = self._next[FEATURES_INPUT], self._next[SIGNALS_INPUT]
        for p, queue in self._queued.items():
            while queue and queue[0].input_upto <= features.get(p, 0) and queue[0].upto <= signals.get(p, 0):
                c = queue.popleft()
                covers = self._covers.setdefault(p, [])
                if (not covers or c.minute > covers[-1].minute) and (self.released is None
                                                                     or c.minute > self.released):
                    covers.append(c)

    def horizon(self) -> datetime | None:
        """The latest minute every partition has closed (None: not every partition has yet)."""
        tops = [self._covers[p][-1].minute for p in range(self.partitions) if self._covers.get(p)]
        top = min(tops) if len(tops) == self.partitions else None
        if top is None or (self.released is not None and top < self.released):
            return self.released
        return top

    def release(self) -> list[Step]:
        """The steps that became possible, in order."""
        self._promote()
        steps: list[Step] = []
        top = self.horizon()
        if top is not None and (self.released is None or top > self.released):
            minutes = sorted({c.minute for covers in self._covers.values() for c in covers
                              if c.minute <= top and (self.released is None or c.minute > self.released)})
            for minute in minutes:
                steps.append(self._step(minute))
            for p, covers in self._covers.items():
                self._covers[p] = [c for c in covers if c.minute > top]
        now = self._clock()
        if steps:
            self._last_step = now
        elif self._items and now - self._last_step >= self.max_hold_s:
            stale = [h for h in self._items if h.kind is None and now - h.added >= self.max_hold_s]
            if stale:
                taken = {h.seq for h in stale}
                self._items = [h for h in self._items if h.seq not in taken]
                stale.sort(key=lambda h: (h.key, h.seq))
                steps.append(Step(None, None, [h.item for h in stale]))
        return [s for s in steps if s.items or s.minute is not None]

    def _step(self, minute: datetime) -> Step:
        bounds = {p: next(c for c in covers if c.minute >= minute) for p, covers in self._covers.items()
                  if covers and covers[-1].minute >= minute}
        at = max(c.at for c in bounds.values())
        out: list[_Held] = []
        keep: list[_Held] = []
        for h in self._items:
            if h.key[0] > minute:
                keep.append(h)
                continue
            if h.kind is not None:
                c = bounds.get(h.partition)
                if c is None or h.offset >= (c.upto if h.kind == SIGNALS_INPUT else c.input_upto):
                    keep.append(h)  # beyond what the closure covers: late, for a later step
                    continue
            out.append(h)
        self._items = keep
        out.sort(key=lambda h: (h.key, h.seq))
        last = self.released
        if last is not None:
            self.late += sum(1 for h in out if h.key[0] <= last)
        self.released = minute
        return Step(minute, at, [h.item for h in out])

    def clear(self) -> list[Any]:
        """Drops everything held (partitions were reassigned: it will be delivered again)."""
        items = [h.item for h in self._items]
        self._items = []
        self._queued.clear()
        self._covers.clear()
        for mine in self._next.values():
            mine.clear()
        self.released = None
        return items
