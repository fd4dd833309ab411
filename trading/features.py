"""Per-symbol feature engine: one bar in, one features.1m record out, the same object live (the
features agent), in backtests and in tests.
"""

from __future__ import annotations

import math
from dataclasses import fields, make_dataclass
from datetime import datetime
from typing import Any, Self

from schemas.records import Features
from trading.indicators import MACD, RSI, SMA, Bollinger, State

#: volume_ratio above this is a surge (architecture contract, kept from the running system).
SURGE_RATIO = 3.0

_STATE_VERSION = 1

_isfinite = math.isfinite  # a module-level alias: one lookup less per bar


class OutOfOrderBar(ValueError):
    """A bar older than the last applied minute, or an older revision of it; state is unchanged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidBar(ValueError):
    """A non-finite close or a negative volume, which would poison every running sum for good."""


# A frozen dataclass sets each field through object.__setattr__, most of the engine's budget for
# these 18 fields. The engine instead fills this mutable twin of Features (same slots, same order,
# same base) and then switches its class, which CPython allows between classes of identical
# layout: the result is an ordinary frozen Features record.
_FeaturesBuilder: Any = make_dataclass(
    "_FeaturesBuilder",
    [(f.name, f.type) for f in fields(Features)],
    bases=Features.__bases__,
    slots=True,
    eq=False,
    repr=False,
    match_args=False,
)


def _encode_ts(ts: Any) -> Any:
    # datetimes are not JSON; tag them so from_state() gives back a datetime, offset included.
    if isinstance(ts, datetime):
        return {"datetime": ts.isoformat()}
    return ts


def _decode_ts(raw: Any) -> Any:
    if isinstance(raw, dict):
        return datetime.fromisoformat(raw["datetime"])
    return raw


class FeatureEngine:
    """All indicators of one symbol, fed one bar per minute.

    A later minute is applied; the same (ts, revision) again is a duplicate (None); the same
    minute with a higher revision (an Alpaca "updated bar") replaces the last bar in every
    indicator and returns that minute's recomputed values; anything older raises OutOfOrderBar.

    In the Features it returns, a field is None until its indicator has warmed up (TA-Lib's first
    non-NaN bar). volume_ratio is None, not inf or NaN, when the 20-bar mean volume is 0 (volumes
    are >= 0 and the mean includes this bar, so the ratio would be 0/0); volume_surge is None
    whenever the ratio is.
    """

    __slots__ = (
        "symbol",
        "_bb",
        "_sma_20",
        "_sma_50",
        "_vol_20",
        "_rsi",
        "_macd",
        "_last_ts",
        "_last_revision",
        "_bars_seen",
    )

    symbol: str
    _bb: Bollinger
    _sma_20: SMA  # the Bollinger middle band itself: one object, updated once
    _sma_50: SMA
    _vol_20: SMA
    _rsi: RSI
    _macd: MACD
    _last_ts: Any
    _last_revision: int
    _bars_seen: int

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self._set_indicators(Bollinger(20, 2.0), SMA(50), SMA(20), RSI(14), MACD(12, 26, 9))
        self._last_ts = None
        self._last_revision = 0
        self._bars_seen = 0

    def _set_indicators(self, bb: Bollinger, sma_50: SMA, vol_20: SMA, rsi: RSI, macd: MACD) -> None:
        self._bb = bb
        self._sma_20 = bb.sma
        self._sma_50 = sma_50
        self._vol_20 = vol_20
        self._rsi = rsi
        self._macd = macd

    @property
    def bars_seen(self) -> int:
        return self._bars_seen

    @property
    def last_ts(self) -> Any:
        return self._last_ts

    @property
    def last_revision(self) -> int:
        return self._last_revision

    def update(self, ts: Any, close: float, volume: int, revision: int = 0) -> Features | None:
        last_ts = self._last_ts
        if last_ts is None or ts > last_ts:
            if volume < 0 or not _isfinite(close):
                raise InvalidBar(f"{self.symbol} {ts}: close={close!r} volume={volume!r}")
            self._bb.update(close)
            self._sma_50.update(close)
            self._vol_20.update(volume)
            self._rsi.update(close)
            self._macd.update(close)
            self._bars_seen += 1
            self._last_ts = ts
        elif ts == last_ts:
            last_revision = self._last_revision
            if revision == last_revision:
                return None
            if revision < last_revision:
                raise OutOfOrderBar(f"{self.symbol} {ts}: revision {revision} after revision {last_revision}")
            if volume < 0 or not _isfinite(close):
                raise InvalidBar(f"{self.symbol} {ts}: close={close!r} volume={volume!r}")
            self._bb.replace_last(close)
            self._sma_50.replace_last(close)
            self._vol_20.replace_last(volume)
            self._rsi.replace_last(close)
            self._macd.replace_last(close)
        else:
            raise OutOfOrderBar(f"{self.symbol} {ts}: older than the last applied minute {last_ts}")
        self._last_revision = revision
        return self._values(ts, close, volume, revision)

    def _values(self, ts: Any, close: float, volume: int, revision: int) -> Features:
        bb = self._bb
        macd = self._macd
        volume_avg = self._vol_20.value
        ratio: float | None = None
        surge: bool | None = None
        if volume_avg:  # None before warm-up; 0.0 would make the ratio 0/0
            ratio = volume / volume_avg
            surge = ratio > SURGE_RATIO
        record = _FeaturesBuilder(
            self.symbol,
            ts,
            close,
            self._sma_20.value,
            self._sma_50.value,
            volume,
            volume_avg,
            ratio,
            surge,
            self._rsi.value,
            macd.value,
            macd.signal,
            macd.hist,
            bb.upper,
            bb.middle,
            bb.lower,
            self._bars_seen,
            revision,
        )
        record.__class__ = Features
        values: Features = record
        return values

    def to_state(self) -> State:
        """Plain JSON-able data (a datetime ts is stored as a tagged ISO-8601 string)."""
        return {
            "version": _STATE_VERSION,
            "symbol": self.symbol,
            "last_ts": _encode_ts(self._last_ts),
            "last_revision": self._last_revision,
            "bars_seen": self._bars_seen,
            "bollinger_20": self._bb.to_state(),
            "sma_50": self._sma_50.to_state(),
            "volume_avg_20": self._vol_20.to_state(),
            "rsi_14": self._rsi.to_state(),
            "macd": self._macd.to_state(),
        }

    @classmethod
    def from_state(cls, state: State) -> Self:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown FeatureEngine state version {state.get('version')!r}")
        engine = cls(str(state["symbol"]))
        restored = (
            Bollinger.from_state(state["bollinger_20"]),
            SMA.from_state(state["sma_50"]),
            SMA.from_state(state["volume_avg_20"]),
            RSI.from_state(state["rsi_14"]),
            MACD.from_state(state["macd"]),
        )
        fresh = (engine._bb, engine._sma_50, engine._vol_20, engine._rsi, engine._macd)
        for new, old in zip(restored, fresh, strict=True):
            if new.params != old.params:  # a state written by another configuration
                raise ValueError(f"FeatureEngine state: {new.params} where {old.params} is expected")
        engine._set_indicators(*restored)
        engine._last_ts = _decode_ts(state["last_ts"])
        engine._last_revision = int(state["last_revision"])
        engine._bars_seen = int(state["bars_seen"])
        return engine
