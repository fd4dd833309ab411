"""Incremental SMA, RSI, MACD and Bollinger bands equal to TA-Lib bar by bar, O(1) per bar, with
state snapshots (talipp was measured and not used: see the README).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Self

State = dict[str, Any]


class Incremental:
    """What every indicator shares: `update(x)`, `replace_last(x)`, `reset()`, `initialized`, and
    its state as plain JSON-able data.

    Each update first saves the few scalars it is about to change (the `_u_*` attributes), so
    `replace_last` can undo it in O(1) and apply the corrected value instead: an Alpaca "updated
    bar" then leaves exactly the state that value would have left had it come first. The update
    methods use one statement per attribute on purpose: unpacking four-tuples is ~15% slower.
    """

    __slots__ = ()
    # Constructor arguments, in order, and the attributes that make up the state; both saved.
    _PARAMS: ClassVar[tuple[str, ...]]
    _STATE: ClassVar[tuple[str, ...]]

    _count: int  # inputs seen

    def update(self, value: float) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def _undo(self) -> None:
        raise NotImplementedError

    @property
    def initialized(self) -> bool:
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def replace_last(self, value: float) -> None:
        """Replace the most recent input with a corrected one."""
        if not self._count:
            raise ValueError(f"{type(self).__name__}.replace_last() before any update()")
        self._undo()
        self.update(value)

    def to_state(self) -> State:
        state: State = {"kind": type(self).__name__}
        for name in (*self._PARAMS, *self._STATE):
            value = getattr(self, name)
            if isinstance(value, Incremental):
                value = value.to_state()
            elif isinstance(value, list):
                value = list(value)
            state[name] = value
        return state

    @classmethod
    def from_state(cls, state: State) -> Self:
        if state.get("kind") != cls.__name__:
            raise ValueError(f"state is for {state.get('kind')!r}, not {cls.__name__!r}")
        restored = cls(*(state[name] for name in cls._PARAMS))
        for name in cls._STATE:
            fresh, value = getattr(restored, name), state[name]
            if isinstance(fresh, Incremental):
                value = type(fresh).from_state(value)
                if value.params != fresh.params:
                    raise ValueError(f"{cls.__name__} state: {name} has other parameters")
            elif isinstance(fresh, list):
                if len(value) != len(fresh):
                    raise ValueError(f"{cls.__name__} state: {name} has the wrong length")
                value = list(value)
            setattr(restored, name, value)
        return restored


class SMA(Incremental):
    """Simple moving average, with TA-Lib's running sum (same operations, same order, same bits).

    The carried sum holds the last period-1 inputs: TA-Lib adds the new value, divides, then drops
    the oldest one, and summing in another order would drift from it in the last bits.
    """

    _PARAMS = ("period",)
    _STATE = ("value", "_buf", "_pos", "_count", "_total", "_u_total")
    __slots__ = (*_PARAMS, *_STATE)

    period: int
    value: float | None
    _buf: list[float]  # ring buffer of the last `period` inputs; _pos is the next slot to write
    _pos: int
    _total: float

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"SMA period must be >= 1, got {period}")
        self.period = period
        self.reset()

    def reset(self) -> None:
        self.value = None
        self._buf = [0.0] * self.period
        self._pos = self._count = 0
        self._total = self._u_total = 0.0

    @property
    def initialized(self) -> bool:
        return self.value is not None

    def update(self, value: float) -> None:
        total = self._total
        self._u_total = total
        total += value
        buf = self._buf
        pos = self._pos
        buf[pos] = value
        pos += 1
        if pos == self.period:
            pos = 0
        count = self._count + 1
        self._pos = pos
        self._count = count
        if count >= self.period:
            self.value = total / self.period
            total -= buf[pos]  # the oldest input of this window: the next slot to be overwritten
        self._total = total

    def _undo(self) -> None:
        # The overwritten slot needs no restoring: update() writes it again before reading it.
        self._pos = (self._pos or self.period) - 1
        self._count -= 1
        self._total = self._u_total


class RSI(Incremental):
    """Wilder's RSI as TA-Lib computes it: seeded with the mean gain and loss of the first `period`
    changes, then smoothed; first value at bar `period` (0-based).

    A window with no change at all (gain + loss == 0) answers 0.0, as the TA-Lib build we test
    against does (later TA-Lib releases answer 50.0 there).
    """

    _PARAMS = ("period",)
    _STATE = ("value", "_count", "_last", "_gain", "_loss", "_u_last", "_u_gain", "_u_loss")
    __slots__ = (*_PARAMS, "_pm1", "_inv", *_STATE)

    period: int
    value: float | None
    _last: float  # the previous input
    _gain: float  # the sum of gains while seeding, then the smoothed average gain
    _loss: float

    def __init__(self, period: int = 14) -> None:
        if period < 2:
            raise ValueError(f"RSI period must be >= 2, got {period}")
        self.period = period
        self._pm1 = float(period - 1)
        self._inv = 1.0 / period  # TA-Lib multiplies by 1/period rather than dividing: other bits
        self.reset()

    def reset(self) -> None:
        self.value = None
        self._count = 0
        self._last = self._gain = self._loss = 0.0
        self._u_last = self._u_gain = self._u_loss = 0.0

    @property
    def initialized(self) -> bool:
        return self.value is not None

    def update(self, value: float) -> None:
        count = self._count
        gain = self._gain
        loss = self._loss
        self._u_last = last = self._last
        self._u_gain = gain
        self._u_loss = loss
        if count:
            change = value - last
            smoothing = count > self.period
            if smoothing:
                gain *= self._pm1
                loss *= self._pm1
            if change < 0.0:
                loss -= change
            else:
                gain += change
            if smoothing or count == self.period:
                loss *= self._inv
                gain *= self._inv
        self._gain = gain
        self._loss = loss
        self._last = value
        self._count = count + 1
        # Outputs last, from the state just stored: no path may skip a state update
        # (nautilus_trader #2673 pinned its RSI with an early return).
        if count >= self.period:
            total = gain + loss
            self.value = 100.0 * (gain / total) if total > 0.0 else 0.0

    def _undo(self) -> None:
        self._count -= 1
        self._last, self._gain, self._loss = self._u_last, self._u_gain, self._u_loss


class MACD(Incremental):
    """MACD line, signal and histogram as TA-Lib computes them; all three appear at bar
    slow + signal - 2 (0-based), 33 for (12, 26, 9). `value` is the MACD line.

    TA-Lib seeds each EMA with the mean of its first `period` inputs and ends the fast seed window
    on the same bar as the slow one, so the bars before slow - fast never reach the fast EMA.
    """

    _PARAMS = ("fast_period", "slow_period", "signal_period")
    _STATE = (
        *("value", "signal", "hist", "_count", "_fast", "_slow", "_sig"),
        *("_u_fast", "_u_slow", "_u_sig"),
    )
    __slots__ = (*_PARAMS, "_kf", "_ks", "_kg", *_STATE)

    fast_period: int
    slow_period: int
    signal_period: int
    value: float | None
    signal: float | None
    hist: float | None
    # Each is a running sum while its EMA is being seeded, then the EMA itself.
    _fast: float
    _slow: float
    _sig: float

    def __init__(self, fast_period: int = 12, slow_period: int = 26, signal_period: int = 9) -> None:
        if not 2 <= fast_period < slow_period or signal_period < 2:
            raise ValueError(
                "MACD needs 2 <= fast < slow and signal >= 2, "
                f"got {fast_period}/{slow_period}/{signal_period}"
            )
        self.fast_period = fast_period
        self.slow_period = slow_period
        self.signal_period = signal_period
        self._kf = 2.0 / (fast_period + 1)
        self._ks = 2.0 / (slow_period + 1)
        self._kg = 2.0 / (signal_period + 1)
        self.reset()

    def reset(self) -> None:
        self.value = self.signal = self.hist = None
        self._count = 0
        self._fast = self._slow = self._sig = 0.0
        self._u_fast = self._u_slow = self._u_sig = 0.0

    @property
    def initialized(self) -> bool:
        return self.signal is not None

    def update(self, value: float) -> None:
        n = self._count  # 0-based index of this bar
        fast = self._fast
        slow = self._slow
        sig = self._sig
        self._u_fast = fast
        self._u_slow = slow
        self._u_sig = sig
        slow_period = self.slow_period
        if n >= slow_period:
            fast = ((value - fast) * self._kf) + fast
            slow = ((value - slow) * self._ks) + slow
        else:
            slow += value
            if n >= slow_period - self.fast_period:
                fast += value
            if n == slow_period - 1:
                slow /= slow_period
                fast /= self.fast_period
        line = fast - slow
        j = n - slow_period + 1  # index of this bar on the MACD line (negative: no line yet)
        g = self.signal_period
        if j >= g:
            sig = ((line - sig) * self._kg) + sig
        elif j >= 0:
            sig += line
            if j == g - 1:
                sig /= g
        self._fast = fast
        self._slow = slow
        self._sig = sig
        self._count = n + 1
        if j >= g - 1:
            self.value = line
            self.signal = sig
            self.hist = line - sig

    def _undo(self) -> None:
        self._count -= 1
        self._fast, self._slow, self._sig = self._u_fast, self._u_slow, self._u_sig


class Bollinger(Incremental):
    """Bollinger bands as TA-Lib BBANDS(matype=SMA) computes them: the middle band is an `SMA`
    (the object in `.sma`), the width `nbdev` population standard deviations each side.

    The variance follows TA-Lib's cancellation-free form: running sums of deviations from a shift
    near the window mean, rebuilt by a two-pass sum over the window when they lose digits and at
    least every 32 * period bars (an O(period) step, so O(1) amortised).
    """

    _PARAMS = ("period", "nbdev")
    _STATE = (
        *("sma", "upper", "middle", "lower", "_shift", "_v1", "_v2", "_until_reseed"),
        *("_u_shift", "_u_v1", "_u_v2", "_u_until_reseed"),
    )
    __slots__ = (*_PARAMS, "_inv", *_STATE)

    period: int
    nbdev: float
    sma: SMA  # the middle band; its ring buffer is also the window the variance needs
    upper: float | None
    middle: float | None
    lower: float | None
    _shift: float
    _v1: float  # sum of (x - shift) over the last period-1 inputs
    _v2: float  # sum of (x - shift)**2 over the same
    _until_reseed: int

    def __init__(self, period: int = 20, nbdev: float = 2.0) -> None:
        if period < 2:
            raise ValueError(f"Bollinger period must be >= 2, got {period}")
        self.period = period
        self.nbdev = float(nbdev)
        self._inv = 1.0 / period
        self.sma = SMA(period)
        self.reset()

    def reset(self) -> None:
        self.sma.reset()
        self.upper = self.middle = self.lower = None
        self._shift = self._v1 = self._v2 = 0.0
        self._until_reseed = 32 * self.period
        self._u_shift = self._u_v1 = self._u_v2 = 0.0
        self._u_until_reseed = self._until_reseed

    @property
    def _count(self) -> int:  # type: ignore[override]
        return self.sma._count

    @property
    def value(self) -> float | None:
        return self.middle

    @property
    def initialized(self) -> bool:
        return self.middle is not None

    def update(self, value: float) -> None:
        shift = self._shift
        v1 = self._v1
        v2 = self._v2
        until = self._until_reseed
        self._u_shift = shift
        self._u_v1 = v1
        self._u_v2 = v2
        self._u_until_reseed = until
        sma = self.sma
        sma.update(value)
        count = sma._count
        if count == 1:
            shift = value  # TA-Lib anchors the first shift on the first input
        t = value - shift
        v1 += t
        v2 += t * t
        variance = 0.0
        if count >= self.period:
            inv = self._inv
            m1 = v1 * inv
            variance = v2 * inv - m1 * m1
            t = sma._buf[sma._pos] - shift  # drop the oldest input, as the SMA just did
            v1 -= t
            t *= t
            v2 -= t
            until -= 1
            # Rebuild when the subtraction has lost digits, when an outlier just left (its square
            # buried the small terms below its ulp) or on schedule, as TA-Lib's var.c does.
            if variance < 1e-6 * (v2 * inv) or t > 1e6 * v2 or until <= 0:
                shift, v1, v2, variance = self._reseed()
                until = 32 * self.period
        self._shift = shift
        self._v1 = v1
        self._v2 = v2
        self._until_reseed = until
        middle = sma.value
        if middle is not None:
            dev = (math.sqrt(variance) if variance != 0.0 else 0.0) * self.nbdev
            self.middle = middle
            self.upper = middle + dev
            self.lower = middle - dev

    def _reseed(self) -> tuple[float, float, float, float]:
        """Re-anchor the shift on the window mean and rebuild the sums (TA-Lib var.c)."""
        buf, pos, inv = self.sma._buf, self.sma._pos, self._inv
        window = buf[pos:] + buf[:pos]  # oldest first: the order TA-Lib sums in
        total = 0.0
        for x in window:  # not sum(): from Python 3.12 it compensates rounding, TA-Lib does not
            total += x
        shift = total * inv
        v1 = v2 = 0.0
        for x in window:
            t = x - shift
            v1 += t
            v2 += t * t
        m1 = v1 * inv
        variance = v2 * inv - m1 * m1
        if variance < 1e-12 * (v2 * inv):
            variance = 0.0  # a spread below the rounding of the mean itself: the honest answer
        t = window[0] - shift
        return shift, v1 - t, v2 - t * t, variance

    def _undo(self) -> None:
        self.sma._undo()
        self._shift, self._v1, self._v2 = self._u_shift, self._u_v1, self._u_v2
        self._until_reseed = self._u_until_reseed
