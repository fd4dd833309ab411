"""Minute watermarks: when the features agent may say "minute M is closed in partition p", and when
the signal agent may forward that closure for its own output. Pure: bars, offsets and times in,
closures out; the agents publish them to clock.minutes (see streams/features_agent.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from trading.clock import MINUTE

COMPLETE = "complete"  # every universe symbol of the partition has its bar for the minute
DEADLINE = "deadline"  # wall clock: the minute's end (or its first bar) plus the allowance passed
NEXT_MINUTE = "next_minute"  # a bar of a later minute arrived in the partition
IDLE = "idle"  # no bar for a while: the latest minute (bar clock), the wall minute (wall clock)


@dataclass(frozen=True, slots=True)
class Closure:
    partition: int
    minute: datetime
    reason: str


@dataclass(frozen=True)
class CloserConfig:
    clock: str = "wall"  # "wall": deadlines on the wall clock; "bar": only bars (and idleness) close
    allowance_s: float = 5.0  # wall: how long after its minute's end (or first bar) a minute waits
    idle_s: float = 3.0  # bar: no bar for this long closes the latest minute seen (a replay's end)
    heartbeat_after_s: float = 60.0  # wall: no bar for this long closes the wall minute (market shut)


class MinuteCloser:
    """One features worker's closures. Per partition, minute M closes when every universe symbol
    hashed there has its bar for M, when a bar of a later minute arrives there (bars of a partition
    arrive in time order), and on the wall clock once M's deadline passed; partitions that hold no
    universe symbol and have had no bar follow the others. A closed minute stays closed: a bar of it
    arriving later is late (counted; dispatch decides it at its next release)."""

    def __init__(self, universe: Mapping[int, Iterable[str]], config: CloserConfig | None = None) -> None:
        self.config = config or CloserConfig()
        self.universe = {p: frozenset(s) for p, s in universe.items()}
        self.partitions: set[int] = set()  # owned
        self._seen: dict[int, dict[datetime, set[str]]] = {}  # p -> open minute -> symbols
        self._closed: dict[int, datetime] = {}
        self._first: dict[datetime, float] = {}  # open minute -> wall time its first bar came
        self._bars_in: set[int] = set()  # partitions that had a bar
        self._last_bar = -float("inf")
        self._latest: datetime | None = None
        self.late = 0

    def assign(self, partitions: Iterable[int]) -> None:
        """The partitions this worker owns now; state of the others is dropped."""
        self.partitions = set(partitions)
        for state in (self._seen, self._closed):
            for p in [p for p in state if p not in self.partitions]:
                del state[p]

    def closed(self, partition: int) -> datetime | None:
        return self._closed.get(partition)

    def on_bar(self, partition: int, symbol: str, ts: datetime, now: float) -> list[Closure]:
        """A bar (its features applied); `now` is the wall time (epoch seconds)."""
        self.partitions.add(partition)
        self._bars_in.add(partition)
        self._last_bar = now
        if self._latest is None or ts > self._latest:
            self._latest = ts
        done = self._closed.get(partition)
        if done is not None and ts <= done:
            self.late += 1
            return []
        out: list[Closure] = []
        seen = self._seen.setdefault(partition, {})
        older = [m for m in seen if m < ts]
        if older or (done is not None and ts - MINUTE > done):
            out += self._close(partition, ts - MINUTE, NEXT_MINUTE)
        symbols = seen.setdefault(ts, set())
        symbols.add(symbol)
        self._first.setdefault(ts, now)
        expected = self.universe.get(partition)
        if expected and expected <= symbols:
            out += self._close(partition, ts, COMPLETE)
        return out

    def on_tick(self, now: float) -> list[Closure]:
        """The timer: deadlines and idleness (`now`: wall time, epoch seconds)."""
        cfg = self.config
        out: list[Closure] = []
        if self._last_bar == -float("inf"):
            self._last_bar = now  # idleness counts from the first tick (a start over a backlog)
        quiet = now - self._last_bar
        if cfg.clock == "bar":
            if quiet >= cfg.idle_s and self._latest is not None:
                for p in sorted(self.partitions):
                    out += self._close(p, self._latest, IDLE)
            return out
        due = [m for m, first in self._first.items()
               if max(first, m.timestamp() + 60.0) + cfg.allowance_s <= now]
        if due:
            minute = max(due)
            for p in sorted(self.partitions):
                out += self._close(p, minute, DEADLINE)
        if quiet >= cfg.heartbeat_after_s and self.partitions:
            wall = datetime.fromtimestamp(now - cfg.allowance_s, tz=UTC)
            minute = wall.replace(second=0, microsecond=0) - MINUTE
            for p in sorted(self.partitions):
                out += self._close(p, minute, IDLE)
        return out

    def _close(self, partition: int, minute: datetime, reason: str) -> list[Closure]:
        out = []
        for p in (partition, *self._followers(partition)):
            done = self._closed.get(p)
            if done is not None and minute <= done:
                continue
            self._closed[p] = minute
            seen = self._seen.get(p)
            if seen:
                for m in [m for m in seen if m <= minute]:
                    del seen[m]
            out.append(Closure(p, minute, reason))
        # a minute no partition holds open any more needs no deadline
        open_minutes = {m for seen in self._seen.values() for m in seen}
        for m in [m for m in self._first if m <= minute and m not in open_minutes
                  and all(self._closed.get(p, m - MINUTE) >= m for p in self.partitions)]:
            del self._first[m]
        return out

    def _followers(self, partition: int) -> list[int]:
        """Owned partitions with no universe symbol and no bar: nothing of theirs can be pending."""
        if not self.universe.get(partition) and partition not in self._bars_in:
            return []
        return [p for p in sorted(self.partitions)
                if p != partition and not self.universe.get(p) and p not in self._bars_in]


class ClosureForwarder:
    """The signal agent's side: a features closure (p, M, upto) is forwarded once every features
    record of p below `upto` has been consumed and its signals delivered, with the signals topic's
    end in p as of then. Consumed offsets start where the consumer starts (`reset`)."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}  # features partition -> next offset to consume
        self._pending: dict[int, deque[tuple[int, object]]] = {}  # p -> (upto, closure) in order

    def reset(self, starts: Mapping[int, int]) -> None:
        self._next = dict(starts)
        self._pending.clear()

    def consumed(self, partition: int, offset: int) -> None:
        if offset >= self._next.get(partition, 0):
            self._next[partition] = offset + 1

    def add(self, partition: int, upto: int, closure: object) -> None:
        self._pending.setdefault(partition, deque()).append((upto, closure))

    def ready(self) -> list[object]:
        """The closures whose inputs are all consumed (call once the batch's sends are delivered)."""
        out = []
        for p, queue in self._pending.items():
            while queue and queue[0][0] <= self._next.get(p, 0):
                out.append(queue.popleft()[1])
        return out

    def __len__(self) -> int:
        return sum(len(q) for q in self._pending.values())
