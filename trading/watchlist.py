"""The watchlist: every 5 minutes of bar time the universe ranked, top-N published; windows close on
bar time (never the wall clock), so a replay produces the live run's watchlist.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from schemas.records import WatchlistEntry

SentimentLookup = Callable[[str, datetime], float | None]

_STATE_VERSION = 1
_NONE: tuple[WatchlistEntry, ...] = ()  # the common answer, without an allocation


@dataclass(frozen=True, slots=True)
class WatchlistConfig:
    window_minutes: int = 5
    top_n: int = 5
    grace_minutes: int = 10
    universe: tuple[str, ...] = ()
    w_volume: float = 0.35
    w_momentum: float = 0.30
    w_sentiment: float = 0.20
    w_liquidity: float = 0.15
    volume_full: float = 3.0  # mean volume ratio that scores 1 (a surge)
    momentum_full: float = 0.01  # |return over the window| that scores 1
    liquidity_floor: float = 1e3  # mean dollar volume per bar scoring 0 ...
    liquidity_full: float = 1e6  # ... and 1 (IEX volumes: AAPL is around $0.5M a minute)

    def __post_init__(self) -> None:
        if self.window_minutes <= 0 or self.top_n <= 0 or self.grace_minutes < 0:
            raise ValueError("window_minutes and top_n must be positive, grace_minutes >= 0")


class _Acc:
    """One symbol's bars in one window."""

    __slots__ = ("first_close", "last_close", "last_ts", "last_ratio", "last_dollar", "sum_ratio",
                 "n_ratio", "sum_dollar", "n")

    def __init__(self, close: float) -> None:
        self.first_close = close
        self.last_close = close
        self.last_ts = -1
        self.last_ratio: float | None = None
        self.last_dollar = 0.0
        self.sum_ratio = 0.0
        self.n_ratio = 0
        self.sum_dollar = 0.0
        self.n = 0

    def to_state(self) -> list[Any]:
        return [self.first_close, self.last_close, self.last_ts, self.sum_ratio, self.n_ratio,
                self.sum_dollar, self.n, self.last_ratio, self.last_dollar]

    @classmethod
    def from_state(cls, s: list[Any]) -> _Acc:
        acc = cls(float(s[0]))
        acc.last_close, acc.last_ts = float(s[1]), int(s[2])
        acc.sum_ratio, acc.n_ratio = float(s[3]), int(s[4])
        acc.sum_dollar, acc.n = float(s[5]), int(s[6])
        acc.last_ratio = None if s[7] is None else float(s[7])
        acc.last_dollar = float(s[8])
        return acc


def _reasons(ratio: float | None, momentum: float, sentiment: float | None, dollar: float) -> list[str]:
    return [
        f"volume ratio {'n/a' if ratio is None else f'{ratio:.2f}'}",
        f"momentum {momentum:+.3%}",
        f"sentiment {'n/a' if sentiment is None else f'{sentiment:+.2f}'}",
        f"liquidity ${dollar:,.0f}/bar",
    ]


class _Sym:
    """One symbol's latest bar (ts, revision) and the window (and accumulator) it is in."""

    __slots__ = ("t", "rev", "w", "acc")

    def __init__(self) -> None:
        self.t = -1
        self.rev = -1
        self.w = -1
        self.acc: _Acc | None = None


class WatchlistBuilder:
    """Feeds on features (any object with symbol, ts, close, volume_current, volume_ratio, revision)."""

    __slots__ = ("config", "sentiment", "late", "duplicates", "_w", "_grace", "_universe", "_open",
                 "_advanced", "_syms", "_prev_close", "_max_ts", "_closed_upto", "_last_dt", "_last_t")

    def __init__(self, config: WatchlistConfig | None = None, sentiment: SentimentLookup | None = None):
        self.config = config or WatchlistConfig()
        self.sentiment = sentiment
        self.late = 0  # bars that arrived after their window closed
        self.duplicates = 0  # bars not newer than the symbol's last one (same minute: a lower revision)
        self._w = self.config.window_minutes * 60
        self._grace = self.config.grace_minutes * 60
        self._universe = frozenset(self.config.universe)
        self._open: dict[int, dict[str, _Acc]] = {}  # window start (epoch s) -> symbol -> acc
        self._advanced: dict[int, set[str]] = {}  # window start -> symbols with later bars
        self._syms: dict[str, _Sym] = {}  # symbol -> its latest bar and window
        self._prev_close: dict[str, float] = {}  # symbol -> last close of its last closed window
        self._max_ts = -1
        self._closed_upto = -1  # every window starting before this is closed
        self._last_dt: Any = None
        self._last_t = 0

    def on_features(self, f: Any) -> Sequence[WatchlistEntry]:
        """Adds a bar; returns the entries of any window this bar closes (usually none)."""
        ts = f.ts
        if ts == self._last_dt:  # the symbols of one minute share it: convert once
            t = self._last_t
        else:
            t = int(ts.timestamp())
            self._last_dt = ts
            self._last_t = t
        symbol = f.symbol
        revision = f.revision
        sym = self._syms.get(symbol)
        if sym is None:
            sym = self._syms[symbol] = _Sym()
        elif t < sym.t or (t == sym.t and revision <= sym.rev):
            self.duplicates += 1  # a bar again (a redelivery, a replay over live state): no effect
            return _NONE
        sym.t = t
        sym.rev = revision
        w = t - t % self._w
        if w < self._closed_upto:
            self.late += 1
            return _NONE
        moved = False
        acc = sym.acc
        if w != sym.w:
            window = self._open.get(w)
            if window is None:
                window = self._open[w] = {}
                self._advanced[w] = set()
            acc = window.get(symbol)
            if acc is None:
                acc = window[symbol] = _Acc(f.close)
            if w > sym.w:
                # the symbol moved on: a window it leaves behind may be complete now
                for ow, advanced in self._advanced.items():
                    if ow < w:
                        advanced.add(symbol)
                        moved = True
                sym.w = w
                sym.acc = acc
        assert acc is not None
        close = f.close
        ratio = f.volume_ratio
        dollar = close * f.volume_current
        if t == acc.last_ts:  # a revised bar replaces the previous version of its minute
            if acc.last_ratio is not None:
                acc.sum_ratio -= acc.last_ratio
                acc.n_ratio -= 1
            acc.sum_dollar -= acc.last_dollar
            acc.n -= 1
        # t >= acc.last_ts: older bars and lower revisions were dropped above
        acc.last_close = close
        acc.last_ts = t
        acc.last_ratio = ratio
        acc.last_dollar = dollar
        if ratio is not None:
            acc.sum_ratio += ratio
            acc.n_ratio += 1
        acc.sum_dollar += dollar
        acc.n += 1
        if t > self._max_ts:
            self._max_ts = t
            moved = True
        return self._close_ready() if moved else _NONE

    def _close_ready(self) -> Sequence[WatchlistEntry]:
        out: list[WatchlistEntry] = []
        if not self._open:
            return _NONE
        while self._open:
            oldest = min(self._open)
            end = oldest + self._w
            everyone_moved = bool(self._universe) and self._universe <= self._advanced[oldest]
            if not (everyone_moved or self._past_grace(end)):
                break
            out.extend(self._close(oldest))
        return out

    def _past_grace(self, end: int) -> bool:
        """At least half of the symbols have bars `grace` beyond the window's end: the others are
        silent (halted, no trades), not late. Half, not one: a consumer catching up reads some
        partitions ahead of others, and one fast partition must not close windows early."""
        if self._max_ts + 60 < end + self._grace:
            return False
        horizon = end + self._grace - 60
        symbols = self._universe or self._syms.keys()
        ahead = sum(1 for s in symbols if (sym := self._syms.get(s)) is not None and sym.t >= horizon)
        return 2 * ahead >= len(symbols)

    def flush(self) -> list[WatchlistEntry]:
        """Closes every open window (the end of a replay or a backtest)."""
        out: list[WatchlistEntry] = []
        while self._open:
            out.extend(self._close(min(self._open)))
        return out

    def _close(self, w: int) -> list[WatchlistEntry]:
        window = self._open.pop(w)
        self._advanced.pop(w, None)
        self._closed_upto = max(self._closed_upto, w + self._w)
        end = datetime.fromtimestamp(w + self._w, tz=UTC)
        scored = []
        for symbol, acc in window.items():
            scored.append(self._score(symbol, acc, end))
            self._prev_close[symbol] = acc.last_close
        scored.sort(key=lambda r: (-r[0], r[1]))
        return [  # reasons are only written for what is published
            WatchlistEntry(symbol=sym, ts=end, score=score, rank=rank, volume_ratio=ratio,
                           momentum=mom, sentiment=sent, reasons=_reasons(ratio, mom, sent, dollar))
            for rank, (score, sym, ratio, mom, sent, dollar) in enumerate(
                scored[: self.config.top_n], start=1
            )
        ]

    def _score(
        self, symbol: str, acc: _Acc, end: datetime
    ) -> tuple[float, str, float | None, float, float | None, float]:
        c = self.config
        ratio = acc.sum_ratio / acc.n_ratio if acc.n_ratio else None
        base = self._prev_close.get(symbol, acc.first_close)
        momentum = acc.last_close / base - 1.0 if base else 0.0
        dollar = acc.sum_dollar / acc.n if acc.n else 0.0
        sentiment = self.sentiment(symbol, end) if self.sentiment is not None else None
        vol_s = min(ratio / c.volume_full, 1.0) if ratio else 0.0
        mom_s = min(abs(momentum) / c.momentum_full, 1.0)
        sent_s = min(abs(sentiment), 1.0) if sentiment is not None else 0.0
        liq_s = 0.0
        if dollar > 0:
            lo, hi = math.log10(c.liquidity_floor), math.log10(c.liquidity_full)
            liq_s = min(max((math.log10(dollar) - lo) / (hi - lo), 0.0), 1.0)
        score = round(c.w_volume * vol_s + c.w_momentum * mom_s + c.w_sentiment * sent_s
                      + c.w_liquidity * liq_s, 9)
        return score, symbol, ratio, momentum, sentiment, dollar

    def to_state(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "open": {str(w): {s: a.to_state() for s, a in sorted(win.items())}
                     for w, win in sorted(self._open.items())},
            "advanced": {str(w): sorted(s) for w, s in sorted(self._advanced.items())},
            "syms": {s: [v.t, v.rev, v.w] for s, v in sorted(self._syms.items())},
            "prev_close": dict(sorted(self._prev_close.items())),
            "max_ts": self._max_ts,
            "closed_upto": self._closed_upto,
            "late": self.late,
            "duplicates": self.duplicates,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: WatchlistConfig | None = None,
                   sentiment: SentimentLookup | None = None) -> Self:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown WatchlistBuilder state version {state.get('version')!r}")
        b = cls(config, sentiment)
        b._open = {int(w): {s: _Acc.from_state(a) for s, a in win.items()}
                   for w, win in state["open"].items()}
        b._advanced = {int(w): set(s) for w, s in state["advanced"].items()}
        for s, (t, rev, w) in state["syms"].items():
            sym = b._syms[s] = _Sym()
            sym.t, sym.rev, sym.w = int(t), int(rev), int(w)
            sym.acc = b._open.get(sym.w, {}).get(s)
        b._prev_close = {s: float(c) for s, c in state["prev_close"].items()}
        b._max_ts = int(state["max_ts"])
        b._closed_upto = int(state["closed_upto"])
        b.late = int(state["late"])
        b.duplicates = int(state["duplicates"])
        return b
