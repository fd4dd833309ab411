"""Table-driven checks of trading.indicators against TA-Lib on hand-picked series.

TA-Lib is the batch reference: every streamed value must equal its value for the same bar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import talib

from trading.indicators import MACD, RSI, SMA, Bollinger

REL = 1e-9

Outputs = tuple[float | None, ...]


def _walk(n: int, start: float, sigma: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(v) for v in start + np.cumsum(rng.normal(0.0, sigma, n))]


# Hand-picked series, each aimed at a way a streaming indicator goes wrong.
SERIES: dict[str, list[float]] = {
    "flat": [100.0] * 120,
    "up": [100.0 + 0.25 * i for i in range(120)],
    "down": [200.0 - 0.25 * i for i in range(120)],
    "spike": [50.0] * 60 + [500.0] + [50.0] * 59,
    # An outlier leaving a noisy window buries the small squared terms below its ulp: the
    # running variance sums must be rebuilt when it leaves, or the band width is garbage.
    "spike_on_noise": [50.0 + 0.01 * (i % 3) + (450.0 if i == 60 else 0.0) for i in range(120)],
    "starts_at_min": [10.0] + [10.0 + abs(math.sin(i)) * 5.0 + 0.01 for i in range(1, 120)],
    "fine_tick": [100.0 + (i % 2) * 1e-8 for i in range(120)],  # bands must not collapse (#243)
    "penny": [0.0001 + 1e-6 * (i % 7) for i in range(120)],
    "large": _walk(120, 1e5, 50.0, seed=3),
    "short": [1.0, 2.0, 3.0],  # never warms up
    "long": _walk(5000, 100.0, 0.3, seed=7),  # running sums must not drift
}


class Case:
    """One indicator configuration, how to read it, and the TA-Lib call it must equal."""

    def __init__(
        self,
        make: Callable[[], Any],
        read: Callable[[Any], Outputs],
        reference: Callable[[np.ndarray], Sequence[np.ndarray]],
        first: int,
        differences: bool = False,
        bands: bool = False,
    ) -> None:
        self.make = make
        self.read = read
        self.reference = reference
        self.first = first  # TA-Lib's first non-NaN index
        self.differences = differences  # outputs are differences of price-sized values
        self.bands = bands  # outputs are (upper, middle, lower): the width is checked too


def _one(ind: Any) -> Outputs:
    return (ind.value,)


def _macd(ind: Any) -> Outputs:
    return (ind.value, ind.signal, ind.hist)


def _bands(ind: Any) -> Outputs:
    return (ind.upper, ind.middle, ind.lower)


CASES: dict[str, Case] = {
    "sma20": Case(lambda: SMA(20), _one, lambda a: (talib.SMA(a, 20),), 19),
    "sma50": Case(lambda: SMA(50), _one, lambda a: (talib.SMA(a, 50),), 49),
    "sma2": Case(lambda: SMA(2), _one, lambda a: (talib.SMA(a, 2),), 1),
    "rsi14": Case(lambda: RSI(14), _one, lambda a: (talib.RSI(a, 14),), 14),
    "rsi5": Case(lambda: RSI(5), _one, lambda a: (talib.RSI(a, 5),), 5),
    "macd": Case(MACD, _macd, lambda a: talib.MACD(a, 12, 26, 9), 33, differences=True),
    "macd_5_13_4": Case(
        lambda: MACD(5, 13, 4), _macd, lambda a: talib.MACD(a, 5, 13, 4), 15, differences=True
    ),
    "bb20": Case(
        Bollinger, _bands, lambda a: talib.BBANDS(a, 20, 2.0, 2.0, talib.MA_Type.SMA), 19, bands=True
    ),
    "bb5": Case(
        lambda: Bollinger(5, 1.5),
        _bands,
        lambda a: talib.BBANDS(a, 5, 1.5, 1.5, talib.MA_Type.SMA),
        4,
        bands=True,
    ),
}


def stream(case: Case, xs: Sequence[float]) -> list[Outputs]:
    ind = case.make()
    out = []
    for x in xs:
        ind.update(x)
        out.append(case.read(ind))
    return out


def assert_matches_talib(case: Case, xs: Sequence[float], got: list[Outputs]) -> None:
    """Warm-up exactly where TA-Lib has NaN, then every value within 1e-9 relative.

    MACD, its signal and histogram are differences of price-sized EMAs and cross zero; near zero
    the relative error of a difference is unbounded, so those three also pass within an absolute
    1e-12 of the largest price in the series (round-off of the operands, far below any real value).

    Bands are price-sized, so 1e-9 of them says little about the standard deviation: the width
    upper - lower is compared too, 1e-9 relative, or within 1e-14 of the price where the true
    width is ~0 (a flat window), since each band carries a rounding of the price's size.
    """
    refs = case.reference(np.asarray(xs, dtype=float))
    top = max(abs(x) for x in xs)
    floor = 1e-12 * top if case.differences else 0.0
    if case.bands:
        for i, (row, up, low) in enumerate(zip(got, refs[0], refs[2], strict=True)):
            if row[0] is not None and row[2] is not None and not math.isnan(up):
                width, expected = row[0] - row[2], up - low
                tolerance = max(REL * expected, 1e-14 * top)
                assert abs(width - expected) <= tolerance, f"width bar {i}: {width} != {expected}"
    for k, ref in enumerate(refs):
        for i, (row, expected) in enumerate(zip(got, ref, strict=True)):
            actual = row[k]
            if math.isnan(expected):
                assert actual is None, f"output {k} bar {i}: {actual} before TA-Lib's warm-up"
                continue
            assert actual is not None, f"output {k} bar {i}: None, TA-Lib has {expected}"
            tolerance = max(REL * abs(expected), floor)
            assert abs(actual - expected) <= tolerance, f"output {k} bar {i}: {actual} != {expected}"


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("name", CASES)
def test_streaming_equals_talib(name: str, series: str) -> None:
    case, xs = CASES[name], SERIES[series]
    assert_matches_talib(case, xs, stream(case, xs))


@pytest.mark.parametrize("name", CASES)
def test_warm_up_ends_at_talibs_first_value(name: str) -> None:
    case = CASES[name]
    xs = SERIES["long"][:200]
    got = stream(case, xs)
    first_ours = next(i for i, row in enumerate(got) if row[0] is not None)
    first_talib = int(np.argmax(~np.isnan(case.reference(np.asarray(xs))[0])))
    assert first_ours == first_talib == case.first
    assert all(v is not None for row in got[case.first :] for v in row)
    ind = case.make()
    for x in xs[: case.first]:
        ind.update(x)
        assert not ind.initialized
    ind.update(xs[case.first])
    assert ind.initialized


def test_flat_series_values() -> None:
    """The degenerate answers, spelled out: zero spread, RSI 0.0 (TA-Lib's 0/0 answer), MACD 0."""
    xs = SERIES["flat"]
    bb, rsi, macd = Bollinger(), RSI(), MACD()
    for x in xs:
        bb.update(x)
        rsi.update(x)
        macd.update(x)
    assert bb.upper == bb.middle == bb.lower == 100.0
    assert rsi.value == 0.0
    assert (macd.value, macd.signal, macd.hist) == (0.0, 0.0, 0.0)


def test_monotonic_rsi_extremes() -> None:
    up, down = RSI(), RSI()
    for a, b in zip(SERIES["up"], SERIES["down"], strict=True):
        up.update(a)
        down.update(b)
    assert up.value == 100.0
    assert down.value == 0.0


def test_long_series_has_no_drift_against_exact_window_statistics() -> None:
    """Running sums over 5,000 bars (offset to 1e4 to make cancellation bite) against exact sums."""
    xs = [x + 1e4 for x in SERIES["long"]]
    sma, bb = SMA(20), Bollinger(20, 2.0)
    worst_mean = worst_sd = 0.0
    for i, x in enumerate(xs):
        sma.update(x)
        bb.update(x)
        if i >= 19:
            window = xs[i - 19 : i + 1]
            mean = math.fsum(window) / 20
            sd = float(np.std(np.asarray(window)))
            assert sma.value is not None and bb.upper is not None and bb.middle is not None
            worst_mean = max(worst_mean, abs(sma.value - mean) / mean)
            worst_sd = max(worst_sd, abs((bb.upper - bb.middle) / 2.0 - sd) / sd)
    assert worst_mean <= REL
    assert worst_sd <= 1e-6  # the band is 1e4-sized: (upper - middle) itself carries ~1e-12 of it


MAKERS: dict[str, Callable[[], Any]] = {
    "sma20": lambda: SMA(20),
    "sma1": lambda: SMA(1),
    "rsi14": RSI,
    "macd": MACD,
    "macd_3_5_2": lambda: MACD(3, 5, 2),
    "bb20": Bollinger,
    "bb3": lambda: Bollinger(3, 2.0),
}


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("series", ["spike", "starts_at_min", "fine_tick", "large"])
def test_replace_last_equals_updating_with_the_corrected_value(name: str, series: str) -> None:
    make, xs = MAKERS[name], SERIES[series][:70]  # 70 covers every warm-up boundary
    for k in range(len(xs)):
        corrected, reference = make(), make()
        for x in xs[:k]:
            corrected.update(x)
            reference.update(x)
        corrected.update(xs[k] * 1.7 + 3.0)  # the first print of minute k
        corrected.replace_last(xs[k] * 0.9)  # a first correction
        corrected.replace_last(xs[k])  # the final one
        reference.update(xs[k])
        assert corrected.to_state() == reference.to_state(), f"bar {k}"
        for x in xs[k + 1 : k + 40]:
            corrected.update(x)
            reference.update(x)
        assert corrected.to_state() == reference.to_state(), f"after bar {k}"


@pytest.mark.parametrize("name", MAKERS)
def test_replace_last_without_a_bar_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="before any update"):
        MAKERS[name]().replace_last(1.0)


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("split", [0, 1, 4, 19, 20, 33, 34, 60])
def test_state_round_trip_mid_series_changes_nothing(name: str, split: int) -> None:
    make, xs = MAKERS[name], SERIES["long"][:100]
    original = make()
    for x in xs[:split]:
        original.update(x)
    state = json.loads(json.dumps(original.to_state(), allow_nan=False))
    restored = type(original).from_state(state)
    assert restored.to_state() == original.to_state()
    if split:  # a correction of the last input right after a restart
        original.replace_last(xs[split - 1] + 0.5)
        restored.replace_last(xs[split - 1] + 0.5)
        assert restored.to_state() == original.to_state()
    for x in xs[split:]:
        original.update(x)
        restored.update(x)
        assert restored.to_state() == original.to_state()


@pytest.mark.parametrize("name", MAKERS)
def test_reset_returns_to_a_fresh_indicator(name: str) -> None:
    ind = MAKERS[name]()
    for x in SERIES["spike"]:
        ind.update(x)
    ind.reset()
    assert ind.to_state() == MAKERS[name]().to_state()
    assert not ind.initialized


@pytest.mark.parametrize(
    "make",
    [
        lambda: SMA(0),
        lambda: RSI(1),
        lambda: MACD(26, 12, 9),
        lambda: MACD(12, 12, 9),
        lambda: MACD(12, 26, 1),
        lambda: Bollinger(1),
    ],
)
def test_bad_parameters_are_refused(make: Callable[[], Any]) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(
    ("cls", "state"),
    [
        (SMA, RSI().to_state()),
        (RSI, SMA(14).to_state()),
        (MACD, Bollinger().to_state()),
        (Bollinger, MACD().to_state()),
        (SMA, {**SMA(20).to_state(), "_buf": [0.0] * 19}),
        (Bollinger, {**Bollinger(20).to_state(), "sma": SMA(19).to_state()}),
    ],
)
def test_from_state_refuses_foreign_state(cls: Any, state: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        cls.from_state(state)
