"""The sample session's broker stream for the demo's shadow account (synthetic, deterministic): what
Alpaca snapshots of a real account would put on broker.accounts and broker.positions, so the demo
and its parity check exercise gates on the broker's truth, a stale snapshot and an external exit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from schemas.records import BrokerAccount, BrokerPosition, ControlEvent
from trading.options import parse_occ

from pipeline.sample_session import MINUTES, OPEN_UTC

SHADOW = {
    "name": "shadow-100k",
    "base": "large-100k",
    "broker_truth": True,  # a simulate account whose gates read the (recorded) broker state
    "manage_external": "exit",
}
EXTERNAL_CALL = "QCOM261127C00150000"  # held before the session, expires a week later
EXTERNAL_STOCK = "NVDA"
EVERY = timedelta(minutes=1)  # Alpaca is read every 30 s live; one a minute is enough here
OFFSET = timedelta(seconds=20)  # a snapshot lands 20 s into its minute
BLACKOUT = (OPEN_UTC + timedelta(hours=3, minutes=30), OPEN_UTC + timedelta(hours=4))  # no snapshots
LOW_POWER = (OPEN_UTC + timedelta(hours=1, minutes=30), OPEN_UTC + timedelta(hours=3))  # a margin squeeze
STOCK_HELD = (OPEN_UTC + timedelta(minutes=30), OPEN_UTC + timedelta(hours=5))


def _call_price(t: datetime) -> float:
    """The external call's mark: drifts down through the morning, below the -50% stop after 2.5 h."""
    minutes = (t - OPEN_UTC).total_seconds() / 60.0
    return round(max(0.5, 3.0 - minutes * 0.011), 2)


def broker_stream(account: str = SHADOW["name"]) -> list[Any]:
    """Every record of the session, in time order."""
    out: list[Any] = []
    occ = parse_occ(EXTERNAL_CALL)
    assert occ is not None
    end = OPEN_UTC + timedelta(minutes=MINUTES)
    t = OPEN_UTC
    while t < end:
        as_of = t + OFFSET
        t += EVERY
        if BLACKOUT[0] <= as_of < BLACKOUT[1]:
            continue
        power = 4_000.0 if LOW_POWER[0] <= as_of < LOW_POWER[1] else 60_000.0
        price = _call_price(as_of)
        out.append(BrokerPosition(account, EXTERNAL_CALL, as_of, "us_option", 2.0, 3.0, 2 * price * 100,
                                  600.0, (price - 3.0) * 200, (price - 3.0) / 3.0, price, "external",
                                  occ.underlying, occ.expiration.isoformat(), occ.option_type, occ.strike,
                                  100.0))
        held = STOCK_HELD[0] <= as_of < STOCK_HELD[1]
        qty = 40.0 if held else 0.0
        out.append(BrokerPosition(account, EXTERNAL_STOCK, as_of, "us_equity", qty, 140.0, qty * 141.0,
                                  qty * 140.0, qty * 1.0, 1 / 140.0, 141.0, "external"))
        out.append(BrokerAccount(account, as_of, "ACTIVE", "USD", 50_000.0, power, power / 2, 100_000.0,
                                 100_000.0, 6_200.0, 0.0, 2, False, [], "poll"))
    return out


def control_stream() -> list[ControlEvent]:
    """The operator's changes during the session: a lower confidence bar for large-100k from
    midday, and tiny-1k halted for an hour while it holds positions (its exits go on)."""
    def at(minutes: int) -> datetime:
        return OPEN_UTC + timedelta(minutes=minutes, seconds=10)

    return [
        ControlEvent("demo-set-large-100k", "large-100k", "set", at(120), "demo: lower the bar at midday",
                     {"min_confidence": "0.6"}, False, "demo"),
        ControlEvent("demo-halt-tiny-1k", "tiny-1k", "halt", at(90), "demo: operator halt", {}, False, "demo"),
        ControlEvent("demo-resume-tiny-1k", "tiny-1k", "resume", at(150), "demo: resumed", {}, False, "demo"),
    ]
