"""A stalled bar stream in market hours, end to end: the bars stage, `status`, and the backfill.

The stage is built and served as `ops-pipeline run --only bars` builds and serves it (its own
thread and event loop, the real broker, Alpaca's protocol from the fakes), with every bar-time
threshold at its production default: status's 120 s stale-bar limit, the connector's 180 s stall
timeout, its 60 s gap timer and 90 s settle. Only the clock is compressed: a SteppedClock that
the test moves one second at a time, so eleven minutes of a session take a few real seconds and
every timer keeps its bar-time cadence.

The session, in minutes after the open (bars of minute m arrive at m+1 plus one second):
  0-4   bars flow; status is healthy.
  5-7   the websocket stalls (open, answering pings, sending nothing); REST has the bars.
  7:01  120 s after the last bar: status is unhealthy and names every symbol; REST confirms
        its missing minutes are real gaps.
  8:01  180 s: the connector gives up on the socket and reconnects; the gap checks ask REST.
  8-10  bars flow again on the new session; the stalled minutes arrive as source=backfill.
  end   status is healthy again (what `ops-pipeline status` answers with exit 0), nothing missing.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from connectors.alpaca_bars import BarsConnector, build, serve
from connectors.bars_config import BarsConfig
from opsinfra.endpoints import Endpoints, resolve
from opsinfra.settings import Settings
from pipeline.status import Report, Thresholds, collect
from schemas.codec import HeaderCodec
from schemas.records import Bar
from schemas.topic_io import read_records
from schemas.topics import BARS
from tests.fakes import SteppedClock, fresh_structlog, wait_until  # noqa: F401 - a fixture
from tests.fakes.alpaca_market import FakeAlpacaRest, FakeAlpacaStream, bar_msg
from trading.calendar import TradingCalendar

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_structlog")]

KEY = ("PKSTALL0001", "stall-secret-1")
SYMBOLS = ("AAPL", "MSFT")
T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)  # a Friday's open (9:30 ET)
M = timedelta(minutes=1)
STALLED = (5, 6, 7)  # minutes whose bars the stalled socket never delivers
CAL = TradingCalendar.xnys()
DEFAULTS = BarsConfig(symbols=SYMBOLS)
STALE = Thresholds().stale_bar_s


def at(minute: int, second: int = 1) -> datetime:
    return T0 + minute * M + timedelta(seconds=second)


class Session:
    """The market: minute m's bars go to REST, and to the websocket's live sessions, at m+1:01."""

    def __init__(
        self, clock: SteppedClock, stream: FakeAlpacaStream, rest: FakeAlpacaRest, connector: BarsConnector
    ) -> None:
        self.clock = clock
        self.stream = stream
        self.rest = rest
        self.connector = connector
        self.next_minute = 0

    async def _play(self, m: int) -> None:
        for s in SYMBOLS:
            self.rest.add(s, T0 + m * M, c=100.0 + m / 10)
        live = self.connector.intake.stats.live
        listening = self.stream.subscribed_clients - self.stream.stalled_clients
        await self.stream.send([bar_msg(s, T0 + m * M, c=100.0 + m / 10) for s in SYMBOLS])
        if listening:  # published before bar time moves on, as it would be a second later
            await wait_until(
                lambda: self.connector.intake.stats.live == live + len(SYMBOLS),
                what=f"minute {m} published live",
            )

    async def _tick(self) -> None:
        self.clock.advance(1)
        if self.clock.now() == at(self.next_minute + 1):
            await self._play(self.next_minute)
            self.next_minute += 1
        await asyncio.sleep(0.003)  # the stage's loop sees every second of bar time

    async def advance_to(self, when: datetime) -> None:
        while self.clock.now() < when:
            await self._tick()

    async def advance_until(self, done: Callable[[], bool], *, limit: datetime, what: str) -> datetime:
        """Move bar time until `done()`; returns the bar time it took."""
        while not done():
            if self.clock.now() >= limit:
                raise AssertionError(f"{what}: not done by {self.clock.now():%H:%M:%S}")
            await self._tick()
        return self.clock.now()


def test_a_stalled_stream_is_unhealthy_within_two_minutes_and_is_backfilled(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    async def scenario() -> tuple[BarsConnector, Settings, dict[str, Report], dict[str, datetime]]:
        with FakeAlpacaRest({KEY}) as rest:
            async with FakeAlpacaStream({KEY}) as stream:
                settings = provisioned.model_copy(
                    update={
                        "pipeline_symbols": SYMBOLS,
                        "alpaca_stream_url": stream.url,
                        "alpaca_data_url": rest.url,
                        "apca_api_key_id": SecretStr(KEY[0]),
                        "apca_api_secret_key": SecretStr(KEY[1]),
                    }
                )
                endpoints = resolve(settings)
                clock = SteppedClock(at(0))
                # production timings; only the real-time knobs (socket poll, flush) are short
                conn = build(settings, endpoints, clock=clock, poll_s=0.005, flush_interval_s=0.05)

                def stage() -> None:
                    try:
                        serve(conn, stop)
                    except BaseException as exc:  # surfaced by the assertions below
                        errors.append(exc)

                worker = threading.Thread(target=stage, name="bars-stage", daemon=True)
                worker.start()
                try:
                    return await play(settings, endpoints, clock, stream, rest, conn)
                finally:
                    stop.set()
                    await asyncio.to_thread(worker.join, 30)
                    assert not worker.is_alive()

    async def play(
        settings: Settings,
        endpoints: Endpoints,
        clock: SteppedClock,
        stream: FakeAlpacaStream,
        rest: FakeAlpacaRest,
        conn: BarsConnector,
    ) -> tuple[BarsConnector, Settings, dict[str, Report], dict[str, datetime]]:
        def status() -> Report:  # what `ops-pipeline status --json` reports, at bar time
            return collect(settings, endpoints, now=clock.now(), calendar=CAL)

        session = Session(clock, stream, rest, conn)
        await wait_until(
            lambda: stream.subscribed_clients == 1 or bool(errors), timeout=60, what="subscribed"
        )
        assert not errors, errors
        reports: dict[str, Report] = {}
        times: dict[str, datetime] = {}

        await session.advance_to(at(5))  # minutes 0-4 flowed
        reports["flowing"] = await asyncio.to_thread(status)
        times["last_data"] = clock.now()

        stream.stall()
        assert stream.subscribed_clients == stream.stalled_clients == 1  # open and mute
        await session.advance_to(times["last_data"] + timedelta(seconds=STALE))
        reports["stalled"] = await asyncio.to_thread(status)
        assert conn.intake.stats.backfill == 0  # the stalled minutes are not due from REST yet

        times["reconnected"] = await session.advance_until(
            lambda: conn.stats.connections == 2, limit=at(10), what="reconnect after the stall"
        )
        assert stream.stalled_clients == 0  # the connector closed the mute session
        times["filled"] = await session.advance_until(
            lambda: conn.intake.stats.backfill == len(STALLED) * len(SYMBOLS),
            limit=at(12),
            what="stalled minutes backfilled",
        )
        await session.advance_to(times["filled"] + timedelta(seconds=1))
        reports["recovered"] = await asyncio.to_thread(status)
        assert {r["feed"] for r in rest.requests} == {"iex"}
        times["played"] = at(session.next_minute, 0)  # bars exist for every minute before this
        return conn, settings, reports, times

    conn, settings, reports, times = asyncio.run(scenario())
    assert not errors, errors

    flowing = reports["flowing"]
    assert flowing.market_open and flowing.healthy, flowing.problems
    assert all(s.missing_minutes == 0 for s in flowing.symbols)

    # within 2 minutes of the last bar, status is unhealthy and names each silent symbol
    stalled = reports["stalled"]
    assert times["last_data"] + timedelta(seconds=STALE) == at(7)
    assert not stalled.healthy
    for sym in SYMBOLS:
        assert f"{sym}: no bar for 121s while the market is open" in stalled.problems
    by_sym = {s.symbol: s for s in stalled.symbols}
    assert {s: by_sym[s].missing_minutes for s in SYMBOLS} == {s: 2 for s in SYMBOLS}  # 5 and 6
    # ...which REST has bars for: real gaps, not minutes without trades
    assert stalled.missing_check == "rest"
    assert {s: by_sym[s].missing_confirmed for s in SYMBOLS} == {s: 2 for s in SYMBOLS}

    # the connector's own stall timeout (180 s of silence) made it reconnect
    assert conn.stats.stalls == 1 and conn.stats.connections == 2
    silence = (times["reconnected"] - times["last_data"]).total_seconds()
    assert DEFAULTS.stall_timeout_s <= silence <= DEFAULTS.stall_timeout_s + 10
    # every stalled minute was asked of REST at most settle + one timer period after it ended
    last_stalled_end = T0 + (STALLED[-1] + 1) * M
    assert DEFAULTS.gap_check_interval_s is not None
    assert times["filled"] <= last_stalled_end + timedelta(
        seconds=DEFAULTS.gap_settle_s + DEFAULTS.gap_check_interval_s + 5
    )

    got = read_records(settings, kafka_bootstrap, HeaderCodec(), BARS, quiet_s=0.3)
    records = [b for _, b in got if isinstance(b, Bar)]
    assert len(records) == len(got)
    assert Counter((b.symbol, b.ts) for b in records).most_common(1)[0][1] == 1  # no duplicates
    minutes = {(b.symbol, (b.ts - T0) // M): b for b in records}
    played = range((times["played"] - T0) // M)
    assert set(minutes) == {(s, m) for s in SYMBOLS for m in played}
    for (sym, m), bar in minutes.items():
        expected = "backfill" if m in STALLED else "live"
        assert (bar.source, bar.revision, bar.close) == (expected, 0, 100.0 + m / 10), (sym, m)

    # and status is healthy again, with no missing minutes
    recovered = reports["recovered"]
    assert recovered.healthy, recovered.problems  # `ops-pipeline status` exits 0
    for s in recovered.symbols:
        assert s.missing_minutes == 0 and s.age_s is not None and s.age_s <= STALE, s
    assert recovered.missing_check == "nothing missing"
