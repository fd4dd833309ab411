"""The production defaults behind "a stalled bar stream in market hours makes `status` unhealthy
within 2 minutes and triggers backfill". tests/integration/test_stalled_stream.py plays the whole
story with these same defaults; pinning them here makes a change to one a change to the promise.

With the defaults, from the last bar the stalled socket delivered:
  120 s  status: a symbol without a bar for over `stale_bar_s` while XNYS is open is unhealthy;
  180 s  connector: no data for `stall_timeout_s` in market hours -> reconnect, then a gap check;
  each stalled minute is asked of REST once it ended `gap_settle_s` ago, by that gap check or by
  the `gap_check_interval_s` timer (which runs even while the socket stays open and mute), so it
  is on the topic at most settle + interval = 150 s after it ended.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from connectors.bars_config import BarsConfig
from connectors.gaps import GapDetector, stalled
from pipeline.status import Thresholds
from trading.calendar import TradingCalendar

CAL = TradingCalendar.xnys()
OPEN = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)  # a Friday's open
S = timedelta(seconds=1)
M = timedelta(minutes=1)
CONFIG = BarsConfig(symbols=("AAPL",))


def test_the_defaults_of_the_promise() -> None:
    assert Thresholds().stale_bar_s == 120.0
    assert CONFIG.stall_timeout_s == 180.0
    assert CONFIG.gap_settle_s == 90.0
    assert CONFIG.gap_check_interval_s == 60.0


def test_the_connector_declares_a_stall_after_its_timeout_of_market_hours_silence() -> None:
    timeout = timedelta(seconds=CONFIG.stall_timeout_s)
    last = OPEN + 5 * M + S
    assert not stalled(last, last + timeout - S, timeout, CAL)
    assert stalled(last, last + timeout, timeout, CAL)
    session = CAL.session(OPEN.date())
    assert session is not None  # silence across the close is not a stall
    assert not stalled(session.close - M, session.close - M + timeout, timeout, CAL)


def test_a_stalled_minute_is_due_from_rest_settle_after_it_ends() -> None:
    detector = GapDetector(
        CAL,
        CONFIG.symbols,
        lookback=timedelta(seconds=CONFIG.gap_lookback_s),
        settle=timedelta(seconds=CONFIG.gap_settle_s),
    )
    minute = OPEN + 5 * M
    due_at = minute + M + timedelta(seconds=CONFIG.gap_settle_s)
    assert minute not in detector.due(due_at - S).get("AAPL", [])
    assert minute in detector.due(due_at)["AAPL"]
    assert CONFIG.gap_check_interval_s is not None
    worst = timedelta(seconds=CONFIG.gap_settle_s + CONFIG.gap_check_interval_s)
    assert worst <= timedelta(seconds=150)
