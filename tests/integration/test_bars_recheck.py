"""After a reconnect, REST judges the minutes before the drop: an updated bar Alpaca sent while the
socket was down becomes a new revision on the topic, and a REST failure never stops the stream.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from connectors.alpaca_bars import BarsConnector
from opsinfra.settings import Settings
from tests.fakes import ManualClock, fresh_structlog, wait_until  # noqa: F401 - a fixture
from tests.fakes.alpaca_market import FakeAlpacaRest, FakeAlpacaStream, bar_msg
from tests.integration.test_bars_connector import SYMBOLS, T0, fakes, running, send_minute, topic_bars

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_structlog")]

M = timedelta(minutes=1)


def close(m: int) -> float:
    return 100.0 + m / 10  # what send_minute sends for minute m


def rest_agrees(rest: FakeAlpacaRest, minutes: range) -> None:
    for m in minutes:
        for s in SYMBOLS:
            rest.add(s, T0 + m * M, c=close(m))


def history(settings: Settings, bootstrap: str) -> dict[tuple[str, int], list[tuple[str, int, int, float]]]:
    """(symbol, minute) -> its records in topic order: (source, revision, volume, close)."""
    out: dict[tuple[str, int], list[tuple[str, int, int, float]]] = defaultdict(list)
    for b in topic_bars(settings, bootstrap):
        out[(b.symbol, int((b.ts - T0) / M))].append((b.source, b.revision, b.volume, b.close))
    return out


async def drop_and_reconnect(stream: FakeAlpacaStream, clock: ManualClock, conn: BarsConnector,
                             back_at: datetime) -> None:
    stream.down = True
    await stream.drop()
    await wait_until(lambda: conn.stats.attempts >= 3, what="refused reconnects")
    clock.set(back_at)
    stream.down = False
    await wait_until(lambda: conn.stats.connections == 2, what="reconnect")


def test_a_bar_updated_during_a_drop_gets_a_new_revision_with_rests_values(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            rest_agrees(rest, range(6))
            rest.add("MSFT", T0, c=close(0), v=5000)  # differs, but before the 5-minute window
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    for m in range(6):
                        await send_minute(stream, clock, conn, m)
                    stream.down = True
                    await stream.drop()
                    # late trades while the socket is down: the "u" reaches nobody, REST has it
                    await stream.send([bar_msg("AAPL", T0 + 5 * M, c=100.55, v=1900, n=19, kind="u")])
                    rest.add("AAPL", T0 + 5 * M, c=100.55, v=1900, n=19, vw=100.4)
                    rest.add("TSLA", T0 + 3 * M, c=100.35, v=1250)
                    await wait_until(lambda: conn.stats.attempts >= 3, what="refused reconnects")
                    clock.set(T0 + 10 * M + timedelta(seconds=1))  # a four-minute drop
                    stream.down = False
                    await wait_until(lambda: conn.stats.connections == 2, what="reconnect")
                    await wait_until(lambda: len(conn.stats.recheck_reports) == 1, what="recheck")
                    await send_minute(stream, clock, conn, 10)
                asks = [r for r in rest.requests if _ts(r["start"]) == T0 + M]
                assert [(_ts(r["end"]), r["feed"]) for r in asks] == [(T0 + 5 * M, "iex")]
                return conn

    conn = asyncio.run(scenario())
    got = history(provisioned, kafka_bootstrap)
    assert got[("AAPL", 5)] == [("live", 0, 1200, close(5)), ("backfill", 1, 1900, 100.55)]
    assert got[("TSLA", 3)] == [("live", 0, 1200, close(3)), ("backfill", 1, 1250, 100.35)]
    assert got[("MSFT", 0)] == [("live", 0, 1200, close(0))]  # outside the window: not asked
    assert set(got) == {(s, m) for s in SYMBOLS for m in (*range(6), 10)}
    others = {k: v for k, v in got.items() if k not in {("AAPL", 5), ("TSLA", 3)}}
    assert all(len(v) == 1 and v[0][:2] == ("live", 0) for v in others.values())  # REST agreed
    (report,) = conn.stats.recheck_reports
    assert report.asked == 5 * len(SYMBOLS) and not report.absent and not report.rejected
    assert sorted(report.revised) == [("AAPL", T0 + 5 * M), ("TSLA", T0 + 3 * M)]


def test_a_rest_failure_is_retried_with_backoff(provisioned: Settings, kafka_bootstrap: str) -> None:
    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            rest_agrees(rest, range(5))
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    for m in range(5):
                        await send_minute(stream, clock, conn, m)
                    rest.add("NVDA", T0 + 4 * M, c=close(4), v=1700)
                    rest.fail_next = 2
                    # back before minute 4 has settled: no gap is due, every REST call is the recheck's
                    await drop_and_reconnect(stream, clock, conn, T0 + 5 * M + timedelta(seconds=20))
                    await wait_until(lambda: len(conn.stats.recheck_reports) == 1, what="recheck")
                    assert rest.failed == 2 and conn.stats.rechecks_given_up == 0
                return conn

    asyncio.run(scenario())
    assert history(provisioned, kafka_bootstrap)[("NVDA", 4)] == [
        ("live", 0, 1200, close(4)), ("backfill", 1, 1700, close(4))
    ]


def test_when_rest_keeps_failing_the_recheck_is_given_up_and_the_stream_goes_on(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            rest_agrees(rest, range(5))
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    for m in range(5):
                        await send_minute(stream, clock, conn, m)
                    rest.add("NVDA", T0 + 4 * M, c=close(4), v=1700)
                    rest.fail_next = 1000
                    await drop_and_reconnect(stream, clock, conn, T0 + 5 * M + timedelta(seconds=20))
                    await wait_until(lambda: conn.stats.rechecks_given_up == 1, what="given up")
                    await send_minute(stream, clock, conn, 5)
                    assert rest.failed == 3 and not conn.stats.recheck_reports
                return conn

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert [e["attempts"] for e in logs if e["event"].startswith("recheck given up")] == [3]
    got = history(provisioned, kafka_bootstrap)
    assert got[("NVDA", 4)] == [("live", 0, 1200, close(4))]
    assert all(len(v) == 1 for v in got.values()) and len(got) == 6 * len(SYMBOLS)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
