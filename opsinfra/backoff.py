"""Retry and reconnect delays, the one home of backoff: pure functions of the attempt number and
an injected random draw, and `Backoff`, a retry loop's attempt counter around them.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def backoff_delay(attempt: int, *, floor: float, cap: float, rand: Callable[[], float]) -> float:
    """Capped exponential backoff with jitter above a floor.

    Attempt 1 waits in [floor, 2*floor], attempt n in [floor, min(cap, floor * 2**n)]; the draw
    `rand()` (in [0, 1)) spreads reconnecting clients apart. Never below `floor`, never above `cap`.
    """
    if floor <= 0 or cap < floor:
        raise ValueError(f"need 0 < floor <= cap, got floor={floor} cap={cap}")
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    ceiling = min(cap, floor * 2.0 ** min(attempt, 60))
    return min(cap, floor + (ceiling - floor) * _unit(rand()))


def connection_limit_delay(*, wait: float, jitter: float, rand: Callable[[], float]) -> float:
    """The wait after Alpaca's 406 (connection limit): at least `wait`, plus up to `jitter`.

    The server keeps the old socket until its ~90 s timeout, so retrying sooner only extends
    the outage; the jitter keeps two restarting processes from colliding again.
    """
    if wait <= 0 or jitter < 0:
        raise ValueError(f"need wait > 0 and jitter >= 0, got wait={wait} jitter={jitter}")
    return wait + jitter * _unit(rand())


@dataclass
class Backoff:
    """The delays of one retry loop: `next()` is attempt 1, 2, ... of `backoff_delay`.

    The jitter spreads processes that failed together (a broker or database outage) apart, so
    they do not all retry in the same instant.
    """

    floor: float
    cap: float
    rand: Callable[[], float] = random.random
    attempt: int = 0

    def next(self) -> float:
        self.attempt += 1
        return backoff_delay(self.attempt, floor=self.floor, cap=self.cap, rand=self.rand)


def _unit(x: float) -> float:
    return min(max(x, 0.0), 1.0)
