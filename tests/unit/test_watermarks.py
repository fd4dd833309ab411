"""MinuteCloser (features agent) and ClosureForwarder (signal agent): when a minute is closed in a
partition, and when a closure may be forwarded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from trading.watermarks import (
    COMPLETE,
    DEADLINE,
    IDLE,
    NEXT_MINUTE,
    CloserConfig,
    Closure,
    ClosureForwarder,
    MinuteCloser,
)

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
END0 = T0.timestamp() + 60.0  # the wall time 15:00 ends


def M(n: int) -> datetime:  # noqa: N802
    return T0 + timedelta(minutes=n)


UNIVERSE = {0: {"AAPL", "MSFT"}, 1: {"TSLA"}, 2: set()}


def wall(**kw: float) -> MinuteCloser:
    closer = MinuteCloser(UNIVERSE, CloserConfig(clock="wall", allowance_s=5.0, **kw))
    closer.assign([0, 1, 2])
    return closer


def test_a_partition_closes_a_minute_once_every_universe_symbol_of_it_has_its_bar() -> None:
    closer = wall()
    assert closer.on_bar(0, "AAPL", M(0), END0 + 1) == []
    both = [Closure(0, M(0), COMPLETE), Closure(2, M(0), COMPLETE)]  # 2: no universe symbol, no bar
    assert closer.on_bar(0, "MSFT", M(0), END0 + 1) == both
    assert closer.on_bar(1, "TSLA", M(0), END0 + 1) == [Closure(1, M(0), COMPLETE)]
    assert closer.on_bar(0, "AAPL", M(0), END0 + 2) == [] and closer.late == 1  # closed: late


def test_a_symbol_without_trades_delays_its_minute_only_up_to_the_deadline() -> None:
    closer = wall()
    closer.on_bar(0, "AAPL", M(0), END0 + 1)  # MSFT had no trades in 15:00
    closer.on_bar(1, "TSLA", M(0), END0 + 1)
    assert closer.on_tick(END0 + 5.9) == []  # first bar at +1: deadline at +6
    assert closer.on_tick(END0 + 6.0) == [Closure(0, M(0), DEADLINE)]
    assert closer.on_tick(END0 + 7.0) == []


def test_the_deadline_counts_from_the_first_bar_when_bars_come_after_their_minute() -> None:
    """Bars of an old minute (a replay on the wall clock): the allowance runs from its first bar."""
    closer = wall()
    closer.on_bar(0, "AAPL", M(0), END0 + 600)
    assert closer.on_tick(END0 + 604) == []
    got = sorted(closer.on_tick(END0 + 605), key=lambda c: c.partition)
    assert got == [Closure(0, M(0), DEADLINE), Closure(1, M(0), DEADLINE), Closure(2, M(0), DEADLINE)]


def test_a_bar_of_the_next_minute_closes_the_previous_one_in_its_partition() -> None:
    closer = MinuteCloser(UNIVERSE, CloserConfig(clock="bar"))
    closer.assign([0, 1, 2])
    closer.on_bar(0, "AAPL", M(0), 0.0)
    assert closer.on_bar(0, "AAPL", M(1), 0.1) == [Closure(0, M(0), NEXT_MINUTE),
                                                   Closure(2, M(0), NEXT_MINUTE)]
    assert closer.on_tick(1.0) == []  # bar clock: no deadline


def test_idle_closes_the_latest_minute_on_the_bar_clock() -> None:
    closer = MinuteCloser(UNIVERSE, CloserConfig(clock="bar", idle_s=3.0))
    closer.assign([0, 1, 2])
    closer.on_bar(0, "AAPL", M(4), 10.0)
    assert closer.on_tick(12.9) == []
    got = sorted(closer.on_tick(13.0), key=lambda c: c.partition)
    assert got == [Closure(0, M(4), IDLE), Closure(1, M(4), IDLE), Closure(2, M(4), IDLE)]
    assert closer.on_tick(20.0) == []


def test_a_quiet_market_closes_the_wall_minute_after_the_heartbeat() -> None:
    closer = wall(heartbeat_after_s=60.0)
    now = END0 + 65.0  # 15:02:05: 15:01 ended 5 s ago; no bar since the start a minute ago
    assert closer.on_tick(now - 60) == []
    assert closer.on_tick(now - 1) == []
    assert [c.minute for c in closer.on_tick(now)] == [M(1)] * 3


def test_forwarder_waits_for_the_inputs_below_the_closure() -> None:
    fw = ClosureForwarder()
    fw.reset({0: 10})
    fw.add(0, 12, "c1")
    fw.add(0, 9, "c0 out of order")  # forwarded in arrival order: behind c1
    fw.add(1, 0, "empty partition")
    assert fw.ready() == ["empty partition"]
    fw.consumed(0, 10)
    assert fw.ready() == []
    fw.consumed(0, 11)
    assert fw.ready() == ["c1", "c0 out of order"] and len(fw) == 0
