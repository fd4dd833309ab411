"""The watchlist: 5-minute bar-time windows, closing rules, scoring and ranking."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from trading.watchlist import WatchlistBuilder, WatchlistConfig

T0 = datetime(2024, 3, 12, 14, 0, tzinfo=UTC)


@dataclass
class F:
    symbol: str
    ts: datetime
    close: float
    volume_current: int = 1000
    volume_ratio: float | None = 1.0
    revision: int = 0


def minute(m: int) -> datetime:
    return T0 + timedelta(minutes=m)


def test_window_closes_when_every_symbol_moved_past_it() -> None:
    b = WatchlistBuilder(WatchlistConfig(universe=("AAPL", "MSFT"), top_n=5))
    for m in range(5):
        assert not b.on_features(F("AAPL", minute(m), 100 + m))
        assert not b.on_features(F("MSFT", minute(m), 50.0))
    assert not b.on_features(F("AAPL", minute(5), 105.0))  # MSFT has not moved on yet
    out = b.on_features(F("MSFT", minute(6), 50.0))
    assert [e.symbol for e in out] == ["AAPL", "MSFT"]
    assert [e.rank for e in out] == [1, 2]
    assert all(e.ts == minute(5) for e in out)  # an entry's ts is its window's end
    aapl = out[0]
    assert aapl.momentum == pytest.approx(104 / 100 - 1)
    assert aapl.volume_ratio == pytest.approx(1.0)
    assert any(r.startswith("momentum") for r in aapl.reasons)


def test_grace_closes_a_window_a_silent_symbol_holds_open() -> None:
    b = WatchlistBuilder(WatchlistConfig(universe=("AAPL", "MSFT"), grace_minutes=10))
    b.on_features(F("AAPL", minute(0), 100.0))
    for m in range(5, 14):
        assert not b.on_features(F("AAPL", minute(m), 100.0))
    out = b.on_features(F("AAPL", minute(14), 100.0))  # ends at 0:15 = window end 0:05 + 10 min
    assert [e.ts for e in out] == [minute(5)]  # the next window waits until 0:20


def test_late_bars_are_counted_and_ignored() -> None:
    b = WatchlistBuilder(WatchlistConfig(universe=("AAPL",)))
    b.on_features(F("AAPL", minute(0), 100.0))
    assert len(b.on_features(F("AAPL", minute(5), 100.0))) == 1
    assert not b.on_features(F("MSFT", minute(3), 1.0))
    assert b.late == 1


def test_top_n_and_ties_by_symbol() -> None:
    syms = ("A", "B", "C", "D")
    b = WatchlistBuilder(WatchlistConfig(universe=syms, top_n=2))
    for s in syms:
        b.on_features(F(s, minute(0), 10.0, volume_ratio=3.0 if s in ("C", "D") else 1.0))
    out: list = []
    for s in syms:
        out.extend(b.on_features(F(s, minute(5), 10.0)))
    assert [(e.symbol, e.rank) for e in out] == [("C", 1), ("D", 2)]


@pytest.mark.parametrize(("ratio", "close2", "dollar_vol", "sentiment", "expected"), [
    (None, 100.0, 0, None, 0.0),
    (3.0, 100.0, 0, None, 0.35),
    (6.0, 100.0, 0, None, 0.35),  # capped
    (None, 101.0, 0, None, 0.30),  # +1% = full momentum
    (None, 99.5, 0, None, 0.15),  # |-0.5%|
    (None, 100.0, 0, -0.5, 0.10),
    (None, 100.0, 1_000_000, None, 0.15),
    (None, 100.0, 31_623, None, 0.075),  # 10 ** 4.5: half way on the log scale
])
def test_score_components(ratio: float | None, close2: float, dollar_vol: int, sentiment: float | None,
                          expected: float) -> None:
    b = WatchlistBuilder(WatchlistConfig(universe=("X",)), sentiment=lambda s, at: sentiment)
    vol = dollar_vol // 100
    b.on_features(F("X", minute(0), 100.0, volume_current=0, volume_ratio=ratio))
    b.on_features(F("X", minute(1), close2, volume_current=vol * 2, volume_ratio=ratio))
    (entry,) = b.on_features(F("X", minute(5), 100.0))
    assert entry.score == pytest.approx(expected, abs=1e-4)
    assert entry.sentiment == sentiment


def test_momentum_against_the_previous_window() -> None:
    b = WatchlistBuilder(WatchlistConfig(universe=("X",)))
    b.on_features(F("X", minute(0), 100.0))
    b.on_features(F("X", minute(5), 102.0))
    (e,) = b.on_features(F("X", minute(10), 1.0))
    assert e.momentum == pytest.approx(0.02)


def test_revised_bar_replaces_its_minute() -> None:
    b = WatchlistBuilder(WatchlistConfig(universe=("X",)))
    b.on_features(F("X", minute(0), 100.0, volume_ratio=1.0))
    b.on_features(F("X", minute(1), 100.0, volume_ratio=9.0))
    b.on_features(F("X", minute(1), 101.0, volume_ratio=2.0, revision=1))  # the updated bar
    b.on_features(F("X", minute(1), 107.0, volume_ratio=9.0, revision=1))  # the same again: ignored
    b.on_features(F("X", minute(0), 100.0, volume_ratio=1.0))  # an older bar again: ignored
    assert b.duplicates == 2
    (e,) = b.on_features(F("X", minute(5), 1.0))
    assert e.volume_ratio == pytest.approx(1.5) and e.momentum == pytest.approx(0.01)


def test_flush_closes_open_windows() -> None:
    b = WatchlistBuilder(WatchlistConfig(universe=("X", "Y")))
    b.on_features(F("X", minute(0), 1.0))
    b.on_features(F("X", minute(5), 1.0))
    assert [e.ts for e in b.flush()] == [minute(5), minute(10)]
    assert b.flush() == []


def test_state_round_trip_mid_window() -> None:
    cfg = WatchlistConfig(universe=("X", "Y"), top_n=2)
    a = WatchlistBuilder(cfg)
    bars = [F(s, minute(m), 100.0 + m * (1 if s == "X" else -1), volume_ratio=m / 3 or None)
            for m in range(12) for s in ("X", "Y")]
    for f in bars[:9]:
        a.on_features(f)
    b = WatchlistBuilder.from_state(a.to_state(), cfg)
    assert b.to_state() == a.to_state()
    for f in bars[9:]:
        assert a.on_features(f) == b.on_features(f)
    assert a.flush() == b.flush()
    with pytest.raises(ValueError):
        WatchlistBuilder.from_state({"version": 0})


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        WatchlistConfig(top_n=0)
