"""Properties of the trading core: state round-trips, determinism, restart = no restart."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import Execution, Features, Recommendation
from trading.accounts import AccountDesk, with_status
from trading.calendar import TradingCalendar
from trading.gates import LARGE_100K, TINY_1K, AccountState, Mode
from trading.positions import ExitRules
from trading.signals import SignalRule, recommendation_id
from trading.watchlist import WatchlistBuilder, WatchlistConfig

CAL = TradingCalendar()
T0 = datetime(2024, 3, 12, 13, 30, tzinfo=UTC)  # the open, 09:30 New York
SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA")
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# one event: (kind, symbol index, minute offset, action, confidence, close)
event = st.tuples(
    st.sampled_from(("rec", "bar", "bar")),
    st.integers(0, len(SYMBOLS) - 1),
    st.integers(0, 400),
    st.sampled_from(("BUY", "SELL")),
    st.floats(0.0, 1.2),
    st.floats(90.0, 110.0),
)
events = st.lists(event, min_size=1, max_size=80).map(lambda evs: sorted(evs, key=lambda e: e[2]))


def _rec(symbol: str, action: str, ts: datetime, conf: float, close: float) -> Recommendation:
    return Recommendation(
        id=recommendation_id("p", symbol, ts, action), symbol=symbol, ts=ts, action=action,
        base_confidence=conf, volume_multiplier=1.0, confidence=conf, sentiment=None, reason="",
        features={"close": close}, strategy_version="p",
    )


def run(desk: AccountDesk, evs: list[tuple[Any, ...]], fills: list[bool] | None = None,
        start: int = 0) -> list[Execution]:
    """Drive a desk; in alpaca mode every SUBMITTED gets its broker outcome right away."""
    out: list[Execution] = []
    for i, (kind, s, m, action, conf, close) in enumerate(evs, start=start):
        ts = T0 + timedelta(minutes=m)
        now = ts + timedelta(minutes=1)
        made: Sequence[Execution]
        if kind == "rec":
            e = desk.on_recommendation(_rec(SYMBOLS[s], action, ts, conf, close), now)
            made = [] if e is None else [e]
        else:
            made = desk.on_bar(SYMBOLS[s], ts, close, now)
        for e in made:
            out.append(e)
            if e.status == "SUBMITTED" and fills is not None:
                ok = fills[i % len(fills)]
                update = with_status(e, "FILLED", price=close * 1.001, broker_order_id=f"b{i}") if ok \
                    else with_status(e, "FAILED", failure_reason="rejected")
                desk.apply(update)
                out.append(update)
    return out


NO_TRAIL = ExitRules(trailing_stop_pct=None)  # the trail's high-water mark is not in executions


def _desk(mode: str = "simulate", tiny: bool = False) -> AccountDesk:
    base = TINY_1K if tiny else LARGE_100K
    config = replace(base, mode=cast(Mode, mode), exits=NO_TRAIL, daily_loss_limit=base.daily_loss_limit / 20)
    return AccountDesk(config, CAL)


@PROPS
@given(evs=events, tiny=st.booleans())
def test_same_inputs_same_decisions(evs: list[tuple[Any, ...]], tiny: bool) -> None:
    assert run(_desk(tiny=tiny), evs) == run(_desk(tiny=tiny), evs)


def _as_partitions(history: list[Execution]) -> list[Execution]:
    """The executions topic as a restart reads it: partition after partition, each in order."""
    parts: dict[int, list[Execution]] = {}
    for e in history:
        parts.setdefault(hash(e.key()) % 6, []).append(e)
    return [e for p in sorted(parts) for e in parts[p]]


@PROPS
@given(evs=events, cut=st.integers(0, 80), mode=st.sampled_from(("simulate", "alpaca-paper")),
       fills=st.lists(st.booleans(), min_size=1, max_size=5))
def test_restart_from_the_executions_topic_changes_nothing(
    evs: list[tuple[Any, ...]], cut: int, mode: str, fills: list[bool]
) -> None:
    cut = min(cut, len(evs))
    f = fills if mode != "simulate" else None
    live = _desk(mode)
    full = run(live, evs, f)
    before = _desk(mode)
    history = run(before, evs[:cut], f)
    restarted = _desk(mode)
    restarted.rebuild(_as_partitions(history))
    # the redelivered tail (the whole prefix again) decides nothing twice
    assert run(restarted, evs[:cut], f) == []
    after = run(restarted, evs[cut:], f, start=cut)
    assert history + after == full
    last = T0 + timedelta(days=1)
    for d in (live, restarted):
        d.state.submits_within(last, 60.0)
    assert _without_marks(restarted.state.to_state()) == _without_marks(live.state.to_state())


def _without_marks(state: dict[str, Any]) -> dict[str, Any]:
    """The state minus what bars alone set (the trail's high-water mark), which executions lack."""
    for p in state["book"]["positions"]:
        p.pop("extreme")
    return state


@PROPS
@given(evs=events)
def test_account_state_round_trips_through_json(evs: list[tuple[Any, ...]]) -> None:
    desk = _desk()
    run(desk, evs)
    state = json.loads(json.dumps(desk.state.to_state()))
    assert AccountState.from_state(state, NO_TRAIL).to_state() == desk.state.to_state()


prices = st.lists(st.floats(95.0, 105.0), min_size=60, max_size=140)


def _features(closes: list[float], seed: int) -> list[Features]:
    from trading.features import FeatureEngine

    rnd = random.Random(seed)
    engine = FeatureEngine("AAPL")
    out = []
    for i, c in enumerate(closes):
        v = engine.update(T0 + timedelta(minutes=i), c, rnd.randint(0, 5000))
        assert v is not None
        out.append(Features(**{k: getattr(v, k) for k in Features.field_names()}))
    return out


@PROPS
@given(closes=prices, seed=st.integers(0, 2**16), cut=st.integers(0, 140))
def test_signal_rule_round_trips_mid_stream(closes: list[float], seed: int, cut: int) -> None:
    feats = _features(closes, seed)
    a = SignalRule()
    for f in feats[:cut]:
        a.on_features(f)
    b = SignalRule.from_state(json.loads(json.dumps(a.to_state())))
    for f in feats[cut:]:
        assert a.on_features(f) == b.on_features(f)


@dataclass
class Bar:
    symbol: str
    ts: datetime
    close: float
    volume_current: int
    volume_ratio: float | None
    revision: int = 0


@PROPS
@given(seed=st.integers(0, 2**32), lag=st.integers(0, 8), minutes=st.integers(5, 40))
def test_watchlist_does_not_depend_on_interleaving(seed: int, lag: int, minutes: int) -> None:
    """Per-symbol order kept, symbols interleaved with up to `lag` minutes of skew (< grace):
    the watchlist is the one of the bars in time order, as a replay must reproduce live."""
    rnd = random.Random(seed)
    cfg = WatchlistConfig(universe=SYMBOLS, top_n=3, grace_minutes=10)
    per_symbol = {
        s: [Bar(s, T0 + timedelta(minutes=m), 100 + rnd.uniform(-2, 2), rnd.randint(0, 9000),
                rnd.choice([None, rnd.uniform(0, 5)])) for m in range(minutes)]
        for s in SYMBOLS
    }
    in_order = [b for m in range(minutes) for b in (per_symbol[s][m] for s in SYMBOLS)]
    ref = WatchlistBuilder(cfg)
    expected = [e for b in in_order for e in ref.on_features(b)] + ref.flush()
    # a random merge where no symbol runs more than `lag` minutes ahead of the slowest one
    cursors = dict.fromkeys(SYMBOLS, 0)
    shuffled = []
    while any(cursors[s] < minutes for s in SYMBOLS):
        slowest = min(cursors[s] for s in SYMBOLS)
        ready = [s for s in SYMBOLS if cursors[s] < minutes and cursors[s] <= slowest + lag]
        s = rnd.choice(ready)
        shuffled.append(per_symbol[s][cursors[s]])
        cursors[s] += 1
    got_b = WatchlistBuilder(cfg)
    got = [e for b in shuffled for e in got_b.on_features(b)] + got_b.flush()
    assert got == expected


@PROPS
@given(evs=events, mode=st.sampled_from(("simulate", "alpaca-paper")),
       fills=st.lists(st.booleans(), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_positions_projection_does_not_depend_on_partition_order(
    evs: list[tuple[Any, ...]], mode: str, fills: list[bool], seed: int
) -> None:
    from trading.positions import PositionProjection

    desk = _desk(mode)
    history = run(desk, evs, fills if mode != "simulate" else None)
    in_order = PositionProjection({"large-100k": NO_TRAIL})
    for e in history:
        in_order.apply(e)
    # partitions interleaved at random, each partition in its own order
    parts: dict[int, list[Execution]] = {}
    for e in history:
        parts.setdefault(hash(e.key()) % 6, []).append(e)
    rnd = random.Random(seed)
    queues = [list(p) for p in parts.values()]
    shuffled = PositionProjection({"large-100k": NO_TRAIL})
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        shuffled.apply(q.pop(0))
    for sym in SYMBOLS:
        a, b = in_order.current("large-100k", sym), shuffled.current("large-100k", sym)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert (a.status, a.qty, a.avg_price, a.realized_pnl, a.exit_reason) == \
                (b.status, b.qty, b.avg_price, b.realized_pnl, b.exit_reason)
        desk_pos = desk.state.book.get(sym)
        if desk_pos is not None and desk_pos.status != "PENDING":
            assert a is not None and a.status == "OPEN" and a.qty == desk_pos.qty * desk_pos.side
