"""EventTimeBuffer: canonical order out of interleaved partitions, watermark, grace, idleness."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.records import BrokerAccount
from trading.ordering import EventTimeBuffer, SignalProgress, canonical_key

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


def test_minute_released_after_every_partition_moved_on_and_grace() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=1.0, idle_s=5.0, clock=clock)
    buf.add(F("AAPL", T0), "a0", clock_partition=0)
    buf.add(F("MSFT", T0), "m0", clock_partition=1)
    buf.add(F("AAPL", T0 + timedelta(minutes=1)), "a1", clock_partition=0)
    assert buf.release() == []  # partition 1 has not moved past T0
    buf.add(F("MSFT", T0 + timedelta(minutes=1)), "m1", clock_partition=1)
    assert buf.release() == []  # complete, but not for the grace period yet
    buf.add(R("MSFT", T0, "BUY"), "sig-m0")  # a signal of the complete minute, within grace
    clock.t = 1.5
    assert buf.release() == ["a0", "m0", "sig-m0"]
    assert len(buf) == 2


def test_quiet_releases_everything() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=1.0, idle_s=2.0, clock=clock)
    buf.add(F("AAPL", T0), "a0", clock_partition=0)
    buf.add(R("AAPL", T0, "BUY"), "s0")
    clock.t = 1.0
    assert buf.release() == []
    clock.t = 2.5
    assert buf.release() == ["a0", "s0"]


def test_idle_partition_does_not_hold_the_watermark() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock)
    buf.add(F("META", T0), "meta0", clock_partition=3)  # then partition 3 falls silent
    for i in range(1, 6):
        clock.t = float(i)
        buf.add(F("AAPL", T0 + timedelta(minutes=i)), f"a{i}", clock_partition=0)
    clock.t = 5.6
    assert buf.release() == ["meta0", "a1", "a2", "a3", "a4"]


def test_any_interleaving_gives_the_same_order() -> None:
    """Partitions consumed at random paces; a signal arrives soon after its bar (within grace)."""
    queues_spec: dict[int, list] = {0: [], 1: [], 2: []}
    all_events = []
    for m in range(10):
        for sym, part in (("AAPL", 0), ("MSFT", 1), ("NVDA", 1), ("TSLA", 2)):
            bar = F(sym, T0 + timedelta(minutes=m))
            queues_spec[part].append(bar)
            all_events.append(bar)
            if (m + len(sym)) % 3 == 0:
                sig = R(sym, T0 + timedelta(minutes=m), "BUY")
                queues_spec[part].append(sig)
                all_events.append(sig)
    orders = set()
    for seed in range(8):
        rng = random.Random(seed)
        queues = {k: list(v) for k, v in queues_spec.items()}
        clock = Clock()
        buf = EventTimeBuffer(grace_s=0.5, idle_s=100.0, clock=clock)
        out: list = []
        while any(queues.values()):
            part = rng.choice([k for k, q in queues.items() if q])
            rec = queues[part].pop(0)
            buf.add(rec, rec, clock_partition=None if isinstance(rec, R) else part)
            clock.t += 0.01
            out += buf.release()
        clock.t += 1000
        out += buf.release()
        orders.add(tuple(out))
        assert buf.late == 0
    assert len(orders) == 1
    assert list(next(iter(orders))) == sorted(all_events, key=canonical_key)


def test_gated_minute_waits_for_the_signal_producer_to_commit_past_it() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=60.0, clock=clock, gate_on_progress=True)
    buf.add(F("AAPL", T0), "a0", clock_partition=0, offset=10)
    buf.add(F("AAPL", T0 + timedelta(minutes=1)), "a1", clock_partition=0, offset=11)
    clock.t = 5.0
    assert buf.release() == []  # the signal agent has not committed past offset 10
    buf.progress({0: 11})  # past the T0 bar, not the T0+1 one
    clock.t = 5.2
    assert buf.release() == []  # grace
    buf.add(R("AAPL", T0, "BUY"), "s0")  # its signal, published before that commit
    clock.t = 5.8
    assert buf.release() == ["a0", "s0"]
    buf.progress({0: 12})
    buf.add(F("AAPL", T0 + timedelta(minutes=2)), "a2", clock_partition=0, offset=12)
    buf.progress({0: 13})
    clock.t = 7.0
    assert buf.release() == ["a1"]  # T0+2 waits for a later bar, as without gating


def test_quiet_gated_buffer_waits_for_the_producer_then_gives_up_after_max_hold() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock, gate_on_progress=True, max_hold_s=30.0)
    buf.add(F("AAPL", T0), "a0", clock_partition=0, offset=1)
    buf.add(F("AAPL", T0 + timedelta(minutes=1)), "a1", clock_partition=0, offset=2)
    clock.t = 5.0  # quiet, and the signal agent (restarting) has committed nothing
    assert buf.release() == []
    buf.progress({0: 2})  # it comes back and commits past the first bar
    assert buf.release() == ["a0"]
    clock.t = 40.0  # past max_hold_s: a dead producer must not hold exits forever
    assert buf.release() == ["a1"]


def test_a_partition_not_heard_from_yet_holds_everything_until_idle() -> None:
    """Cold start: partition 0 delivers minutes ahead while partition 1 has not delivered yet."""
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock)
    buf.expect({0: 0, 1: 0})
    for i in range(5):
        buf.add(F("AAPL", T0 + timedelta(minutes=i)), f"a{i}", clock_partition=0, offset=i)
    clock.t = 1.0
    assert buf.release() == []  # without expect, a0..a3 would go before MSFT's T0 bar is seen
    buf.add(F("MSFT", T0), "m0", clock_partition=1, offset=0)
    buf.add(F("MSFT", T0 + timedelta(minutes=1)), "m1", clock_partition=1, offset=1)
    clock.t = 1.6
    buf.add(F("MSFT", T0 + timedelta(minutes=2)), "m2", clock_partition=1, offset=2)
    clock.t = 2.2
    assert buf.release() == ["a0", "m0", "a1", "m1"]


def test_an_empty_expected_partition_stops_holding_after_idle() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock)
    buf.expect({0: 0, 5: 0})  # nothing is ever published to partition 5
    buf.add(F("AAPL", T0), "a0", clock_partition=0, offset=0)
    buf.add(F("AAPL", T0 + timedelta(minutes=1)), "a1", clock_partition=0, offset=1)
    clock.t = 1.0
    buf.add(F("AAPL", T0 + timedelta(minutes=2)), "a2", clock_partition=0, offset=2)
    assert buf.release() == []
    clock.t = 2.1
    buf.add(F("AAPL", T0 + timedelta(minutes=3)), "a3", clock_partition=0, offset=3)
    clock.t = 2.7
    assert buf.release() == ["a0", "a1", "a2"]


def test_an_unheard_partition_known_to_hold_records_is_waited_for_past_idle() -> None:
    """The signal producer has committed past offset 40 of partition 1: those bars exist, and this
    consumer (starting at 0) has not seen them, so silence is not emptiness."""
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock, max_hold_s=30.0, quiet_waits_for_bars=True)
    buf.expect({0: 0, 1: 0})
    buf.known({1: 40})
    for i in range(3):
        buf.add(F("AAPL", T0 + timedelta(minutes=i)), f"a{i}", clock_partition=0, offset=i)
    clock.t = 10.0
    assert buf.release() == []  # quiet, but partition 1 is behind: nothing new goes
    buf.add(F("MSFT", T0), "m0", clock_partition=1, offset=0)
    buf.add(F("MSFT", T0 + timedelta(minutes=1)), "m1", clock_partition=1, offset=1)
    clock.t = 13.0  # quiet again: partition 1 still behind (next offset 2 < 40), bounded by its latest
    assert buf.release() == ["a0", "m0"]
    clock.t = 50.0  # past max_hold_s: everything
    assert buf.release() == ["a1", "m1", "a2"]


def test_a_quiet_partition_is_not_dropped_while_records_are_known_beyond_it() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock)
    buf.expect({0: 0, 1: 0})
    buf.add(F("MSFT", T0), "m0", clock_partition=1, offset=0)
    buf.known({1: 10})  # partition 1 has more, not delivered yet (a fetch behind the others)
    for i in range(1, 6):
        clock.t = float(i)
        buf.add(F("AAPL", T0 + timedelta(minutes=i)), f"a{i}", clock_partition=0, offset=i)
    clock.t = 5.6
    assert buf.release() == []  # MSFT's partition holds the watermark at T0
    buf.add(F("MSFT", T0 + timedelta(minutes=3)), "m3", clock_partition=1, offset=1)
    clock.t = 6.2
    assert buf.release() == ["m0", "a1", "a2"]


def test_clear_forgets_expectations() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock)
    buf.expect({0: 0, 1: 0})
    buf.known({1: 5})
    buf.add(F("AAPL", T0), "a0", clock_partition=0, offset=0)
    assert buf.clear() == ["a0"]
    buf.add(F("AAPL", T0), "a0", clock_partition=0, offset=0)
    clock.t = 3.0
    assert buf.release() == ["a0"]


def test_signal_commits_are_trusted_only_once_their_signals_are_consumed() -> None:
    """The signal agent committed past bar offsets 10/7 when signals partition 2 ended at 5: until
    this consumer has read signals partition 2 up to 5, those commits are not handed out."""
    sp = SignalProgress()
    sp.reset({0: 0, 2: 3})  # where this consumer starts each signals partition
    sp.sample({0: 10, 1: 7}, {0: 0, 2: 5})
    assert sp.covered() is None
    sp.consumed(2, 3)
    assert sp.covered() is None  # offset 4 is still to come
    sp.sample({0: 12, 1: 9}, {0: 1, 2: 6})
    sp.consumed(2, 4)
    assert sp.covered() == {0: 10, 1: 7}  # the first sample; the second needs 0 up to 1, 2 up to 6
    assert sp.covered() is None
    sp.consumed(0, 0)
    sp.consumed(2, 5)
    assert sp.covered() == {0: 12, 1: 9}


def test_signal_commits_on_empty_signals_partitions_are_covered_at_once() -> None:
    sp = SignalProgress()
    sp.reset({})
    sp.sample({0: 4}, {0: 0, 1: 0})
    assert sp.covered() == {0: 4}


def test_signal_commits_reset_forgets_samples() -> None:
    sp = SignalProgress()
    sp.reset({0: 0})
    sp.sample({0: 4}, {0: 2})
    sp.reset({0: 2})  # reassigned: this consumer now starts at 2, the old sample is dropped
    assert sp.covered() is None
    sp.sample({0: 5}, {0: 2})
    assert sp.covered() == {0: 5}


def Snap(account: str, as_of: datetime) -> BrokerAccount:  # noqa: N802 - reads like the records above
    return BrokerAccount(account, as_of, "ACTIVE", "USD", 1.0, 1.0, None, 1.0, None, None, None, None, False)


def test_broker_records_wait_for_the_bars_and_go_out_in_their_minute() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock, max_hold_s=30.0, quiet_waits_for_bars=True)
    buf.expect({0: 0})
    # a replay: the whole session's snapshots arrive before its bars
    early, late = Snap("a", T0 + timedelta(seconds=20)), Snap("a", T0 + timedelta(minutes=3, seconds=20))
    buf.add(early, "snap@15:00", quiet=True)
    buf.add(late, "snap@15:03", quiet=True)
    clock.t = 10.0
    assert buf.release() == []  # no bar yet: nothing says where the session is
    buf.add(F("AAPL", T0), "bar@15:00", clock_partition=0, offset=0)
    buf.add(F("AAPL", T0 + timedelta(minutes=1)), "bar@15:01", clock_partition=0, offset=1)
    clock.t = 13.0  # quiet since the bars: what they cover goes out, in order
    assert buf.release() == ["snap@15:00", "bar@15:00", "bar@15:01"]
    clock.t = 20.0
    assert buf.release() == []  # 15:03 is beyond the latest bar: it waits
    buf.add(F("AAPL", T0 + timedelta(minutes=4)), "bar@15:04", clock_partition=0, offset=2)
    clock.t = 23.0
    assert buf.release() == ["snap@15:03", "bar@15:04"]


def test_broker_records_go_out_after_max_hold_when_no_bar_comes() -> None:
    clock = Clock()
    buf = EventTimeBuffer(grace_s=0.5, idle_s=2.0, clock=clock, max_hold_s=30.0, quiet_waits_for_bars=True)
    buf.add(Snap("a", T0 + timedelta(seconds=20)), "snap", quiet=True)  # a closed market: snapshots only
    clock.t = 29.0
    assert buf.release() == []
    clock.t = 30.5
    assert buf.release() == ["snap"]
