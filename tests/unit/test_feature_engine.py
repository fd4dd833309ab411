"""FeatureEngine: values against TA-Lib and numpy, and the bar-ordering contract (duplicates,
updated bars, out-of-order bars), state round trips and the Features record it returns.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import talib

from schemas.records import Features
from trading.features import FeatureEngine, InvalidBar, OutOfOrderBar
from trading.indicators import MACD, RSI, SMA, Bollinger

REL = 1e-9
T0 = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)

FIELDS = [
    "symbol",
    "ts",
    "close",
    "sma_20",
    "sma_50",
    "volume_current",
    "volume_avg_20",
    "volume_ratio",
    "volume_surge",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "bars_seen",
    "revision",
]


def minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def bars(n: int, seed: int = 11) -> tuple[list[float], list[int]]:
    rng = np.random.default_rng(seed)
    closes = [float(c) for c in 150.0 + np.cumsum(rng.normal(0.0, 0.2, n))]
    volumes = [int(v) for v in rng.integers(0, 5000, n)]
    volumes[n // 2] = 60_000  # one surge
    return closes, volumes


def feed(engine: FeatureEngine, closes: list[float], volumes: list[int]) -> list[Features]:
    out = []
    for i, (c, v) in enumerate(zip(closes, volumes, strict=True)):
        rec = engine.update(minute(i), c, v)
        assert rec is not None
        out.append(rec)
    return out


def talib_columns(closes: list[float], volumes: list[int]) -> dict[str, np.ndarray]:
    c = np.asarray(closes, dtype=float)
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, talib.MA_Type.SMA)
    return {
        "sma_20": talib.SMA(c, 20),
        "sma_50": talib.SMA(c, 50),
        "volume_avg_20": talib.SMA(np.asarray(volumes, dtype=float), 20),
        "rsi_14": talib.RSI(c, 14),
        "macd": macd,
        "macd_signal": signal,
        "macd_hist": hist,
        "bb_upper": upper,
        "bb_middle": middle,
        "bb_lower": lower,
    }


@pytest.mark.parametrize("n", [10, 40, 300, 5000])
def test_every_indicator_field_equals_talib(n: int) -> None:
    closes, volumes = bars(n)
    records = feed(FeatureEngine("AAPL"), closes, volumes)
    # MACD fields are differences that cross zero: also allow 1e-12 of the price level there.
    floor = 1e-12 * max(closes)
    for name, column in talib_columns(closes, volumes).items():
        for i, expected in enumerate(column):
            actual = getattr(records[i], name)
            if math.isnan(expected):
                assert actual is None, f"{name} bar {i}: {actual} before warm-up"
            else:
                tol = max(REL * abs(expected), floor if name.startswith("macd") else 0.0)
                assert actual is not None and abs(actual - expected) <= tol, f"{name} bar {i}"


@pytest.mark.parametrize(
    ("field", "first"),
    [
        ("sma_20", 19),
        ("sma_50", 49),
        ("volume_avg_20", 19),
        ("volume_ratio", 19),
        ("volume_surge", 19),
        ("rsi_14", 14),
        ("macd", 33),
        ("macd_signal", 33),
        ("macd_hist", 33),
        ("bb_upper", 19),
        ("bb_middle", 19),
        ("bb_lower", 19),
    ],
)
def test_warm_up(field: str, first: int) -> None:
    closes, volumes = bars(60)
    volumes = [v + 1 for v in volumes]  # no all-zero window, so the ratio exists once warm
    values = [getattr(r, field) for r in feed(FeatureEngine("AAPL"), closes, volumes)]
    assert all(v is None for v in values[:first])
    assert all(v is not None for v in values[first:])


def test_pass_through_fields() -> None:
    closes, volumes = bars(30)
    for i, rec in enumerate(feed(FeatureEngine("MSFT"), closes, volumes)):
        assert (rec.symbol, rec.ts, rec.close, rec.volume_current) == (
            "MSFT",
            minute(i),
            closes[i],
            volumes[i],
        )
        assert (rec.bars_seen, rec.revision) == (i + 1, 0)
        assert isinstance(rec.volume_current, int)


def test_volume_ratio_and_surge_against_numpy() -> None:
    closes, volumes = bars(400)
    v = np.asarray(volumes, dtype=float)
    records = feed(FeatureEngine("AAPL"), closes, volumes)
    surges = 0
    for i in range(19, 400):
        mean = float(np.mean(v[i - 19 : i + 1]))  # the 20 bars ending at this one, inclusive
        rec = records[i]
        assert rec.volume_avg_20 == pytest.approx(mean, rel=REL)
        ratio = float(v[i]) / mean
        assert rec.volume_ratio == pytest.approx(ratio, rel=REL)
        assert rec.volume_surge is (ratio > 3.0)
        surges += bool(rec.volume_surge)
    assert surges >= 1


@pytest.mark.parametrize(
    ("last_volume", "ratio", "surge"),
    [
        (57, 3.0, False),  # 19 bars of 17 then 57: mean 19, ratio exactly 3.0 is not a surge
        (58, 58 / (381 / 20), True),
        (0, 0.0, False),
    ],
)
def test_surge_threshold_is_strict(last_volume: int, ratio: float, surge: bool) -> None:
    engine = FeatureEngine("AAPL")
    for i in range(19):
        engine.update(minute(i), 10.0, 17)
    rec = engine.update(minute(19), 10.0, last_volume)
    assert rec is not None
    assert rec.volume_ratio == pytest.approx(ratio, rel=REL)
    assert rec.volume_surge is surge


def test_zero_mean_volume_gives_no_ratio() -> None:
    """20 bars without a trade: the ratio is 0/0, reported as None rather than NaN or inf."""
    engine = FeatureEngine("AAPL")
    recs = [engine.update(minute(i), 10.0 + i, 0) for i in range(25)]
    last = recs[-1]
    assert last is not None
    assert last.volume_avg_20 == 0.0
    assert last.volume_ratio is None and last.volume_surge is None
    assert last.sma_20 is not None  # the price features are unaffected
    rec = engine.update(minute(25), 11.0, 40)  # one trade: mean 2, ratio 20
    assert rec is not None and rec.volume_ratio == 20.0 and rec.volume_surge is True


def test_duplicate_is_ignored_and_changes_nothing() -> None:
    closes, volumes = bars(40)
    engine = FeatureEngine("AAPL")
    feed(engine, closes, volumes)
    before = engine.to_state()
    assert engine.update(minute(39), closes[39], volumes[39]) is None
    assert engine.update(minute(39), 999.0, 1) is None  # same (ts, revision): a redelivery
    assert engine.to_state() == before


def test_updated_bar_replaces_the_last_minute() -> None:
    closes, volumes = bars(80)
    for k in (0, 13, 14, 19, 33, 49, 79):
        live = FeatureEngine("AAPL")
        feed(live, closes[:k], volumes[:k])
        first = live.update(minute(k), closes[k] + 5.0, volumes[k] + 100)
        second = live.update(minute(k), closes[k] - 1.0, volumes[k] + 7, revision=1)
        final = live.update(minute(k), closes[k], volumes[k], revision=3)

        reference = FeatureEngine("AAPL")
        feed(reference, closes[:k], volumes[:k])
        expected = reference.update(minute(k), closes[k], volumes[k], revision=3)

        assert first is not None and second is not None and final is not None
        assert (first.revision, second.revision, final.revision) == (0, 1, 3)
        assert final == expected
        assert final.bars_seen == k + 1
        assert live.to_state() == reference.to_state()
        rest_live = [live.update(minute(i), closes[i], volumes[i]) for i in range(k + 1, 80)]
        rest_ref = [reference.update(minute(i), closes[i], volumes[i]) for i in range(k + 1, 80)]
        assert rest_live == rest_ref


@pytest.mark.parametrize(
    ("ts", "revision", "reason"),
    [
        (minute(9), 0, "older than"),
        (minute(9), 5, "older than"),
        (minute(10), 1, "revision 1 after revision 2"),
        (minute(10), 0, "revision 0 after revision 2"),
    ],
)
def test_out_of_order_bars_raise_and_change_nothing(ts: datetime, revision: int, reason: str) -> None:
    engine = FeatureEngine("AAPL")
    for i in range(11):
        engine.update(minute(i), 100.0 + i, 10)
    engine.update(minute(10), 111.0, 12, revision=2)
    before = engine.to_state()
    with pytest.raises(OutOfOrderBar, match=reason) as info:
        engine.update(ts, 1.0, 1, revision=revision)
    assert isinstance(info.value, ValueError)
    assert reason in info.value.reason
    assert engine.to_state() == before


@pytest.mark.parametrize(("close", "volume"), [(math.nan, 1), (math.inf, 1), (-math.inf, 1), (100.0, -1)])
@pytest.mark.parametrize("revision", [0, 1])
def test_invalid_bars_raise_and_change_nothing(close: float, volume: int, revision: int) -> None:
    engine = FeatureEngine("AAPL")
    for i in range(30):
        engine.update(minute(i), 100.0 + i, 10)
    before = engine.to_state()
    ts = minute(29) if revision else minute(30)
    with pytest.raises(InvalidBar):
        engine.update(ts, close, volume, revision=revision)
    assert engine.to_state() == before


def test_first_bar_may_be_a_revision() -> None:
    engine = FeatureEngine("AAPL")
    rec = engine.update(minute(0), 10.0, 5, revision=2)
    assert rec is not None and rec.revision == 2 and rec.bars_seen == 1
    assert engine.update(minute(0), 10.0, 5, revision=2) is None


@pytest.mark.parametrize("make_ts", [minute, lambda i: i * 60, lambda i: minute(i).isoformat()])
@pytest.mark.parametrize("split", [0, 1, 20, 34, 60, 99])
def test_state_round_trip_mid_series_changes_nothing(make_ts: Any, split: int) -> None:
    closes, volumes = bars(100)
    original = FeatureEngine("AAPL")
    for i in range(split):
        original.update(make_ts(i), closes[i], volumes[i])
    if split:  # the last minute was corrected: its revision is part of the state
        original.update(make_ts(split - 1), closes[split - 1] + 1.0, volumes[split - 1], 2)
    state = json.loads(json.dumps(original.to_state(), allow_nan=False))
    restored = FeatureEngine.from_state(state)
    assert restored.to_state() == original.to_state()
    assert (restored.last_ts, restored.last_revision, restored.bars_seen) == (
        original.last_ts,
        original.last_revision,
        original.bars_seen,
    )
    if split:  # the restored engine still knows the last minute: duplicates and revisions work
        assert restored.update(make_ts(split - 1), 1.0, 1, 2) is None
        with pytest.raises(OutOfOrderBar):
            restored.update(make_ts(split - 1), 1.0, 1, 1)
        corrected = (make_ts(split - 1), closes[split - 1] - 0.5, volumes[split - 1] + 3, 3)
        assert restored.update(*corrected) == original.update(*corrected)
    for i in range(split, 100):
        assert restored.update(make_ts(i), closes[i], volumes[i]) == original.update(
            make_ts(i), closes[i], volumes[i]
        )


def test_from_state_refuses_an_unknown_version() -> None:
    state = FeatureEngine("AAPL").to_state()
    with pytest.raises(ValueError, match="version"):
        FeatureEngine.from_state({**state, "version": 99})


@pytest.mark.parametrize(
    ("key", "other"),
    [
        ("sma_50", SMA(20)),
        ("volume_avg_20", SMA(50)),
        ("rsi_14", RSI(7)),
        ("macd", MACD(5, 35, 5)),
        ("bollinger_20", Bollinger(20, 2.5)),
    ],
)
def test_from_state_refuses_other_indicator_parameters(key: str, other: Any) -> None:
    state = {**FeatureEngine("AAPL").to_state(), key: other.to_state()}
    with pytest.raises(ValueError, match="other parameters|expected"):
        FeatureEngine.from_state(state)


def test_feature_values_is_a_frozen_slotted_dataclass() -> None:
    closes, volumes = bars(40)
    rec = feed(FeatureEngine("AAPL"), closes, volumes)[-1]
    assert [f.name for f in dataclasses.fields(Features)] == FIELDS
    assert type(rec) is Features
    assert not hasattr(rec, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.close = 1.0  # type: ignore[misc]
    # The engine's fast construction path gives exactly what the constructor gives.
    same = Features(**dataclasses.asdict(rec))
    assert same == rec and hash(same) == hash(rec) and repr(same) == repr(rec)
    assert dataclasses.replace(rec, revision=4).revision == 4
