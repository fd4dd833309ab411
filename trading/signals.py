"""The signal rule: features.1m + decayed news sentiment -> BUY/SELL recommendations, incremental and
allocation-free per bar, with deterministic ids so a replay or redelivery recommends the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self

from schemas.records import Recommendation, ScoredNews, WatchlistEntry
from trading.clock import MINUTE
from trading.execution import new_record, uuid5_str

#: Namespace of recommendation ids (fixed forever: changing it changes every id).
RECOMMENDATION_NAMESPACE = uuid.UUID("5b0c1f4e-7d0a-5b8e-9a53-2f1d8c6e0a71")

_STATE_VERSION = 1


def recommendation_id(strategy_version: str, symbol: str, ts: datetime, action: str) -> str:
    """UUIDv5 of (strategy_version, symbol, bar ts in UTC, action): same inputs, same id."""
    if ts.tzinfo is None:
        raise ValueError("recommendation_id needs an aware bar timestamp")
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return uuid5_str(RECOMMENDATION_NAMESPACE, f"{strategy_version}|{symbol}|{ts.isoformat()}|{action}")


def volume_multiplier(ratio: float | None) -> float:
    """The running system's volume multiplier, exactly: <0.5 kill, <1.2 weak, >3.0 surge, else 1.

    No ratio (warm-up, or a 20-bar mean volume of 0) means no volume evidence: a kill.
    """
    if ratio is None or ratio < 0.5:
        return 0.0
    if ratio < 1.2:
        return 0.3
    if ratio > 3.0:
        return 1.3
    return 1.0


def signed_sentiment(label: str, score: float) -> float:
    """A classifier label and its probability as one number in [-1, 1]."""
    if label == "positive":
        return score
    if label == "negative":
        return -score
    return 0.0


class SentimentWindow:
    """Recent news sentiment of one symbol, exponentially decayed on bar time.

    value(at) = sum(w_i * s_i) / max(sum(w_i), 1) over items published in (at - window, at],
    w_i = 0.5 ** (age_i / half_life): one fresh item counts fully, an old one fades, many items
    average. Items are deduplicated by id, so a redelivered news record changes nothing; items
    published after `at` are not visible yet, which keeps a replay from seeing the future.
    """

    __slots__ = ("half_life_s", "window_s", "_items")

    def __init__(self, half_life_s: float, window_s: float) -> None:
        if half_life_s <= 0 or window_s <= 0:
            raise ValueError("half-life and window must be positive")
        self.half_life_s = half_life_s
        self.window_s = window_s
        self._items: dict[str, tuple[float, float]] = {}  # id -> (published epoch s, signed score)

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item_id: str, published: datetime, sentiment: float) -> bool:
        """Adds an item; False if it was already there (a redelivery)."""
        if item_id in self._items:
            return False
        self._items[item_id] = (published.timestamp(), sentiment)
        return True

    def value(self, at: datetime) -> float | None:
        if not self._items:
            return None
        now = at.timestamp()
        horizon = now - self.window_s
        num = den = 0.0
        stale: list[str] | None = None
        for item_id, (t, s) in self._items.items():
            if t <= horizon:
                if stale is None:
                    stale = []
                stale.append(item_id)
                continue
            if t > now:
                continue
            w = 0.5 ** ((now - t) / self.half_life_s)
            num += w * s
            den += w
        if stale:
            # Items this old can never be visible again: bar time only moves forward per symbol.
            for item_id in stale:
                del self._items[item_id]
        if den == 0.0:
            return None
        return num / max(den, 1.0)

    def to_state(self) -> dict[str, Any]:
        return {"items": [[k, t, s] for k, (t, s) in sorted(self._items.items())]}

    def load(self, state: dict[str, Any]) -> None:
        self._items = {str(k): (float(t), float(s)) for k, t, s in state["items"]}


class SentimentBook:
    """A SentimentWindow per ticker, fed by news.scored (items keyed `_market` are not used)."""

    __slots__ = ("half_life_s", "window_s", "_windows")

    def __init__(self, half_life_s: float, window_s: float) -> None:
        self.half_life_s = half_life_s
        self.window_s = window_s
        self._windows: dict[str, SentimentWindow] = {}

    def window(self, symbol: str) -> SentimentWindow:
        w = self._windows.get(symbol)
        if w is None:
            w = SentimentWindow(self.half_life_s, self.window_s)
            self._windows[symbol] = w
        return w

    def on_news(self, news: ScoredNews) -> bool:
        """Adds a scored news item to its ticker's window; False if already seen."""
        return self.window(news.ticker).add(news.id, news.published, signed_sentiment(news.label, news.score))

    def value(self, symbol: str, at: datetime) -> float | None:
        w = self._windows.get(symbol)
        return None if w is None else w.value(at)

    def to_state(self) -> dict[str, Any]:
        return {s: w.to_state() for s, w in sorted(self._windows.items())}

    def load(self, state: dict[str, Any]) -> None:
        for s, w in state.items():
            self.window(s).load(w)


@dataclass(frozen=True, slots=True)
class StrategyConfig:
    """Parameters of the signal rule; strategy_version is part of every recommendation id."""

    strategy_version: str = "trend-sentiment-v1"
    rsi_buy_max: float = 70.0  # no BUY into an overbought market
    rsi_sell_min: float = 30.0  # no SELL into an oversold one
    trend_strong: float = 0.002  # |sma20 - sma50| / sma50 that counts as a strong trend
    sentiment_veto: float = 0.3  # opposing sentiment at least this strong blocks the signal
    base: float = 0.60
    strong_trend_bonus: float = 0.10
    momentum_bonus: float = 0.05  # RSI on the trend's side of 50
    sentiment_bonus: float = 0.15  # times agreeing sentiment in [0, 1]
    sentiment_half_life_minutes: float = 60.0
    sentiment_window_minutes: float = 240.0
    cooldown_minutes: float = 15.0  # the same action on a symbol again only after this
    require_watchlist: bool = False
    watchlist_valid_minutes: float = 10.0  # a watchlist entry counts this long after its ts

    @property
    def sentiment_half_life_s(self) -> float:
        return self.sentiment_half_life_minutes * 60.0

    @property
    def sentiment_window_s(self) -> float:
        return self.sentiment_window_minutes * 60.0


class FeatureLike(Protocol):
    """What the rule reads: a features.1m record (what the FeatureEngine returns, too)."""

    @property
    def symbol(self) -> str: ...

    @property
    def ts(self) -> Any: ...

    @property
    def close(self) -> float: ...

    @property
    def sma_20(self) -> float | None: ...

    @property
    def sma_50(self) -> float | None: ...

    @property
    def volume_current(self) -> int: ...

    @property
    def volume_avg_20(self) -> float | None: ...

    @property
    def volume_ratio(self) -> float | None: ...

    @property
    def rsi_14(self) -> float | None: ...

    @property
    def macd(self) -> float | None: ...

    @property
    def macd_signal(self) -> float | None: ...

    @property
    def macd_hist(self) -> float | None: ...

    @property
    def bb_upper(self) -> float | None: ...

    @property
    def bb_middle(self) -> float | None: ...

    @property
    def bb_lower(self) -> float | None: ...

    @property
    def bars_seen(self) -> int: ...


_SNAPSHOT_FIELDS = (
    "close",
    "sma_20",
    "sma_50",
    "rsi_14",
    "macd",
    "macd_signal",
    "macd_hist",
    "volume_current",
    "volume_avg_20",
    "volume_ratio",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "bars_seen",
)


def features_snapshot(f: FeatureLike) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in _SNAPSHOT_FIELDS:
        v = getattr(f, name)
        out[name] = None if v is None else float(v)
    return out


def trend_action(f: FeatureLike) -> str | None:
    """The technical half of the rule: trend (close vs SMA20 vs SMA50) agreeing with MACD."""
    sma20 = f.sma_20
    sma50 = f.sma_50
    hist = f.macd_hist
    if sma20 is None or sma50 is None or hist is None or f.rsi_14 is None:
        return None  # still warming up
    close = f.close
    if close > sma20 > sma50 and hist > 0.0:
        return "BUY"
    if close < sma20 < sma50 and hist < 0.0:
        return "SELL"
    return None


def base_confidence(
    action: str, f: FeatureLike, sentiment: float | None, config: StrategyConfig
) -> tuple[float, list[str]] | None:
    """Base confidence and its reasons, or None when RSI bounds or opposing sentiment veto."""
    rsi = f.rsi_14
    sma20 = f.sma_20
    sma50 = f.sma_50
    assert rsi is not None and sma20 is not None and sma50 is not None and f.macd_hist is not None
    buy = action == "BUY"
    # A flat window has RSI 0.0 (TA-Lib convention), but it also has close == sma20 == sma50, so
    # trend_action() already returned None: an RSI of 0 never reaches here as "oversold".
    if buy and rsi >= config.rsi_buy_max:
        return None
    if not buy and rsi <= config.rsi_sell_min:
        return None
    agree = None if sentiment is None else (sentiment if buy else -sentiment)
    if agree is not None and agree <= -config.sentiment_veto:
        return None
    cmp = ">" if buy else "<"
    reasons = [
        f"close {f.close:.4f} {cmp} sma20 {sma20:.4f} {cmp} sma50 {sma50:.4f}",
        f"macd_hist {f.macd_hist:+.5f}",
        f"rsi {rsi:.1f}",
    ]
    base = config.base
    spread = abs(sma20 - sma50) / sma50 if sma50 else 0.0
    if spread >= config.trend_strong:
        base += config.strong_trend_bonus
        reasons.append(f"strong trend {spread:.2%}")
    if (buy and rsi >= 50.0) or (not buy and rsi <= 50.0):
        base += config.momentum_bonus
        reasons.append("rsi on trend side of 50")
    if agree is not None and agree > 0.0:
        base += config.sentiment_bonus * min(agree, 1.0)
        reasons.append(f"sentiment {sentiment:+.2f} agrees")
    elif sentiment is not None:
        reasons.append(f"sentiment {sentiment:+.2f}")
    else:
        reasons.append("no recent news")
    return base, reasons


class SignalRule:
    """The signal rule over every symbol: per-symbol cooldown, sentiment windows, watchlist.

    on_features() returns a Recommendation (possibly killed: volume multiplier 0, still
    returned, so "why no trade" can be answered) or None.
    """

    __slots__ = ("config", "sentiment_book", "_last", "_listed", "_cooldown", "_listed_for")

    def __init__(self, config: StrategyConfig | None = None) -> None:
        self.config = config or StrategyConfig()
        self._cooldown = timedelta(minutes=self.config.cooldown_minutes)
        self._listed_for = timedelta(minutes=self.config.watchlist_valid_minutes)
        self._last: dict[str, tuple[str, datetime]] = {}  # symbol -> last emitted (action, ts)
        self.sentiment_book = SentimentBook(self.config.sentiment_half_life_s, self.config.sentiment_window_s)
        self._listed: dict[str, datetime] = {}  # symbol -> ts of its latest watchlist entry

    # -- inputs other than bars ---------------------------------------------------------------

    def on_news(self, news: ScoredNews) -> bool:
        """Adds a scored news item to its ticker's window; False if already seen."""
        return self.sentiment_book.on_news(news)

    def sentiment(self, symbol: str, at: datetime) -> float | None:
        return self.sentiment_book.value(symbol, at)

    def on_watchlist(self, entries: Iterable[WatchlistEntry]) -> None:
        for e in entries:
            prev = self._listed.get(e.symbol)
            if prev is None or e.ts > prev:
                self._listed[e.symbol] = e.ts

    def on_watchlist_at(self, symbol: str, at: datetime) -> bool:
        listed = self._listed.get(symbol)
        return listed is not None and listed <= at < listed + self._listed_for

    def restore_last(self, recs: Iterable[Recommendation]) -> None:
        """The cooldown state from emitted recommendations (the signals topic), latest per symbol."""
        for r in recs:
            last = self._last.get(r.symbol)
            if last is None or r.ts > last[1]:
                self._last[r.symbol] = (r.action, r.ts)

    # -- the per-bar path ---------------------------------------------------------------------

    def on_features(self, f: FeatureLike) -> Recommendation | None:
        # trend_action() and the RSI bounds of base_confidence(), inlined: this runs on every bar
        sma20 = f.sma_20
        sma50 = f.sma_50
        hist = f.macd_hist
        rsi = f.rsi_14
        if sma20 is None or sma50 is None or hist is None or rsi is None:
            return None
        close = f.close
        config = self.config
        if close > sma20 > sma50 and hist > 0.0:
            if rsi >= config.rsi_buy_max:
                return None
            action = "BUY"
        elif close < sma20 < sma50 and hist < 0.0:
            if rsi <= config.rsi_sell_min:
                return None
            action = "SELL"
        else:
            return None
        symbol = f.symbol
        ts: datetime = f.ts
        last = self._last.get(symbol)
        if last is not None and last[0] == action and ts - last[1] < self._cooldown:
            return None
        at = ts + MINUTE  # the bar is complete, and news is visible, at its end
        if config.require_watchlist and not self.on_watchlist_at(symbol, at):
            return None
        sentiment = self.sentiment(symbol, at)
        scored = base_confidence(action, f, sentiment, config)
        if scored is None:
            return None
        base, reasons = scored
        self._last[symbol] = (action, ts)
        mult = volume_multiplier(f.volume_ratio)
        ratio = f.volume_ratio
        reasons.append(
            f"volume ratio {'n/a' if ratio is None else f'{ratio:.2f}'} -> x{mult}"
            + (" (killed)" if mult == 0.0 else "")
        )
        return new_record(
            Recommendation,
            recommendation_id(config.strategy_version, symbol, ts, action),
            symbol,
            ts,
            action,
            base,
            mult,
            base * mult,
            sentiment,
            f"{action}: " + "; ".join(reasons),
            features_snapshot(f),
            config.strategy_version,
        )

    # -- state --------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "strategy_version": self.config.strategy_version,
            "last": {s: [a, t.isoformat()] for s, (a, t) in sorted(self._last.items())},
            "sentiment": self.sentiment_book.to_state(),
            "listed": {s: t.isoformat() for s, t in sorted(self._listed.items())},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: StrategyConfig | None = None) -> Self:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown SignalRule state version {state.get('version')!r}")
        rule = cls(config)
        if state["strategy_version"] != rule.config.strategy_version:
            raise ValueError(
                f"SignalRule state of {state['strategy_version']!r}, config is "
                f"{rule.config.strategy_version!r}"
            )
        rule._last = {s: (a, datetime.fromisoformat(t)) for s, (a, t) in state["last"].items()}
        rule.sentiment_book.load(state["sentiment"])
        rule._listed = {s: datetime.fromisoformat(t) for s, t in state["listed"].items()}
        return rule


def strategy_from_settings(settings: Any, **overrides: Any) -> StrategyConfig:
    """StrategyConfig from the settings fields the settings owner adds (defaults otherwise)."""
    conf: dict[str, Any] = {}
    for name, attr in (
        ("strategy_version", "strategy_version"),
        ("sentiment_half_life_minutes", "sentiment_half_life_minutes"),
        ("sentiment_window_minutes", "sentiment_window_minutes"),
        ("require_watchlist", "signals_require_watchlist"),
    ):
        value = getattr(settings, attr, None)
        if value is not None:
            conf[name] = value
    conf.update(overrides)
    return StrategyConfig(**conf)
