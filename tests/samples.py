"""One plausible record per contract topic, shared by the codec and broker round-trip tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from schemas.records import (
    Alert,
    Bar,
    BrokerAccount,
    BrokerOrder,
    BrokerPosition,
    ControlEvent,
    EquityPoint,
    OptionQuote,
    ReconcileEvent,
    Execution,
    Features,
    GateResult,
    MinuteClosed,
    NewsItem,
    Position,
    Recommendation,
    Record,
    ScoredNews,
    WatchlistEntry,
)


def sample_records(ts: datetime) -> dict[str, Record]:
    """One plausible record per contract topic (also used by the tests)."""
    feats = Features(
        "AAPL",
        ts,
        190.1,
        189.9,
        189.5,
        12000,
        8000.0,
        1.5,
        False,
        55.0,
        0.12,
        0.10,
        0.02,
        191.0,
        189.9,
        188.8,
        60,
        0,
    )
    return {
        "market.bars.1m": Bar("AAPL", ts, 190.0, 190.3, 189.8, 190.1, 12000, 85, 190.05, "replay", 0),
        "news.raw": NewsItem(
            "n-1", "demo", "Apple beats estimates", "Revenue up", "https://example.invalid/a", ts, ts, False
        ),
        "news.scored": ScoredNews("n-1", "AAPL", ["AAPL"], "positive", 0.93, "lexicon:vader", ts),
        "features.1m": feats,
        "signals": Recommendation(
            "4b9d1c5e-0000-5000-8000-000000000001",
            "AAPL",
            ts,
            "BUY",
            0.8,
            1.0,
            0.8,
            0.4,
            "trend up, sentiment agrees",
            {"close": 190.1, "sma_20": None},
            "demo-1",
        ),
        "executions": Execution(
            "4b9d1c5e-0000-5000-8000-000000000001",
            "large-100k",
            "AAPL",
            "BUY",
            "SIMULATED",
            [GateResult("confidence", True, 0.8, 0.7, "ok")],
            None,
            10.0,
            190.12,
            ts,
            None,
            None,
            "simulate",
            ts,
            "entry",
        ),
        "positions": Position("large-100k", "AAPL", 10.0, 190.12, ts, 186.3, 197.7, "OPEN", 0.0, ts, None),
        "watchlist": WatchlistEntry("AAPL", ts, 0.82, 1, 1.5, 0.004, 0.4, ["volume", "momentum"]),
        "broker.accounts": BrokerAccount(
            "large-100k", ts, "ACTIVE", "USD", 95_000.0, 190_000.0, 95_000.0, 121_000.0, 120_500.0,
            26_000.0, 0.0, 2, False,
            [BrokerOrder("6f1d-order", None, "QCOM260206C00150000", "us_option", "sell", 1.0, 0.0, "limit",
                         "simple", "new", 4.2, None, None, ts)],
            "poll",
        ),
        "broker.positions": BrokerPosition(
            "large-100k", "QCOM260206C00150000", ts, "us_option", 2.0, 3.1, 840.0, 620.0, 220.0, 0.3548,
            4.2, "external", "QCOM", "2026-02-06", "call", 150.0, 100.0,
        ),
        "options.quotes": OptionQuote(
            "QCOM260206C00150000", "QCOM", ts, 4.1, 4.3, 12.0, 8.0, 4.2, 0.31, 0.52, 0.04, -0.08, 0.12,
            "snapshot", ts, expiration="2026-02-06", strike=150.0, option_type="call", open_interest=1840,
            penny_program=True, underlying_price=151.2, chain_id=f"QCOM@{ts:%Y-%m-%dT%H:%M:%SZ}",
            chain_as_of=ts,
        ),
        "equity": EquityPoint("large-100k", ts, 121_000.0, 95_000.0, 150.0, 220.0, 1, "broker"),
        "reconcile": ReconcileEvent(
            "large-100k", ts, ts, "closed_at_broker", "AAPL", "OPEN 10 @ 190.12", "flat", "adopted",
            "the position was closed at the broker (a manual sale or a bracket leg)",
        ),
        "alerts": Alert("stage_missing", "dispatch", "firing", "critical", ts, ts,
                        "stage dispatch: no consumer group for 2 min", {"group": "ops-pipeline-dispatch"}),
        "control": ControlEvent("c-1", "*", "set", ts, "lower the bar for the afternoon",
                                {"min_confidence": "0.65"}, False, "ops"),
        "clock.minutes": MinuteClosed("signals", 3, ts, "complete", 1042, 2210, ts),
    }


def poll_until(
    cond: Callable[[], bool], deadline_s: float, what: str, alive: Callable[[], bool], poll_s: float = 0.2
) -> None:
    """Poll `cond` until it holds; fail if `alive()` turns false or `deadline_s` passes first."""
    end = time.monotonic() + deadline_s
    while not cond():
        assert alive(), f"the stage died while waiting for {what}"
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(poll_s)
