"""Reconnect delays: floor, cap, exponential ceiling, jitter from the injected draw."""

from __future__ import annotations

import itertools

import pytest

from opsinfra.backoff import Backoff, backoff_delay, connection_limit_delay


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999, 1.0])
@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20, 1000])
def test_backoff_stays_between_floor_and_cap(attempt: int, draw: float) -> None:
    delay = backoff_delay(attempt, floor=1.0, cap=60.0, rand=lambda: draw)
    assert 1.0 <= delay <= 60.0


def test_backoff_ceiling_doubles_until_the_cap() -> None:
    top = [backoff_delay(a, floor=1.0, cap=60.0, rand=lambda: 1.0) for a in range(1, 9)]
    assert top == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_lowest_draw_is_the_floor_never_zero() -> None:
    assert [backoff_delay(a, floor=0.5, cap=30.0, rand=lambda: 0.0) for a in (1, 4, 50)] == [0.5] * 3


def test_backoff_jitter_comes_from_the_draw() -> None:
    draws = itertools.cycle([0.1, 0.9])
    a = backoff_delay(4, floor=1.0, cap=60.0, rand=lambda: next(draws))
    b = backoff_delay(4, floor=1.0, cap=60.0, rand=lambda: next(draws))
    assert a == pytest.approx(1.0 + 15.0 * 0.1)
    assert b == pytest.approx(1.0 + 15.0 * 0.9)


def test_backoff_clamps_a_draw_outside_unit_interval() -> None:
    assert backoff_delay(3, floor=1.0, cap=60.0, rand=lambda: 7.0) == 8.0
    assert backoff_delay(3, floor=1.0, cap=60.0, rand=lambda: -1.0) == 1.0


@pytest.mark.parametrize(("attempt", "floor", "cap"), [(0, 1.0, 2.0), (1, 0.0, 2.0), (1, 3.0, 2.0)])
def test_backoff_rejects_nonsense(attempt: int, floor: float, cap: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, floor=floor, cap=cap, rand=lambda: 0.5)


@pytest.mark.parametrize("draw", [0.0, 0.3, 1.0])
def test_connection_limit_wait_is_at_least_the_floor(draw: float) -> None:
    delay = connection_limit_delay(wait=90.0, jitter=15.0, rand=lambda: draw)
    assert delay == pytest.approx(90.0 + 15.0 * draw)
    assert delay >= 90.0


def test_connection_limit_wait_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        connection_limit_delay(wait=0.0, jitter=1.0, rand=lambda: 0.5)
    with pytest.raises(ValueError):
        connection_limit_delay(wait=1.0, jitter=-1.0, rand=lambda: 0.5)


def test_a_retry_loop_counts_its_attempts() -> None:
    loop = Backoff(floor=0.5, cap=60.0, rand=lambda: 1.0)
    assert [loop.next() for _ in range(9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert loop.attempt == 9
    assert Backoff(floor=0.125, cap=10.0, rand=lambda: 0.0).next() == 0.125
