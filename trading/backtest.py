"""The in-process backtester: the live objects over bars with bar time as the clock, each minute in
the dispatch agent's canonical order, so a backtest and a replay decide alike.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

from schemas.records import (
    Bar,
    Execution,
    Features,
    Recommendation,
    ReconcileEvent,
    ScoredNews,
    WatchlistEntry,
)
from trading.accounts import AccountDesk
from trading.broker import broker_key, decided_at
from trading.calendar import SessionCalendar
from trading.clock import MINUTE
from trading.features import FeatureEngine, InvalidBar, OutOfOrderBar
from trading.gates import AccountConfig
from trading.ledger import Ledger
from trading.option_desk import cfg_is_option, modelled_accounts
from trading.ordering import canonical_key
from trading.signals import SignalRule, StrategyConfig
from trading.watchlist import WatchlistBuilder, WatchlistConfig

PROGRESS_EVERY = 50_000  # bars between two progress calls (each redraws a progress bar)
BarRow = tuple[datetime, str, float, int, int]  # what the engine reads of a bar
_BAR_ROW = attrgetter("ts", "symbol", "close", "volume", "revision")


@dataclass
class BacktestResult:
    features: list[Features] = field(default_factory=list)
    signals: list[Recommendation] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)
    watchlist: list[WatchlistEntry] = field(default_factory=list)
    reconcile: list[ReconcileEvent] = field(default_factory=list)
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    bars: int = 0
    skipped_bars: int = 0
    seconds: float = 0.0

    @property
    def bars_per_s(self) -> float | None:
        return self.bars / self.seconds if self.seconds > 0 else None

    def summaries(self) -> list[dict[str, Any]]:
        out = [led.summary(bars=self.bars, seconds=self.seconds) for led in self.ledgers.values()]
        modelled = modelled_accounts(self.executions)  # option results on Black-Scholes chains
        for summary in out:
            if summary["account"] in modelled:
                summary["modelled"] = True
        return out


class Backtester:
    """One pass over bars. Holds the same state the live agents hold, nothing else."""

    def __init__(
        self,
        accounts: Sequence[AccountConfig],
        calendar: SessionCalendar,
        strategy: StrategyConfig | None = None,
        watchlist: WatchlistConfig | None = None,
        *,
        keep_features: bool = True,
        synthetic_iv: float | None = None,
    ) -> None:
        self.rule = SignalRule(strategy)
        self.desks = [AccountDesk(cfg, calendar) for cfg in accounts]
        for desk in self.desks:  # research over bars only: option accounts price chains at this IV
            if cfg_is_option(desk.config):
                desk.synthetic_iv = synthetic_iv
        self.watchlist = WatchlistBuilder(watchlist) if self.rule.config.require_watchlist else None
        self.engines: dict[str, FeatureEngine] = {}
        self.keep_features = keep_features
        self.marks: dict[str, float] = {}  # last close per symbol, shared by every ledger
        self._broker: list[Any] = []  # broker records in canonical order, and the next to apply
        self._broker_next = 0
        self.result = BacktestResult(
            ledgers={cfg.name: Ledger(cfg.name, cfg.starting_cash, marks=self.marks) for cfg in accounts}
        )

    def add_broker(self, records: Iterable[Any]) -> int:
        """Broker snapshots and option quotes (broker.accounts, broker.positions, options.quotes), in
        any order: each is decided on before the bars of its event minute, as the dispatch agent does."""
        self._broker = sorted([*self._broker[self._broker_next:], *records], key=broker_key)
        self._broker_next = 0
        return len(self._broker)

    def _apply_broker(self, upto: datetime | None) -> None:
        """Folds the broker records whose event minute is at or before `upto` (None: all)."""
        pending = self._broker
        i = self._broker_next
        res = self.result
        while i < len(pending):
            record = pending[i]
            if upto is not None and broker_key(record)[0] > upto:
                break
            i += 1
            now = decided_at(record)
            for desk in self.desks:
                execs, events = desk.on_broker(record, now)
                res.reconcile.extend(events)
                for e in execs:
                    res.executions.append(e)
                    res.ledgers[e.account].on_execution(e)
        self._broker_next = i

    def add_news(self, items: Iterable[ScoredNews]) -> int:
        """Scored news, in any order: the sentiment window only counts items published by its time."""
        return sum(1 for n in items if self.rule.on_news(n))

    def run(self, bars: Iterable[Bar], progress: Callable[[int], None] | None = None) -> BacktestResult:
        return self.run_rows(map(_BAR_ROW, bars), progress)

    def run_rows(
        self, rows: Iterable[BarRow], progress: Callable[[int], None] | None = None
    ) -> BacktestResult:
        """`run` over what it reads of each bar, (ts, symbol, close, volume, revision), in replay order:
        a caller holding bars as columns need not make a Bar record of each."""
        res = self.result
        # The cyclic GC would walk every live object (the input bars, the outputs kept) thousands
        # of times over a long run, for nothing: what the loop makes is acyclic. It is off while
        # the loop runs, existing objects frozen out of the collection that follows.
        gc.collect()
        gc.freeze()
        enabled = gc.isenabled()
        gc.disable()
        started = time.perf_counter()
        try:
            count = self._loop(rows, progress)
        finally:
            res.seconds += time.perf_counter() - started
            if enabled:
                gc.enable()
            gc.unfreeze()
        res.bars += count
        return res

    def _loop(self, rows: Iterable[BarRow], progress: Callable[[int], None] | None) -> int:
        res = self.result
        engines = self.engines
        rule = self.rule
        ledgers = list(res.ledgers.values())
        keep = self.keep_features
        features_out = res.features
        signals_out = res.signals
        watch = self.watchlist
        marks = self.marks
        minute: datetime | None = None
        bars_now: list[Features] = []  # this minute's features and signals, decided together
        recs_now: list[Recommendation] = []
        count = 0
        reported = 0  # progress is told every PROGRESS_EVERY bars, not every minute
        for ts, symbol, close, volume, revision in rows:
            if ts != minute:
                if minute is not None:
                    self._decide(bars_now, recs_now)
                    bars_now, recs_now = [], []
                    end = minute + MINUTE
                    for led in ledgers:
                        led.close_minute(end)
                    if progress is not None and count - reported >= PROGRESS_EVERY:
                        progress(count)
                        reported = count
                minute = ts
            engine = engines.get(symbol)
            if engine is None:
                engine = engines[symbol] = FeatureEngine(symbol)
            try:
                f = engine.update(ts, close, volume, revision)
            except (OutOfOrderBar, InvalidBar):
                res.skipped_bars += 1
                continue
            count += 1
            if f is None:
                continue  # an exact repeat
            if keep:
                features_out.append(f)
            marks[symbol] = close
            bars_now.append(f)
            if watch is not None:
                entries = watch.on_features(f)
                if entries:
                    res.watchlist.extend(entries)
                    rule.on_watchlist(entries)
            rec = rule.on_features(f)
            if rec is not None:
                signals_out.append(rec)
                recs_now.append(rec)
        if minute is not None:
            self._decide(bars_now, recs_now)
            for led in ledgers:
                led.close_minute(minute + MINUTE)
            if progress is not None:
                progress(count)
        if self._broker:
            self._apply_broker(None)
        return count

    def _decide(self, bars_now: list[Features], recs_now: list[Recommendation]) -> None:
        """One minute's decisions in the canonical order (trading.ordering): the bars (exits) by
        symbol, then the signals by symbol, as the dispatch agent releases them."""
        if self._broker and (bars_now or recs_now):
            self._apply_broker((bars_now or recs_now)[0].ts)
        desks = self.desks
        res = self.result
        by_name = res.ledgers
        out = res.executions
        holding = [d for d in desks if d.state.book._positions]
        if holding and bars_now:
            if len(bars_now) > 1:
                bars_now.sort(key=canonical_key)
            ts = bars_now[0].ts  # one minute's records: one ts
            now = ts + MINUTE
            for f in bars_now:
                made_any = False
                for desk in holding:
                    made = desk.on_bar(f.symbol, ts, f.close, now)
                    if made:
                        made_any = True
                        for e in made:
                            out.append(e)
                            by_name[e.account].on_execution(e)
                if made_any:
                    holding = [d for d in desks if d.state.book._positions]
                    if not holding:
                        break
        if recs_now:
            if len(recs_now) > 1:
                recs_now.sort(key=canonical_key)
            now = recs_now[0].ts + MINUTE
            for rec in recs_now:
                for desk in desks:
                    decided = desk.on_recommendation(rec, now)
                    if decided is not None:
                        out.append(decided)
                        by_name[decided.account].on_execution(decided)
