"""The bars connector against fakes that speak Alpaca's protocol, onto the real broker.

Time is a ManualClock: the test moves `now`, the connector's sleeps are recorded (and last a few
real milliseconds), so a three-minute outage or a 90 s wait after 406 costs nothing real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from connectors.alpaca_bars import BarsConfig, BarsConnector
from connectors.credentials import CredentialSource
from connectors.intake import ProducerSink
from connectors.topic_tail import bars_tail
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Bar, DeadLetter
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import BARS
from tests.fakes import ManualClock, fresh_structlog, wait_until  # noqa: F401 - a fixture
from tests.fakes.alpaca_market import FakeAlpacaRest, FakeAlpacaStream, bar_msg
from trading.calendar import TradingCalendar

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_structlog")]

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)  # a Friday's open (9:30 ET)
M = timedelta(minutes=1)
SYMBOLS = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA")
GOOD = ("PKGOODKEY7Q2", "good-secret-9f8e7d")
BAD = ("PKBADKEY0000", "bad-secret-0000")
CAL = TradingCalendar.xnys()
TIMINGS: dict[str, Any] = dict(
    symbols=SYMBOLS, poll_s=0.02, backoff_floor_s=1.0, backoff_cap_s=30.0,
    connection_limit_wait_s=90.0, connection_limit_jitter_s=10.0, stall_timeout_s=120.0,
    gap_settle_s=30.0, gap_lookback_s=3600.0, gap_check_interval_s=None, flush_interval_s=0.2,
    tail_per_partition=1000,
)


def env_creds(key: tuple[str, str] = GOOD) -> CredentialSource:
    return CredentialSource(file=None, key_id=SecretStr(key[0]), secret_key=SecretStr(key[1]))


@contextlib.contextmanager
def fakes(keys: set[tuple[str, str]] | None = None) -> Iterator[tuple[FakeAlpacaStream, FakeAlpacaRest]]:
    with FakeAlpacaRest(keys or {GOOD}) as rest:
        yield FakeAlpacaStream(keys or {GOOD}), rest


@contextlib.asynccontextmanager
async def running(
    settings: Settings, bootstrap: str, stream: FakeAlpacaStream, rest: FakeAlpacaRest,
    clock: ManualClock, credentials: CredentialSource | None = None, **overrides: Any,
) -> AsyncIterator[BarsConnector]:
    codec = HeaderCodec()
    config = BarsConfig.from_settings(
        settings, **{**TIMINGS, "stream_url": stream.url, "data_url": rest.url, **overrides}
    )
    producer = RecordProducer(settings, bootstrap, codec)
    connector = BarsConnector(
        config,
        credentials=credentials or env_creds(),
        sink=ProducerSink(producer),
        calendar=CAL,
        clock=clock,
        tail=lambda: bars_tail(settings, bootstrap, codec, settings.topic(BARS.name),
                               per_partition=config.tail_per_partition, quiet_s=0.3),
        rand=lambda: 0.5,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    try:
        yield connector
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def send_minute(stream: FakeAlpacaStream, clock: ManualClock, connector: BarsConnector,
                      minute: int, symbols: tuple[str, ...] = SYMBOLS) -> None:
    """The bars of minute `minute` (from T0) arrive just after it ends; wait until published."""
    before = connector.intake.stats.live
    clock.set(T0 + (minute + 1) * M + timedelta(seconds=1))
    await stream.send([bar_msg(s, T0 + minute * M, c=100.0 + minute / 10) for s in symbols])
    await wait_until(lambda: connector.intake.stats.live == before + len(symbols),
                     what=f"minute {minute} published")


def topic_bars(settings: Settings, bootstrap: str) -> list[Bar]:
    got = read_records(settings, bootstrap, HeaderCodec(), BARS, quiet_s=0.3)
    bars = [r for _, r in got]
    assert all(isinstance(b, Bar) for b in bars)
    for msg, bar in got:
        assert isinstance(bar, Bar) and msg.key == bar.symbol.encode()
    return bars  # type: ignore[return-value]


def dlq_letters(settings: Settings, bootstrap: str) -> list[DeadLetter]:
    got = read_records(settings, bootstrap, HeaderCodec(), BARS.dlq, quiet_s=0.3)
    return [r for _, r in got]  # type: ignore[misc]


def test_a_steady_stream_puts_every_bar_on_the_topic_once(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            for m in range(10):  # REST knows the same history, as Alpaca's would
                for s in SYMBOLS:
                    rest.add(s, T0 + m * M, c=100.0 + m / 10)
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock,
                                   gap_check_interval_s=60.0) as conn:
                    due = conn.detector.due

                    def recorded(now: datetime) -> dict[str, list[datetime]]:
                        checks.append((conn.detector.window(now), out := due(now)))
                        return out

                    conn.detector.due = recorded  # type: ignore[method-assign]
                    await wait_until(lambda: stream.subscribed_clients == 1, what="subscription")
                    for m in range(10):
                        await send_minute(stream, clock, conn, m)
                    clock.advance(30)  # minute 9 settled too: every minute sent is due for a check
                    await wait_until(lambda: any(a <= T0 and b >= T0 + 10 * M for (a, b), _ in checks),
                                     what="a gap check over every minute sent")
                return conn

    checks: list[tuple[tuple[datetime, datetime], dict[str, list[datetime]]]] = []
    conn = asyncio.run(scenario())
    bars = topic_bars(provisioned, kafka_bootstrap)
    assert Counter((b.symbol, b.ts) for b in bars) == {(s, T0 + m * M): 1 for s in SYMBOLS for m in range(10)}
    assert {(b.source, b.revision) for b in bars} == {("live", 0)}
    assert conn.intake.stats.backfill == 0 and conn.intake.stats.rejected == 0
    # the timer checked every minute sent and found no gap (so asked REST nothing)
    assert [window for window, missing in checks if missing] == [] and conn.stats.gap_reports == []


def test_an_updated_bar_is_a_second_record_with_a_higher_revision_across_restarts(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    async def scenario() -> None:
        with fakes() as (stream, rest):
            async with stream:
                clock = ManualClock(T0 + M + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    await stream.send([bar_msg("AAPL", T0, c=100.5)])
                    await stream.send([bar_msg("AAPL", T0, c=100.6, v=1300, kind="u")])
                    await stream.send([bar_msg("AAPL", T0, c=100.6, v=1300, kind="u")])  # repeat
                    await stream.send([bar_msg("AAPL", T0, c=100.7, v=1350, kind="u")])
                    stats = conn.intake.stats
                    await wait_until(lambda: stats.updated == 2 and stats.duplicates == 1)
                # a new process: revisions continue from the topic's tail
                clock.advance(120)
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as again:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    await stream.send([bar_msg("AAPL", T0, c=100.8, v=1400, kind="u")])
                    await wait_until(lambda: again.intake.stats.updated == 1)
                assert stream.connections_opened == 2

    asyncio.run(scenario())
    bars = [b for b in topic_bars(provisioned, kafka_bootstrap) if b.symbol == "AAPL"]
    assert [(b.source, b.revision, b.close) for b in bars] == [
        ("live", 0, 100.5), ("updated", 1, 100.6), ("updated", 2, 100.7), ("updated", 3, 100.8)
    ]
    assert {b.ts for b in bars} == {T0}


def test_after_a_three_minute_drop_the_missing_minutes_arrive_as_backfill(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    traded_in_minute_6 = ("AAPL", "MSFT")  # the others had no trades then: IEX has no bar

    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            for m in (5, 6, 7):
                for s in SYMBOLS:
                    if m != 6 or s in traded_in_minute_6:
                        rest.add(s, T0 + m * M, c=100.0 + m / 10)
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    for m in range(5):
                        await send_minute(stream, clock, conn, m)
                    stream.down = True
                    await stream.drop()
                    clock.set(T0 + 8 * M + timedelta(seconds=31))  # minutes 5, 6, 7 happened
                    await wait_until(lambda: conn.stats.attempts >= 4, what="refused reconnects")
                    assert conn.intake.stats.backfill == 0  # nothing is filled while disconnected
                    stream.down = False
                    await wait_until(lambda: conn.stats.connections == 2, what="reconnect")
                    await wait_until(lambda: len(conn.stats.gap_reports) == 1, what="gap check")
                    await send_minute(stream, clock, conn, 8)
                assert {r["feed"] for r in rest.requests} == {"iex"}
                return conn

    conn = asyncio.run(scenario())
    bars = topic_bars(provisioned, kafka_bootstrap)
    assert Counter((b.symbol, b.ts) for b in bars).most_common(1)[0][1] == 1
    by_source: dict[str, set[tuple[str, int]]] = {}
    for b in bars:
        by_source.setdefault(b.source, set()).add((b.symbol, int((b.ts - T0) / M)))
    assert by_source["live"] == {(s, m) for s in SYMBOLS for m in (0, 1, 2, 3, 4, 8)}
    assert by_source["backfill"] == (
        {(s, m) for s in SYMBOLS for m in (5, 7)} | {(s, 6) for s in traded_in_minute_6}
    )
    (report,) = conn.stats.gap_reports
    assert len(report.filled) == 16
    assert sorted(report.no_trade) == sorted((s, T0 + 6 * M) for s in SYMBOLS if s not in traded_in_minute_6)
    waits = conn.clock.sleeps  # type: ignore[attr-defined]
    assert len(waits) == conn.stats.attempts - 1 >= 3  # one wait before every reconnect
    assert all(1.0 <= s <= 30.0 for s in waits) and waits == sorted(waits)  # growing, capped


def test_a_rotated_key_in_the_credentials_file_resumes_the_stream_without_a_restart(
    provisioned: Settings, kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    creds_file = tmp_path / "alpaca.env"

    def write(key: tuple[str, str]) -> None:
        tmp = creds_file.with_suffix(".tmp")
        tmp.write_text(f"APCA_API_KEY_ID={key[0]}\nAPCA_API_SECRET_KEY={key[1]}\n", "utf-8")
        os.replace(tmp, creds_file)

    write(BAD)
    settings = provisioned.model_copy(update={
        "alpaca_credentials_file": creds_file,
        "apca_api_key_id": SecretStr("ENV-KEY-UNUSED"), "apca_api_secret_key": SecretStr("ENV-SECRET-UNUSED"),
    })
    caplog.set_level(logging.DEBUG)

    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(settings, kafka_bootstrap, stream, rest, clock,
                                   credentials=CredentialSource.from_settings(settings)) as conn:
                    await wait_until(lambda: stream.auth_failures >= 2, what="failed authentications")
                    write(GOOD)  # the key rotation
                    await wait_until(lambda: stream.subscribed_clients == 1, what="resumed stream")
                    await send_minute(stream, clock, conn, 0)
                return conn

    with capture_logs() as logs:
        conn = asyncio.run(scenario())
    assert conn.stats.auth_failures >= 2 and conn.stats.connections == 1
    assert len(topic_bars(provisioned, kafka_bootstrap)) == len(SYMBOLS)
    reloads = [e for e in logs if e["event"] == "alpaca credentials loaded"]
    assert reloads[0]["reason"] == "start"
    assert {e["reason"] for e in reloads[1:]} == {"authentication failed"}
    assert all(e["source"].startswith(f"file {creds_file}") for e in reloads)
    out = capsys.readouterr()
    everything = repr(logs) + caplog.text + out.out + out.err
    for secret in (*GOOD, *BAD):
        assert secret not in everything
    assert all(s >= 1.0 for s in conn.clock.sleeps)  # type: ignore[attr-defined]


def test_malformed_bars_go_to_the_dlq_with_a_reason_and_the_stream_goes_on(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    t = T0 + 2 * M
    bad = [
        bar_msg("AAPL", t, h=90.0),  # high < low
        bar_msg("MSFT", t, o=150.0),  # open above high
        bar_msg("TSLA", t, v=-5),
        bar_msg("GOOGL", t, v=12.5),
        bar_msg("AMZN", t, c=float("nan")),
        bar_msg("META", t, h=float("inf")),
        bar_msg("NVDA", t + timedelta(seconds=20)),  # not on a minute boundary
        bar_msg("NVDA", t + 10 * M),  # in the future
        bar_msg("IBM", t),  # not subscribed
    ]
    good = [bar_msg(s, t) for s in SYMBOLS]

    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            async with stream:
                clock = ManualClock(t + M + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    await stream.send(bad[:5] + good[:3])
                    await stream.send_raw(b"\xc1 not msgpack")
                    await stream.send(bad[5:] + good[3:])
                    await wait_until(lambda: conn.intake.stats.live == 7 and conn.intake.stats.rejected == 10)
                return conn

    asyncio.run(scenario())
    bars = topic_bars(provisioned, kafka_bootstrap)
    assert sorted(b.symbol for b in bars) == sorted(SYMBOLS)
    letters = dlq_letters(provisioned, kafka_bootstrap)
    assert len(letters) == 10
    reasons = sorted(letter.error for letter in letters)
    for fragment in ("high 90.0 < low", "open 150.0 outside", "negative volume", "volume is not an integer",
                     "close is not finite", "high is not finite", "not on a minute boundary",
                     "in the future", "IBM is not subscribed", "undecodable frame"):
        assert sum(fragment in r for r in reasons) == 1, fragment
    by_key = {letter.original_key: letter for letter in letters if letter.error_type == "BarRejected"}
    assert by_key[b"IBM"].value is not None and msgpack.unpackb(by_key[b"IBM"].value) == bad[-1]
    frame = next(letter for letter in letters if letter.error_type == "FrameError")
    assert frame.value == b"\xc1 not msgpack" and frame.topic == "alpaca.ws" and frame.stage == "bars"


def test_connection_limit_406_waits_at_least_the_configured_floor(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    async def scenario() -> tuple[BarsConnector, FakeAlpacaStream]:
        with fakes() as (stream, rest):
            stream.reject_with_406 = 2  # the old socket is still held by the server
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1, what="third attempt")
                    await send_minute(stream, clock, conn, 0)
                return conn, stream

    conn, stream = asyncio.run(scenario())
    sleeps = conn.clock.sleeps  # type: ignore[attr-defined]
    assert [a.code for a in stream.auth_attempts] == [406, 406, None]
    assert conn.stats.connection_limits == 2
    assert len(sleeps) == 2 and all(s >= 90.0 for s in sleeps)
    assert len(topic_bars(provisioned, kafka_bootstrap)) == len(SYMBOLS)


def test_a_silent_stall_while_the_market_is_open_reconnects_with_backoff(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    await send_minute(stream, clock, conn, 0)
                    assert conn.stats.stalls == 0
                    clock.advance(121)  # connected, subscribed, and mute
                    await wait_until(lambda: conn.stats.connections == 2, what="reconnect after stall")
                    await send_minute(stream, clock, conn, 3)
                return conn

    conn = asyncio.run(scenario())
    assert conn.stats.stalls == 1
    assert conn.clock.sleeps and all(s >= 1.0 for s in conn.clock.sleeps)  # type: ignore[attr-defined]
    assert len(topic_bars(provisioned, kafka_bootstrap)) == 2 * len(SYMBOLS)


def test_the_gap_timer_fills_a_bar_the_stream_never_sent(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            rest.add("NVDA", T0, c=100.0)
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock,
                                   gap_check_interval_s=60.0) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1)
                    await send_minute(stream, clock, conn, 0, symbols=SYMBOLS[:-1])  # no NVDA
                    await send_minute(stream, clock, conn, 1)
                    clock.advance(30)  # minute 0 is now over and settled: due for the timer
                    await wait_until(lambda: conn.intake.stats.backfill == 1, what="timer backfill")
                return conn

    conn = asyncio.run(scenario())
    assert conn.stats.connections == 1  # filled while connected: no reconnect involved
    bars = topic_bars(provisioned, kafka_bootstrap)
    assert [(b.symbol, b.ts, b.source) for b in bars if b.source == "backfill"] == [("NVDA", T0, "backfill")]
    assert len(bars) == 2 * len(SYMBOLS)
