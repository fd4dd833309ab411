"""`ops-pipeline backfill`: what the topic lacks, by the XNYS session, asked of (fake) Alpaca REST."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Bar
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import BARS
from tests.fakes import Cli, cli  # noqa: F401 - the fixture
from tests.fakes.alpaca_market import FakeAlpacaRest

pytestmark = pytest.mark.integration
T0 = datetime(2025, 11, 20, 14, 30, tzinfo=UTC)  # the CLI runs on the wall clock: the past
M = timedelta(minutes=1)
KEY = ("PKBACKFILL01", "backfill-secret-1")


def bar(symbol: str, ts: datetime, source: str = "live") -> Bar:
    return Bar(symbol, ts, 100.0, 101.0, 99.5, 100.5, 1200, 12, 100.25, source, 0)


def test_backfill_fills_session_gaps_and_no_trade_minutes_are_not_gaps(
    cli: Cli,  # noqa: F811
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for m in range(10):
            producer.send(BARS, bar("MSFT", T0 + m * M))
            if m not in (3, 4, 7):
                producer.send(BARS, bar("AAPL", T0 + m * M))
    with FakeAlpacaRest({KEY}) as rest:
        for m in range(10):
            if m != 4:  # nobody traded AAPL on IEX in minute 4
                rest.add("AAPL", T0 + m * M, c=100.7)
            rest.add("MSFT", T0 + m * M, c=100.7)
        env = dict(APCA_API_KEY_ID=KEY[0], APCA_API_SECRET_KEY=KEY[1], ALPACA_DATA_URL=rest.url)
        result = cli("backfill", "--symbols", "aapl,MSFT", "--start", "2025-11-20T09:30:00-05:00",
                     "--end", "2025-11-20T14:40:00Z", **env)
        assert result.exit_code == 0, result.output
        # history: Thanksgiving (closed) and the early close the day after
        rest.add("AAPL", datetime(2025, 11, 28, 17, 59, tzinfo=UTC), c=100.7)
        holiday = cli("backfill", "--symbols", "AAPL", "--start", "2025-11-27", "--end", "2025-11-28",
                      **env)
        assert holiday.exit_code == 0, holiday.output
    assert {r["feed"] for r in rest.requests} == {"iex"}
    assert KEY[1] not in result.output + holiday.output
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in result.output.splitlines() if line.startswith("│ ")}
    assert lines["AAPL"] == ["10", "7", "2", "1"]  # session minutes, on topic, filled, no trades
    assert lines["MSFT"] == ["10", "10", "0", "0"]
    hol = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
           for line in holiday.output.splitlines() if line.startswith("│ ")}
    assert hol["AAPL"] == ["210", "0", "1", "209"]  # 09:30-13:00 ET only
    bars = [r for _, r in read_records(provisioned, kafka_bootstrap, HeaderCodec(), BARS, quiet_s=0.3)]
    assert Counter((b.symbol, b.ts) for b in bars).most_common(1)[0][1] == 1  # type: ignore[union-attr]
    backfilled = sorted((b.symbol, b.ts) for b in bars if b.source == "backfill")  # type: ignore[union-attr]
    assert backfilled == [
        ("AAPL", T0 + 3 * M), ("AAPL", T0 + 7 * M), ("AAPL", datetime(2025, 11, 28, 17, 59, tzinfo=UTC))
    ]


def test_backfill_refuses_wrong_credentials_without_echoing_them(
    cli: Cli,  # noqa: F811
    provisioned: Settings
) -> None:
    with FakeAlpacaRest({KEY}) as rest:
        result = cli("backfill", "--symbols", "AAPL", "--start", "2025-11-20", "--end", "2025-11-20",
                     APCA_API_KEY_ID="PKWRONG", APCA_API_SECRET_KEY="wrong-secret-xyz",
                     ALPACA_DATA_URL=rest.url)
    assert result.exit_code == 1
    assert "refused the credentials" in result.output and "wrong-secret-xyz" not in result.output
