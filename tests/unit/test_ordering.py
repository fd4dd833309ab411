"""MinuteReleaser: canonical order out of interleaved partitions, minutes let go by the watermarks
(closures) once what they cover is consumed, late records, quiet records, cold starts."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.records import BrokerAccount
from trading.ordering import FEATURES_INPUT, SIGNALS_INPUT, Closed, MinuteReleaser, Step, canonical_key

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@dataclass(frozen=True)
class F:  # a features record
    symbol: str
    ts: datetime
    revision: int = 0


@dataclass(frozen=True)
class R:  # a recommendation
    symbol: str
    ts: datetime
    action: str


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_canonical_key_puts_bars_before_signals_then_symbol() -> None:
    items = [R("MSFT", T0, "BUY"), F("MSFT", T0), R("AAPL", T0, "SELL"), F("AAPL", T0, 1), F("AAPL", T0)]
    got = sorted(items, key=canonical_key)
    assert got == [
        F("AAPL", T0),
        F("AAPL", T0, 1),
        F("MSFT", T0),
        R("AAPL", T0, "SELL"),
        R("MSFT", T0, "BUY"),
    ]


def M(n: int) -> datetime:  # noqa: N802 - a minute of the session
    return T0 + timedelta(minutes=n)


def AT(n: float) -> datetime:  # noqa: N802 - the wall time a closure recorded
    return T0 + timedelta(hours=1, seconds=n)


class Feed:
    """Records of a few partitions with their offsets, as the dispatch agent consumes them."""

    def __init__(self, rel: MinuteReleaser) -> None:
        self.rel = rel
        self.next: dict[tuple[str, int], int] = {}

    def add(self, kind: str, part: int, rec: object, item: object | None = None) -> int:
        off = self.next.get((kind, part), 0)
        self.next[(kind, part)] = off + 1
        self.rel.add(rec, rec if item is None else item, kind=kind, partition=part, offset=off)
        return off

    def close(self, part: int, minute: int, at: float) -> None:
        self.rel.close(Closed(part, M(minute), self.next.get((SIGNALS_INPUT, part), 0),
                              self.next.get((FEATURES_INPUT, part), 0), AT(at)))


def items(steps: list[Step]) -> list:
    return [it for s in steps for it in s.items]


def test_a_minute_goes_out_once_every_partition_closed_it_at_the_latest_closure_time() -> None:
    rel = MinuteReleaser(2)
    feed = Feed(rel)
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(0)))
    feed.add(SIGNALS_INPUT, 0, R("AAPL", M(0), "BUY"))
    feed.add(FEATURES_INPUT, 1, F("MSFT", M(0)))
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(1)))  # the next minute: held
    feed.close(0, 0, at=1.0)
    assert rel.release() == []  # partition 1 has not closed 15:00
    feed.close(1, 0, at=2.5)
    steps = rel.release()
    assert [(s.minute, s.at) for s in steps] == [(M(0), AT(2.5))]
    assert steps[0].items == [F("AAPL", M(0)), F("MSFT", M(0)), R("AAPL", M(0), "BUY")]
    assert len(rel) == 1 and rel.late == 0


def test_a_closure_waits_until_its_offsets_are_consumed() -> None:
    """The signals closure arrives before the signals it covers (another topic, another pace)."""
    rel = MinuteReleaser(1)
    rel.add(F("AAPL", M(0)), "bar", kind=FEATURES_INPUT, partition=0, offset=0)
    rel.close(Closed(0, M(0), upto=1, input_upto=1, at=AT(1)))  # covers signals offset 0: not seen yet
    assert rel.release() == []
    rel.add(R("AAPL", M(0), "BUY"), "signal", kind=SIGNALS_INPUT, partition=0, offset=0)
    assert items(rel.release()) == ["bar", "signal"]


def test_records_start_where_the_consumer_starts() -> None:
    """A restart at offset 5: what the closure covers below it was decided before."""
    rel = MinuteReleaser(1)
    rel.expect({FEATURES_INPUT: {0: 5}, SIGNALS_INPUT: {0: 3}})
    rel.close(Closed(0, M(0), upto=3, input_upto=5, at=AT(1)))
    rel.add(F("AAPL", M(1)), "next bar", kind=FEATURES_INPUT, partition=0, offset=5)
    assert [s.minute for s in rel.release()] == [M(0)]
    assert len(rel) == 1


def test_any_interleaving_gives_the_same_steps() -> None:
    """Partitions and topics consumed at random paces, closures among them: same steps, same times."""
    per_topic: dict[tuple[str, int], list] = {}
    expected: list = []
    closures: dict[int, list] = {0: [], 1: [], 2: []}
    offsets: dict[tuple[str, int], int] = {}
    for m in range(10):
        for sym, part in (("AAPL", 0), ("MSFT", 1), ("NVDA", 1), ("TSLA", 2)):
            recs = [(FEATURES_INPUT, F(sym, M(m)))]
            if (m + len(sym)) % 3 == 0:
                recs.append((SIGNALS_INPUT, R(sym, M(m), "BUY")))
            for kind, rec in recs:
                off = offsets.get((kind, part), 0)
                offsets[(kind, part)] = off + 1
                per_topic.setdefault((kind, part), []).append((off, rec))
                expected.append(rec)
        for part in closures:
            closures[part].append(Closed(part, M(m), offsets.get((SIGNALS_INPUT, part), 0),
                                         offsets.get((FEATURES_INPUT, part), 0), AT(m + part / 10)))
    runs = set()
    for seed in range(8):
        rng = random.Random(seed)
        queues = {k: list(v) for k, v in per_topic.items()}
        queues.update({("clock", p): list(c) for p, c in closures.items()})
        rel = MinuteReleaser(3)
        out: list = []
        while any(queues.values()):
            key = rng.choice([k for k, q in queues.items() if q])
            head = queues[key].pop(0)
            if key[0] == "clock":
                rel.close(head)
            else:
                rel.add(head[1], head[1], kind=key[0], partition=key[1], offset=head[0])
            out += [(s.minute, s.at, tuple(s.items)) for s in rel.release()]
        runs.add(tuple(out))
        assert rel.late == 0 and len(rel) == 0
    assert len(runs) == 1
    steps = next(iter(runs))
    assert [it for _m, _at, its in steps for it in its] == sorted(expected, key=canonical_key)
    assert [(m, at) for m, at, _ in steps] == [(M(m), AT(m + 0.2)) for m in range(10)]


def test_a_late_record_goes_out_at_the_next_step_that_covers_it() -> None:
    rel = MinuteReleaser(1)
    feed = Feed(rel)
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(0)), "aapl 15:00")
    feed.close(0, 0, at=1.0)
    assert items(rel.release()) == ["aapl 15:00"]
    feed.add(SIGNALS_INPUT, 0, R("MSFT", M(0), "BUY"), "msft signal 15:00 (late)")
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(1)), "aapl 15:01")
    assert rel.release() == []  # 15:00 is closed; nothing closes 15:01 yet
    feed.close(0, 1, at=2.0)
    steps = rel.release()
    assert [(s.minute, s.at, s.items) for s in steps] == [(M(1), AT(2.0), ["msft signal 15:00 (late)",
                                                                          "aapl 15:01"])]
    assert rel.late == 1


def test_a_record_beyond_the_closure_offsets_waits_even_if_consumed_already() -> None:
    """The record was consumed before the step was taken, but the closure does not cover it: it
    goes out at a later step, as a replay of the topics would decide it."""
    rel = MinuteReleaser(1)
    rel.add(F("AAPL", M(0)), "on time", kind=FEATURES_INPUT, partition=0, offset=0)
    rel.add(F("MSFT", M(0)), "after the closure", kind=FEATURES_INPUT, partition=0, offset=1)
    rel.close(Closed(0, M(0), upto=0, input_upto=1, at=AT(1)))
    assert items(rel.release()) == ["on time"]
    rel.close(Closed(0, M(1), upto=0, input_upto=2, at=AT(2)))
    assert items(rel.release()) == ["after the closure"] and rel.late == 1


def test_a_repeated_or_older_closure_takes_no_step() -> None:
    rel = MinuteReleaser(1)
    feed = Feed(rel)
    feed.close(0, 2, at=1.0)
    assert [s.minute for s in rel.release()] == [M(2)]
    feed.close(0, 2, at=5.0)
    feed.close(0, 1, at=6.0)
    assert rel.release() == []


def test_a_closure_jumping_minutes_decides_them_in_one_step() -> None:
    rel = MinuteReleaser(1)
    feed = Feed(rel)
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(1)), "15:01")
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(0)), "15:00")  # revised order: canonical order fixes it
    feed.close(0, 3, at=9.0)
    steps = rel.release()
    assert [(s.minute, s.at, s.items) for s in steps] == [(M(3), AT(9.0), ["15:00", "15:01"])]


def Snap(account: str, as_of: datetime) -> BrokerAccount:  # noqa: N802 - reads like the records above
    return BrokerAccount(account, as_of, "ACTIVE", "USD", 1.0, 1.0, None, 1.0, None, None, None, None, False)


def test_broker_records_go_out_in_their_minute() -> None:
    rel = MinuteReleaser(1)
    feed = Feed(rel)
    # a replay: the whole session's snapshots arrive before its bars
    rel.add(Snap("a", M(0) + timedelta(seconds=20)), "snap@15:00")
    rel.add(Snap("a", M(3) + timedelta(seconds=20)), "snap@15:03")
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(0)), "bar@15:00")
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(1)), "bar@15:01")
    feed.close(0, 1, at=1.0)
    assert items(rel.release()) == ["snap@15:00", "bar@15:00", "bar@15:01"]
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(4)), "bar@15:04")
    feed.close(0, 4, at=2.0)
    assert items(rel.release()) == ["snap@15:03", "bar@15:04"]


def test_broker_records_go_out_after_max_hold_when_no_closure_comes() -> None:
    clock = Clock()
    rel = MinuteReleaser(1, max_hold_s=30.0, clock=clock)
    rel.add(Snap("a", M(0) + timedelta(seconds=20)), "snap")  # the features agent is down
    rel.add(F("AAPL", M(0)), "bar", kind=FEATURES_INPUT, partition=0, offset=0)
    clock.t = 29.0
    assert rel.release() == []
    clock.t = 30.5
    steps = rel.release()
    assert [(s.minute, s.at, s.items) for s in steps] == [(None, None, ["snap"])]
    assert len(rel) == 1  # a bar waits for its closure


def test_clear_forgets_everything() -> None:
    rel = MinuteReleaser(1)
    feed = Feed(rel)
    feed.add(FEATURES_INPUT, 0, F("AAPL", M(0)), "bar")
    feed.close(0, 0, at=1.0)
    assert rel.clear() == ["bar"] and len(rel) == 0
    assert rel.release() == [] and rel.released is None
