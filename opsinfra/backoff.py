"""Reconnect delays as pure functions of the attempt number and an injected random draw.

Alpaca allows one market-data connection per account and reaps a half-dead socket only after
about 90 s, so reconnecting fast after a drop buys a 406; a tight loop is never an option.
"""

from __future__ import annotations

from collections.abc import Callable


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


def _unit(x: float) -> float:
    return min(max(x, 0.0), 1.0)
