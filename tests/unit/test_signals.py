"""The signal rule: volume multiplier, ids, decayed sentiment, the trend rule, cooldown, watchlist."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from schemas.records import Features, ScoredNews, WatchlistEntry
from trading.signals import (
    SentimentWindow,
    SignalRule,
    StrategyConfig,
    base_confidence,
    recommendation_id,
    signed_sentiment,
    trend_action,
    volume_multiplier,
)

T0 = datetime(2024, 3, 12, 14, 0, tzinfo=UTC)


def feat(**kw: Any) -> Features:
    base = Features(
        symbol="AAPL", ts=T0, close=101.0, sma_20=100.5, sma_50=100.0, volume_current=2000,
        volume_avg_20=1000.0, volume_ratio=2.0, volume_surge=False, rsi_14=60.0, macd=0.3,
        macd_signal=0.2, macd_hist=0.1, bb_upper=102.0, bb_middle=100.5, bb_lower=99.0, bars_seen=60,
    )
    return replace(base, **kw)


def bearish(**kw: Any) -> Features:
    return feat(**{"close": 99.0, "sma_20": 99.5, "sma_50": 100.0, "macd_hist": -0.1, "rsi_14": 40.0,
                   **kw})


def news(item: str, label: str, score: float, published: datetime, ticker: str = "AAPL") -> ScoredNews:
    return ScoredNews(id=item, ticker=ticker, tickers=[ticker], label=label, score=score, model="m",
                      published=published)


@pytest.mark.parametrize(("ratio", "mult"), [
    (None, 0.0), (0.0, 0.0), (0.49, 0.0), (0.4999999, 0.0), (0.5, 0.3), (1.19, 0.3), (1.2, 1.0),
    (2.0, 1.0), (3.0, 1.0), (3.0000001, 1.3), (50.0, 1.3),
])
def test_volume_multiplier(ratio: float | None, mult: float) -> None:
    assert volume_multiplier(ratio) == mult


def test_recommendation_id_is_deterministic_uuid5() -> None:
    rid = recommendation_id("v1", "AAPL", T0, "BUY")
    assert rid == recommendation_id("v1", "AAPL", T0, "BUY")
    assert uuid.UUID(rid).version == 5
    same_instant = T0.astimezone(timezone(timedelta(hours=-4)))
    assert recommendation_id("v1", "AAPL", same_instant, "BUY") == rid
    others = {
        recommendation_id("v2", "AAPL", T0, "BUY"),
        recommendation_id("v1", "MSFT", T0, "BUY"),
        recommendation_id("v1", "AAPL", T0 + timedelta(minutes=1), "BUY"),
        recommendation_id("v1", "AAPL", T0, "SELL"),
    }
    assert rid not in others and len(others) == 4
    with pytest.raises(ValueError):
        recommendation_id("v1", "AAPL", T0.replace(tzinfo=None), "BUY")


@pytest.mark.parametrize(("label", "score", "signed"), [
    ("positive", 0.9, 0.9), ("negative", 0.8, -0.8), ("neutral", 0.99, 0.0),
])
def test_signed_sentiment(label: str, score: float, signed: float) -> None:
    assert signed_sentiment(label, score) == signed


class TestSentimentWindow:
    def w(self) -> SentimentWindow:
        return SentimentWindow(half_life_s=3600, window_s=4 * 3600)

    def test_empty_is_none(self) -> None:
        assert self.w().value(T0) is None

    def test_fresh_item_counts_fully(self) -> None:
        w = self.w()
        w.add("a", T0, 0.8)
        assert w.value(T0) == pytest.approx(0.8)

    def test_decays_by_half_life(self) -> None:
        w = self.w()
        w.add("a", T0, 0.8)
        assert w.value(T0 + timedelta(hours=1)) == pytest.approx(0.4)
        assert w.value(T0 + timedelta(hours=2)) == pytest.approx(0.2)

    def test_many_items_average(self) -> None:
        w = self.w()
        w.add("a", T0, 0.8)
        w.add("b", T0, -0.4)
        w.add("c", T0, 0.0)
        assert w.value(T0) == pytest.approx(0.4 / 3)

    def test_future_items_are_invisible(self) -> None:
        w = self.w()
        w.add("a", T0 + timedelta(minutes=5), 0.8)
        assert w.value(T0) is None
        assert w.value(T0 + timedelta(minutes=5)) == pytest.approx(0.8)

    def test_outside_window_dropped(self) -> None:
        w = self.w()
        w.add("a", T0, 0.8)
        assert w.value(T0 + timedelta(hours=4)) is None
        assert len(w) == 0

    def test_duplicate_id_ignored(self) -> None:
        w = self.w()
        assert w.add("a", T0, 0.8)
        assert not w.add("a", T0, -0.8)
        assert w.value(T0) == pytest.approx(0.8)

    def test_invalid_parameters(self) -> None:
        with pytest.raises(ValueError):
            SentimentWindow(0, 10)


@pytest.mark.parametrize(("f", "action"), [
    (feat(), "BUY"),
    (bearish(), "SELL"),
    (feat(sma_50=None), None),
    (feat(macd_hist=None), None),
    (feat(rsi_14=None), None),
    (feat(macd_hist=-0.01), None),  # MACD disagrees
    (feat(macd_hist=0.0), None),
    (feat(sma_20=99.0), None),  # close > sma50 > sma20: no clean trend
    (feat(close=100.5), None),  # close == sma20
    (bearish(macd_hist=0.05), None),
    # a flat window: RSI is 0.0 (TA-Lib), and there is no trend: never read as oversold
    (feat(close=100.0, sma_20=100.0, sma_50=100.0, macd_hist=0.0, rsi_14=0.0), None),
])
def test_trend_action(f: Features, action: str | None) -> None:
    assert trend_action(f) == action


CONFIG = StrategyConfig()


@pytest.mark.parametrize(("action", "f", "sentiment", "expected"), [
    ("BUY", feat(), None, 0.60 + 0.10 + 0.05),  # spread 0.5% strong, rsi 60
    ("BUY", feat(sma_20=100.1), None, 0.60 + 0.05),  # spread 0.1%: not strong
    ("BUY", feat(sma_20=100.1, rsi_14=45.0), None, 0.60),
    ("BUY", feat(sma_20=100.1, rsi_14=45.0), 0.5, 0.60 + 0.075),
    ("BUY", feat(sma_20=100.1, rsi_14=45.0), 1.0, 0.60 + 0.15),
    ("BUY", feat(sma_20=100.1, rsi_14=45.0), -0.29, 0.60),  # mildly opposing: no bonus, no veto
    ("BUY", feat(), -0.3, None),  # strongly opposing: veto
    ("BUY", feat(rsi_14=70.0), None, None),  # overbought
    ("BUY", feat(rsi_14=69.9), None, 0.75),
    ("SELL", bearish(), None, 0.60 + 0.10 + 0.05),
    ("SELL", bearish(rsi_14=30.0), None, None),  # oversold
    ("SELL", bearish(rsi_14=55.0), None, 0.60 + 0.10),
    ("SELL", bearish(), -0.6, 0.75 + 0.09),
    ("SELL", bearish(), 0.3, None),
])
def test_base_confidence(action: str, f: Features, sentiment: float | None,
                         expected: float | None) -> None:
    out = base_confidence(action, f, sentiment, CONFIG)
    if expected is None:
        assert out is None
    else:
        assert out is not None
        assert out[0] == pytest.approx(expected)
        assert out[1]


class TestSignalRule:
    def test_emits_a_recommendation(self) -> None:
        rule = SignalRule()
        rec = rule.on_features(feat())
        assert rec is not None
        assert rec.id == recommendation_id(CONFIG.strategy_version, "AAPL", T0, "BUY")
        assert rec.action == "BUY" and rec.symbol == "AAPL" and rec.ts == T0
        assert rec.base_confidence == pytest.approx(0.75)
        assert rec.volume_multiplier == 1.0 and rec.confidence == pytest.approx(0.75)
        assert rec.features["close"] == 101.0 and rec.features["bars_seen"] == 60.0
        assert rec.reason.startswith("BUY: close")
        assert rec.sentiment is None and rec.strategy_version == CONFIG.strategy_version

    @pytest.mark.parametrize(("ratio", "mult"), [(0.3, 0.0), (None, 0.0), (1.0, 0.3), (3.5, 1.3)])
    def test_confidence_is_base_times_volume_multiplier(self, ratio: float | None, mult: float) -> None:
        rec = SignalRule().on_features(feat(volume_ratio=ratio))
        assert rec is not None  # a killed signal is still recorded
        assert rec.volume_multiplier == mult
        assert rec.confidence == pytest.approx(rec.base_confidence * mult)
        if mult == 0.0:
            assert "killed" in rec.reason

    def test_no_signal_without_trend(self) -> None:
        assert SignalRule().on_features(feat(macd_hist=-1.0)) is None

    def test_cooldown_then_again(self) -> None:
        rule = SignalRule()
        assert rule.on_features(feat()) is not None
        for m in range(1, 15):
            assert rule.on_features(feat(ts=T0 + timedelta(minutes=m))) is None
        again = rule.on_features(feat(ts=T0 + timedelta(minutes=15)))
        assert again is not None and again.ts == T0 + timedelta(minutes=15)

    def test_reversal_fires_inside_the_cooldown(self) -> None:
        rule = SignalRule()
        assert rule.on_features(feat()) is not None
        rec = rule.on_features(bearish(ts=T0 + timedelta(minutes=2)))
        assert rec is not None and rec.action == "SELL"

    def test_redelivered_bar_gives_nothing_new(self) -> None:
        rule = SignalRule()
        assert rule.on_features(feat()) is not None
        assert rule.on_features(feat()) is None

    def test_vetoed_bar_does_not_start_the_cooldown(self) -> None:
        rule = SignalRule()
        assert rule.on_features(feat(rsi_14=75.0)) is None
        assert rule.on_features(feat(ts=T0 + timedelta(minutes=1))) is not None

    def test_sentiment_from_news_agrees(self) -> None:
        rule = SignalRule()
        assert rule.on_news(news("n1", "positive", 0.9, T0 - timedelta(minutes=30)))
        assert not rule.on_news(news("n1", "positive", 0.9, T0 - timedelta(minutes=30)))
        rec = rule.on_features(feat())
        assert rec is not None
        # published 30 min before the bar's end minus one minute: age 31 min, half-life 60 min
        assert rec.sentiment is not None and rec.sentiment == pytest.approx(0.9 * 0.5 ** (31 / 60))
        assert rec.base_confidence == pytest.approx(0.75 + 0.15 * rec.sentiment)

    def test_negative_news_vetoes_a_buy(self) -> None:
        rule = SignalRule()
        rule.on_news(news("n1", "negative", 0.95, T0))
        assert rule.on_features(feat()) is None

    def test_news_of_another_ticker_is_ignored(self) -> None:
        rule = SignalRule()
        rule.on_news(news("n1", "negative", 0.95, T0, ticker="MSFT"))
        rec = rule.on_features(feat())
        assert rec is not None and rec.sentiment is None

    def test_watchlist_required(self) -> None:
        rule = SignalRule(StrategyConfig(require_watchlist=True))
        assert rule.on_features(feat()) is None
        entry = WatchlistEntry(symbol="AAPL", ts=T0 - timedelta(minutes=4), score=0.5, rank=1,
                               volume_ratio=1.0, momentum=0.0, sentiment=None)
        rule.on_watchlist([entry])
        assert rule.on_features(feat(ts=T0 + timedelta(minutes=1))) is not None
        # the entry has expired ten minutes after its ts
        stale = SignalRule(StrategyConfig(require_watchlist=True))
        stale.on_watchlist([replace(entry, ts=T0 - timedelta(minutes=20))])
        assert stale.on_features(feat()) is None

    def test_state_round_trip_mid_stream(self) -> None:
        a = SignalRule()
        a.on_news(news("n1", "positive", 0.7, T0 - timedelta(minutes=10)))
        a.on_watchlist([WatchlistEntry(symbol="AAPL", ts=T0, score=1.0, rank=1, volume_ratio=None,
                                       momentum=None, sentiment=None)])
        assert a.on_features(feat()) is not None
        b = SignalRule.from_state(a.to_state())
        assert b.to_state() == a.to_state()
        for m in (5, 15, 16):
            f = feat(ts=T0 + timedelta(minutes=m))
            assert a.on_features(f) == b.on_features(f)
        with pytest.raises(ValueError):
            SignalRule.from_state(a.to_state(), StrategyConfig(strategy_version="other"))
