"""Event-time order for decisions that span symbols: one account's limits depend on the order its
inputs are decided in, so the backtester and the dispatch agent both decide in canonical order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
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


class EventTimeBuffer:
    """Holds items and releases them in canonical order once their minute is complete.

    A minute t is complete when the watermark (the smallest latest bar time over the clock
    partitions heard from in the last `idle_s`) has been past t for `grace_s`. When nothing at all
    has arrived for `idle_s`, everything held is released (the end of a replay, a quiet market).
    Items older than what was already released are released at once, and counted as late.

    The clock topic is features.1m (dense: every symbol, every minute); signals wait a grace
    period for the minute's signals, and with `gate_on_progress` until the signal agent has
    committed past every bar of the minute (`progress()`). After an assignment the consumer says
    where it starts (`expect`): a partition not heard from since holds everything until it has been
    silent for `idle_s`, and for as long as records known to exist there (`known`: the signal
    agent committed past them) lie beyond where this consumer stands; otherwise a cold start over a
    backlog would release minutes on the first partitions fetched while a slower one still holds
    bars of them. A quiet partition leaves the watermark only when nothing is known beyond it.
    """

    __slots__ = (
        "grace_s",
        "idle_s",
        "max_hold_s",
        "gate_on_progress",
        "_clock",
        "_items",
        "_seq",
        "_latest",
        "_heard",
        "_last_add",
        "_marks",
        "_released_upto",
        "late",
        "_pending",
        "_expected",
        "_next",
        "_known_end",
        "_quiet_seqs",
        "_last_clock_add",
        "quiet_waits_for_bars",
    )

    def __init__(
        self,
        grace_s: float = 1.0,
        idle_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        gate_on_progress: bool = False,
        max_hold_s: float = 30.0,
        quiet_waits_for_bars: bool = False,
    ) -> None:
        self.grace_s = grace_s
        self.idle_s = idle_s
        self.max_hold_s = max_hold_s
        self.gate_on_progress = gate_on_progress
        # on bar time (a replay) quiet items beyond the latest bar wait for the bars; on the wall
        # clock they are in the past when they arrive and go out with what they precede
        self.quiet_waits_for_bars = quiet_waits_for_bars
        self._clock = clock
        self._pending: dict[int, deque[tuple[int, datetime]]] = {}  # partition -> (offset, ts) not covered
        self._items: list[tuple[tuple[Any, ...], int, Any]] = []
        self._seq = 0
        self._latest: dict[int, datetime] = {}  # clock partition -> latest bar ts
        self._heard: dict[int, float] = {}  # clock partition -> wall time of its latest event
        self._last_add = -float("inf")
        self._marks: deque[tuple[float, datetime]] = deque()  # (wall, watermark) samples
        self._released_upto: datetime | None = None
        self.late = 0
        self._expected: dict[int, float] = {}  # clock partition -> wall time it was expected from
        self._next: dict[int, int] = {}  # clock partition -> next offset this consumer will see
        self._known_end: dict[int, int] = {}  # clock partition -> offsets below it are known to exist
        self._quiet_seqs: dict[int, float] = {}  # items that do not count as activity -> when added
        self._last_clock_add = -float("inf")  # wall time of the latest bar (clock partition) added

    def __len__(self) -> int:
        return len(self._items)

    def expect(self, starts: dict[int, int]) -> None:
        """The clock partitions this consumer was assigned, with the offset it starts each from."""
        now = self._clock()
        for p, start in starts.items():
            self._expected[p] = now
            self._next[p] = max(self._next.get(p, 0), start)

    def known(self, ends: dict[int, int]) -> None:
        """Offsets below `ends[p]` exist in clock partition p (e.g. a consumer committed past them)."""
        for p, end in ends.items():
            if end > self._known_end.get(p, 0):
                self._known_end[p] = end

    def _behind(self, p: int) -> bool:
        """Records are known to exist in p beyond what this consumer has seen."""
        return self._known_end.get(p, 0) > self._next.get(p, 0)

    def add(
        self, record: Any, item: Any, *, clock_partition: int | None = None, offset: int | None = None,
        quiet: bool = False,
    ) -> None:
        """Holds `item` (of `record`'s canonical key). A `quiet` item (broker snapshots, read every
        30 s whatever the market does; the operator's changes) does not count as activity, so it
        never delays the release of a quiet stream; and it is not released ahead of the bars:
        beyond the latest bar seen it waits for the bars (with `quiet_waits_for_bars`: on bar time),
        or until neither a bar nor it arrived for `max_hold_s` (a closed market)."""
        now = self._clock()
        key = canonical_key(record)
        if clock_partition is not None:
            if offset is not None and offset >= self._next.get(clock_partition, 0):
                self._next[clock_partition] = offset + 1
            prev = self._latest.get(clock_partition)
            if prev is None or key[0] > prev:
                self._latest[clock_partition] = key[0]
            self._heard[clock_partition] = now
            if self.gate_on_progress and offset is not None:
                self._pending.setdefault(clock_partition, deque()).append((offset, key[0]))
        self._items.append((key, self._seq, item))
        self._seq += 1
        if quiet:
            self._quiet_seqs[self._seq - 1] = now
            return
        if clock_partition is not None:
            self._last_clock_add = now
        self._last_add = now
        mark = self._watermark(now)
        if mark is not None and (not self._marks or mark > self._marks[-1][1]):
            self._marks.append((now, mark))

    def progress(self, committed: dict[int, int]) -> None:
        """The signal producer's committed offset per clock partition: bars below it are covered."""
        now = self._clock()
        self.known(committed)
        for p, upto in committed.items():
            queue = self._pending.get(p)
            while queue and queue[0][0] < upto:
                queue.popleft()
        mark = self._watermark(now)
        if mark is not None and (not self._marks or mark > self._marks[-1][1]):
            self._marks.append((now, mark))

    def _watermark(self, now: float) -> datetime | None:
        marks = []
        for p, since in self._expected.items():
            if p not in self._latest and (self._behind(p) or now - since <= self.idle_s):
                return None  # not heard from yet: it may hold bars of any minute
        for p, ts in self._latest.items():
            if now - self._heard[p] > self.idle_s and not self._behind(p):
                continue
            pending = self._pending.get(p) if self.gate_on_progress else None
            if pending:
                ts = min(ts, pending[0][1])  # the producer has not covered that bar's minute yet
            marks.append(ts)
        return min(marks) if marks else None

    def clear(self) -> list[Any]:
        """Drops everything held (partitions were reassigned: it will be delivered again)."""
        items = [it for _k, _s, it in self._items]
        self._items = []
        self._marks.clear()
        self._latest.clear()
        self._heard.clear()
        self._pending.clear()
        self._expected.clear()
        self._next.clear()
        self._known_end.clear()
        self._quiet_seqs.clear()
        self._released_upto = None
        return items

    def release(self) -> list[Any]:
        """The items whose minute is complete, in canonical order."""
        if not self._items:
            return []
        now = self._clock()
        quiet = now - self._last_add
        if quiet >= self.idle_s:
            # quiet: everything, but for minutes the signal producer has not covered yet (it may be
            # restarting) and partitions known to hold more than was seen; after max_hold_s, all
            bound = self._quiet_bound() if quiet < self.max_hold_s else None
            if bound is _HOLD:
                upto = self._released_upto
                if upto is None:
                    return []
            else:
                upto = bound
        else:
            marks = self._marks
            while len(marks) > 1 and marks[1][0] <= now - self.grace_s:
                marks.popleft()
            if not marks or marks[0][0] > now - self.grace_s:
                upto = self._released_upto  # nothing has been complete for long enough yet
                if upto is None:
                    return []
            else:
                upto = marks[0][1]
        self._items.sort()
        # quiet items beyond the latest bar wait for the bars, unless nothing moved for max_hold_s
        horizon: Any = max(self._latest.values(), default=_HOLD)
        quiet_items = self._quiet_seqs if self.quiet_waits_for_bars else {}
        n = 0
        for key, seq, _it in self._items:
            if upto is not None and key[0] >= upto:
                break
            added = quiet_items.get(seq)
            if added is not None and (horizon is _HOLD or key[0] > horizon) \
                    and now - max(added, self._last_clock_add) < self.max_hold_s:
                break
            n += 1
        out, self._items = self._items[:n], self._items[n:]
        for _k, seq, _it in out:
            self._quiet_seqs.pop(seq, None)
        if out:
            last = self._released_upto
            self.late += sum(1 for k, _s, _it in out if last is not None and k[0] < last)
            top = out[-1][0][0]
            if last is None or top > last:
                self._released_upto = top
        return [it for _k, _s, it in out]

    def _quiet_bound(self) -> Any:
        """Quiet: release below this (None: everything; _HOLD: nothing new)."""
        bounds = []
        for p in set(self._expected) | set(self._latest):
            if self._behind(p):
                latest = self._latest.get(p)
                if latest is None:
                    return _HOLD
                bounds.append(latest)
        if self.gate_on_progress:
            bounds += [q[0][1] for q in self._pending.values() if q]
        return min(bounds) if bounds else None


_HOLD = object()


class SignalProgress:
    """When the signal producer's committed offsets may be trusted by a consumer of its output.

    A commit on the clock topic past bar b says b's signals are on the signals topic, not that this
    consumer has read them. So each sample pairs the commits with the signals topic's end offsets
    read after them, and is handed out by `covered()` only once this consumer has consumed every
    signals partition up to those ends. Pure: offsets in, offsets out.
    """

    __slots__ = ("_next", "_samples")

    def __init__(self, maxlen: int = 64) -> None:
        self._next: dict[int, int] = {}  # signals partition -> next offset this consumer will see
        self._samples: deque[tuple[dict[int, int], dict[int, int]]] = deque(maxlen=maxlen)

    def reset(self, starts: dict[int, int]) -> None:
        """After an assignment: where this consumer starts each signals partition."""
        self._next = dict(starts)
        self._samples.clear()

    def consumed(self, partition: int, offset: int) -> None:
        if offset >= self._next.get(partition, 0):
            self._next[partition] = offset + 1

    def sample(self, committed: dict[int, int], ends: dict[int, int]) -> None:
        """The producer's commits per clock partition, then the signals end offsets read after them."""
        self._samples.append((committed, ends))

    def covered(self) -> dict[int, int] | None:
        """The newest commits whose signals have all been consumed (None: none new)."""
        out = None
        while self._samples and all(self._next.get(p, 0) >= end for p, end in self._samples[0][1].items()):
            out = self._samples.popleft()[0]
        return out
