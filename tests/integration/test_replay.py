"""`ops-pipeline replay` from a bar file, a topic range and a Postgres range, onto the broker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from opsinfra.kafka_admin import create_topics
from opsinfra.kafka_config import admin_config
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Bar, DeadLetter
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import ALL_TOPICS, BARS
from tests.fakes import Cli, cli  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
T0 = datetime(2025, 11, 20, 14, 30, tzinfo=UTC)
M = timedelta(minutes=1)


def bars_on(settings: Settings, bootstrap: str, prefix: str | None = None) -> list[Bar]:
    got = read_records(settings, bootstrap, HeaderCodec(), BARS, prefix=prefix, quiet_s=0.3)
    return [r for _, r in got]  # type: ignore[misc]


def per_symbol(bars: list[Bar]) -> dict[str, list[tuple[int, int, float]]]:
    out: dict[str, list[tuple[int, int, float]]] = {}
    for b in bars:  # read order within a symbol is partition order, i.e. publish order
        out.setdefault(b.symbol, []).append((int((b.ts - T0) / M), b.revision, b.close))
    return out


@pytest.fixture
def other_prefix(provisioned: Settings, kafka_bootstrap: str) -> Iterator[str]:
    prefix = "replay-" + provisioned.pipeline_topic_prefix
    create_topics(AdminClient(admin_config(provisioned, kafka_bootstrap)), ALL_TOPICS, prefix=prefix)
    yield prefix


def test_replay_a_csv_file_in_ts_then_revision_order(
    cli: Cli, provisioned: Settings, kafka_bootstrap: str, tmp_path: Path  # noqa: F811
) -> None:
    path = tmp_path / "session.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume,trade_count,vwap,revision\n"
        "AAPL,2025-11-20T14:32:00Z,1,2,0.5,1.5,10,,,0\n"
        "AAPL,2025-11-20T14:30:00Z,1,2,0.5,1.7,12,3,1.2,1\n"
        "MSFT,2025-11-20T09:31:00-05:00,1,2,0.5,1.5,10,,,\n"
        "AAPL,2025-11-20T14:30:00Z,1,2,0.5,1.5,10,2,1.1,0\n"
        "AAPL,2025-11-20T14:30:00Z,1,2,0.5,1.5,10,2,1.1,0\n"
        "AAPL,2025-11-20T14:31:00Z,1,2,0.5,1.5,-10,,,0\n",
        "utf-8",
    )
    result = cli("replay", "--bars", str(path), "--speed", "max")
    assert result.exit_code == 0, result.output
    assert "replayed 4 bar(s)" in result.output and "1 exact repeat(s)" in result.output
    assert "bars/s" in result.output  # the progress bar (rich, on stderr)
    bars = bars_on(provisioned, kafka_bootstrap)
    assert per_symbol(bars) == {"AAPL": [(0, 0, 1.5), (0, 1, 1.7), (2, 0, 1.5)], "MSFT": [(1, 0, 1.5)]}
    assert {b.source for b in bars} == {"replay"}
    dlq = read_records(provisioned, kafka_bootstrap, HeaderCodec(), BARS.dlq, quiet_s=0.3)
    (letter,) = [r for _, r in dlq]
    assert isinstance(letter, DeadLetter) and "negative volume" in letter.error
    assert letter.topic == "replay:session.csv"


def test_replay_a_topic_range_found_by_the_records_own_timestamps(
    cli: Cli, provisioned: Settings, kafka_bootstrap: str, other_prefix: str  # noqa: F811
) -> None:
    source = provisioned.pipeline_topic_prefix + BARS.name
    written = [
        Bar("AAPL", T0 + m * M, 1, 2, 0.5, 1.5, 10, None, None, src, rev)
        for m, rev, src in [(5, 0, "live"), (1, 0, "live"), (3, 0, "backfill"), (1, 1, "updated"),
                            (9, 0, "live"), (0, 0, "live")]
    ]
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for b in written:
            producer.send(BARS, b)
    result = cli("replay", "--from-topic", source, "--start", "2025-11-20T14:31:00Z",
                 "--end", "2025-11-20T14:39:00Z", "--topic-prefix", other_prefix, "--speed", "max")
    assert result.exit_code == 0, result.output
    bars = bars_on(provisioned, kafka_bootstrap, prefix=other_prefix)
    assert [(int((b.ts - T0) / M), b.revision) for b in bars] == [(1, 0), (1, 1), (3, 0), (5, 0)]
    assert {b.source for b in bars} == {"replay"}
    same = cli("replay", "--from-topic", source, "--start", "2025-11-20", "--end", "2025-11-20")
    assert same.exit_code == 2 and "also the destination" in same.output


def test_replay_a_postgres_range(
    cli: Cli, provisioned: Settings, kafka_bootstrap: str, database_url: str  # noqa: F811
) -> None:
    rows = [("MSFT", T0 + 2 * M, 2), ("AAPL", T0 + M, 0), ("AAPL", T0 - M, 0), ("AAPL", T0 + 30 * M, 0)]
    with psycopg.connect(database_url) as conn:
        for ticker, ts, rev in rows:
            conn.execute(
                "INSERT INTO lane_telemetry (ticker, ts, open, high, low, close, volume, trade_count,"
                " vwap, source, revision) VALUES (%s, %s, 1, 2, 0.5, 1.5, 100, 4, 1.2, 'live', %s)",
                (ticker, ts, rev),
            )
    result = cli("replay", "--from-postgres", "--start", "2025-11-20T14:30:00Z",
                 "--end", "2025-11-20T14:45:00Z")
    assert result.exit_code == 0, result.output
    bars = bars_on(provisioned, kafka_bootstrap)
    got = sorted((b.symbol, int((b.ts - T0) / M), b.revision) for b in bars)
    assert got == [("AAPL", 1, 0), ("MSFT", 2, 2)]
    assert all(b.source == "replay" and b.trade_count == 4 and b.vwap == 1.2 for b in bars)


def test_replay_needs_exactly_one_source(cli: Cli) -> None:  # noqa: F811
    result = cli("replay", "--speed", "max")
    assert result.exit_code == 2 and "exactly one of" in result.output
    bad_speed = cli("replay", "--from-postgres", "--start", "2025-11-20", "--end", "2025-11-21",
                    "--speed", "warp")
    assert bad_speed.exit_code == 2
