"""Hypothesis: streaming indicators equal TA-Lib on random series, and a state round trip, an
updated bar or a duplicate anywhere in a stream changes nothing it should not. Every series is
longer than the longest warm-up (SMA-50), so every example compares warm values too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import Features
from trading.features import FeatureEngine, OutOfOrderBar
from trading.indicators import MACD, RSI, SMA, Bollinger

REL = 1e-9
T0 = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
FAST = settings(max_examples=200, deadline=None)
ENGINE = settings(max_examples=80, deadline=None)  # each example runs 60+ minutes through every indicator
WARM_UP = 50  # bars before the slowest output (SMA-50) has a value; MACD's signal needs 34
MIN_LEN = WARM_UP + 10

# Arbitrary prices, random walks (trends, repeated closes) and plateaus with tiny ticks (ties,
# zero spread, variance reseeds): the shapes a streaming formula gets wrong.
arbitrary = st.lists(st.floats(min_value=0.01, max_value=1e5), min_size=MIN_LEN, max_size=160)


@st.composite
def walks(draw: st.DrawFn) -> list[float]:
    price = draw(st.floats(min_value=1.0, max_value=1e4))
    step = st.one_of(st.just(0.0), st.floats(min_value=-0.05, max_value=0.05))
    steps = draw(st.lists(step, min_size=MIN_LEN, max_size=160))
    out = []
    for step in steps:
        price *= 1.0 + step
        out.append(price)
    return out


plateaus = st.lists(st.sampled_from([100.0, 100.01, 99.99, 100.00000001]), min_size=MIN_LEN, max_size=160)
series = st.one_of(arbitrary, walks(), plateaus)
volumes = st.integers(min_value=0, max_value=10_000_000)


def _macd(a: np.ndarray) -> Sequence[np.ndarray]:
    return talib.MACD(a, 12, 26, 9)


def _bbands(a: np.ndarray) -> Sequence[np.ndarray]:
    return talib.BBANDS(a, 20, 2.0, 2.0, talib.MA_Type.SMA)


# name: (factory, attributes read, TA-Lib reference, outputs are differences of prices)
CASES: dict[str, tuple[Callable[[], Any], tuple[str, ...], Callable[..., Any], bool]] = {
    "sma20": (lambda: SMA(20), ("value",), lambda a: (talib.SMA(a, 20),), False),
    "sma50": (lambda: SMA(50), ("value",), lambda a: (talib.SMA(a, 50),), False),
    "rsi14": (RSI, ("value",), lambda a: (talib.RSI(a, 14),), False),
    "macd": (MACD, ("value", "signal", "hist"), _macd, True),
    "bb20": (Bollinger, ("upper", "middle", "lower"), _bbands, False),
}


def assert_close(actual: float | None, expected: float, floor: float, where: str) -> bool:
    """Whether a warm value was compared (False: both still warming up)."""
    if math.isnan(expected):
        assert actual is None, f"{where}: {actual} before TA-Lib's warm-up"
        return False
    assert actual is not None, f"{where}: None where TA-Lib has {expected}"
    assert abs(actual - expected) <= max(REL * abs(expected), floor), f"{where}: {actual}"
    return True


@FAST
@given(xs=series)
def test_streaming_equals_talib(xs: list[float]) -> None:
    """MACD outputs are differences of price-sized EMAs that cross zero; where the true value is
    ~0 they may differ by round-off of the operands, so they also pass within 1e-12 of the price
    level. The band width (4 standard deviations) is ~0 on a flat window: within 1e-14 of the
    price there. Everything else is held to 1e-9 relative, warm-up included."""
    a = np.asarray(xs, dtype=float)
    top = float(np.max(np.abs(a)))
    for name, (make, attrs, reference, differences) in CASES.items():
        ind = make()
        rows = []
        for x in xs:
            ind.update(x)
            rows.append([getattr(ind, attr) for attr in attrs])
        floor = 1e-12 * top if differences else 0.0
        refs = reference(a)
        for k, ref in enumerate(refs):
            warm = sum(
                assert_close(rows[i][k], float(expected), floor, f"{name}.{attrs[k]} bar {i}")
                for i, expected in enumerate(ref)
            )
            assert warm >= len(xs) - WARM_UP, f"{name}.{attrs[k]}: {warm} warm values of {len(xs)}"
        if name == "bb20":  # the width, i.e. the standard deviation, not just price-sized bands
            for i, (up, low) in enumerate(zip(refs[0], refs[2], strict=True)):
                if not math.isnan(up):
                    width = rows[i][0] - rows[i][2]
                    assert_close(width, float(up - low), 1e-14 * top, f"bb width bar {i}")


@FAST
@given(data=st.data(), xs=series)
def test_replace_last_equals_updating_with_the_corrected_value(data: st.DataObject, xs: list[float]) -> None:
    k = data.draw(st.integers(min_value=0, max_value=len(xs) - 1), label="bar")
    first_print = data.draw(st.floats(min_value=0.01, max_value=1e5), label="first print")
    for name, (make, _, _, _) in CASES.items():
        corrected, reference = make(), make()
        for x in xs[:k]:
            corrected.update(x)
            reference.update(x)
        corrected.update(first_print)
        corrected.replace_last(xs[k])
        reference.update(xs[k])
        assert corrected.to_state() == reference.to_state(), name
        for x in xs[k + 1 :]:
            corrected.update(x)
            reference.update(x)
        assert reference.initialized, name  # the last comparison is of warm state
        assert corrected.to_state() == reference.to_state(), name


@FAST
@given(data=st.data(), xs=series)
def test_state_round_trip_at_any_split_changes_nothing(data: st.DataObject, xs: list[float]) -> None:
    split = data.draw(st.integers(min_value=0, max_value=len(xs)), label="split")
    for name, (make, _, _, _) in CASES.items():
        original = make()
        for x in xs[:split]:
            original.update(x)
        restored = type(original).from_state(json.loads(json.dumps(original.to_state())))
        if split:  # a correction of the last input right after a restart
            original.replace_last(xs[split - 1] * 1.01)
            restored.replace_last(xs[split - 1] * 1.01)
        for x in xs[split:]:
            original.update(x)
            restored.update(x)
        assert original.initialized, name  # the last comparison is of warm state
        assert restored.to_state() == original.to_state(), name


def _minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


@ENGINE
@given(data=st.data(), xs=series)
def test_engine_state_round_trip_at_any_split(data: st.DataObject, xs: list[float]) -> None:
    vols = data.draw(st.lists(volumes, min_size=len(xs), max_size=len(xs)), label="volumes")
    split = data.draw(st.integers(min_value=0, max_value=len(xs)), label="split")
    original = FeatureEngine("AAPL")
    for i in range(split):
        original.update(_minute(i), xs[i], vols[i])
    if split and data.draw(st.booleans(), label="last minute corrected"):
        original.update(_minute(split - 1), xs[split - 1] * 1.01, vols[split - 1], 1)
    restored = FeatureEngine.from_state(json.loads(json.dumps(original.to_state())))
    if split:  # a correction of the last minute right after a restart
        bar = (_minute(split - 1), xs[split - 1] * 0.99, vols[split - 1], 2)
        assert restored.update(*bar) == original.update(*bar)
    last = None
    for i in range(split, len(xs)):
        last = original.update(_minute(i), xs[i], vols[i])
        assert restored.update(_minute(i), xs[i], vols[i]) == last
    assert last is None or last.sma_50 is not None  # warm: the last comparison covers every field
    assert restored.to_state() == original.to_state()


# One minute as it arrives: its revisions in order, each maybe delivered twice.
revisions = st.lists(
    st.tuples(st.floats(min_value=0.01, max_value=1e5), volumes, st.booleans()),
    min_size=1,
    max_size=3,
)


@ENGINE
@given(
    minutes=st.lists(revisions, min_size=MIN_LEN, max_size=90),
    stale=st.lists(st.integers(0, 90), max_size=5),
)
def test_engine_with_updated_bars_duplicates_and_stale_bars(
    minutes: list[list[tuple[float, int, bool]]], stale: list[int]
) -> None:
    """Whatever the deliveries, each minute ends as if only its final revision had been sent."""
    live, reference = FeatureEngine("AAPL"), FeatureEngine("AAPL")
    warm = 0
    for i, revs in enumerate(minutes):
        last: Features | None = None
        for rev, (close, volume, repeated) in enumerate(revs):
            last = live.update(_minute(i), close, volume, rev)
            assert last is not None and last.revision == rev
            if repeated:
                assert live.update(_minute(i), close, volume, rev) is None
        close, volume, _ = revs[-1]
        expected = reference.update(_minute(i), close, volume, len(revs) - 1)
        assert last == expected
        warm += last is not None and last.sma_50 is not None and last.macd_signal is not None
        for j in (s for s in stale if s < i):
            before = live.to_state()
            with pytest.raises(OutOfOrderBar):
                live.update(_minute(j), 1.0, 1, 0)
            assert live.to_state() == before
    assert warm >= len(minutes) - WARM_UP
    assert live.to_state() == reference.to_state()


@ENGINE
@given(data=st.data(), xs=series)
def test_volume_ratio_against_numpy(data: st.DataObject, xs: list[float]) -> None:
    vols = data.draw(
        st.lists(st.one_of(st.just(0), volumes), min_size=len(xs), max_size=len(xs)),
        label="volumes",
    )
    engine = FeatureEngine("AAPL")
    v = np.asarray(vols, dtype=float)
    compared = 0
    for i, (close, volume) in enumerate(zip(xs, vols, strict=True)):
        rec = engine.update(_minute(i), close, volume)
        assert rec is not None
        if i < 19:
            assert rec.volume_avg_20 is rec.volume_ratio is rec.volume_surge is None
            continue
        mean = float(np.mean(v[i - 19 : i + 1]))
        compared += 1
        assert rec.volume_avg_20 == pytest.approx(mean, rel=REL)
        if mean == 0.0:
            assert rec.volume_ratio is None and rec.volume_surge is None
        else:
            ratio = volume / mean
            assert rec.volume_ratio == pytest.approx(ratio, rel=REL)
            assert rec.volume_surge is (ratio > 3.0)
    assert compared == len(xs) - 19
