"""The notebook API against the real broker and PostgreSQL: bounded, decoded, filtered."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg
import pytest

from opsinfra.settings import Settings
from pipeline import read_table, read_topic
from schemas.codec import HeaderCodec
from schemas.records import Bar, Features
from schemas.topic_io import RecordProducer
from schemas.topics import BARS, FEATURES

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def _bars(symbol: str, n: int) -> list[Bar]:
    return [
        Bar(
            symbol,
            T0 + timedelta(minutes=i),
            10.0 + i,
            11.0 + i,
            9.0 + i,
            10.5 + i,
            100 * (i + 1),
            None,
            None,
            "replay",
            0,
        )
        for i in range(n)
    ]


def test_read_topic_decodes_filters_and_adds_position_columns(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for bar in _bars("AAPL", 30) + _bars("MSFT", 30):
            producer.send(BARS, bar)
        producer.send_raw(provisioned.topic(BARS.name), b"AAPL", b"garbage", [])
    df = read_topic("market.bars.1m", settings=provisioned)
    assert len(df) == 60
    assert df.attrs["undecodable"] == 1
    assert {"_partition", "_offset", "_timestamp", "_key", "symbol", "ts", "close"} <= set(df.columns)
    assert df["ts"].is_monotonic_increasing

    window = read_topic(
        "market.bars.1m",
        start=T0 + timedelta(minutes=10),
        end=T0 + timedelta(minutes=20),
        symbols=["aapl"],
        settings=provisioned,
    )
    assert list(window["symbol"].unique()) == ["AAPL"]
    assert len(window) == 10
    assert window["ts"].min() == T0 + timedelta(minutes=10)
    assert window["volume"].tolist() == [100 * (i + 1) for i in range(10, 20)]

    assert len(read_topic("market.bars.1m", symbols="MSFT", limit=5, settings=provisioned)) == 5
    naive = read_topic("market.bars.1m", start="2026-11-20 14:55", settings=provisioned)
    assert len(naive) == 2 * 5  # a naive time is UTC


def test_read_topic_builds_the_frame_pandas_builds_from_the_records(
    provisioned: Settings, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import notebook

    feats = [
        Features(s, T0 + timedelta(minutes=i), 10.0 + i, None if i < 3 else 10.5, None, 100 * i,
                 None if i < 2 else 99.5, None if i < 2 else 1.0 + i / 10, None if i < 2 else i % 2 == 0,
                 None, None, None, None, None, None, None, i + 1, i % 2)
        for s in ("AAPL", "MSFT") for i in range(6)
    ]  # fmt: skip
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for f in feats:
            producer.send(FEATURES, f)
        producer.send_raw(provisioned.topic(FEATURES.name), None, b"garbage", [])
    queries: list[dict[str, object]] = [{}, {"symbols": "msft", "start": T0 + timedelta(minutes=2),
                                             "limit": 3}]
    columnar = [notebook.read_topic("features.1m", settings=provisioned, **q) for q in queries]  # type: ignore[arg-type]

    def no_columns(*args: object, **kwargs: object) -> None:
        raise notebook.Unsupported("the record by record path, as before")

    monkeypatch.setattr(notebook, "read_columns", no_columns)
    for q, got in zip(queries, columnar, strict=True):
        expected = notebook.read_topic("features.1m", settings=provisioned, **q)  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        assert got.attrs == expected.attrs and got.attrs["undecodable"] == 1
    assert len(columnar[0]) == 12 and len(columnar[1]) == 3
    assert columnar[0]["volume_surge"].dtype == object and columnar[0]["sma_20"].isna().sum() == 6


def test_read_topic_is_bounded_while_the_topic_is_written(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
            i = 0
            while not stop.is_set():
                producer.send(
                    BARS,
                    Bar("NVDA", T0 + timedelta(minutes=i), 1.0, 1.0, 1.0, 1.0, i, None, None, "replay", 0),
                )
                producer.flush()
                written.append(i)
                i += 1
                time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while len(written) < 20:
            time.sleep(0.05)
        called_at = len(written)
        df = read_topic("market.bars.1m", settings=provisioned)  # must return although writes go on
        returned_at = len(written)
    finally:
        stop.set()
        writer.join()
    assert called_at <= len(df) <= returned_at


def test_read_table_filters_on_time_and_ticker(provisioned: Settings, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for bar in _bars("AAPL", 5) + _bars("TSLA", 5):
            conn.execute(
                "INSERT INTO lane_telemetry (ticker, ts, open, high, low, close, volume, source) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (bar.symbol, bar.ts, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.source),
            )
    df = read_table("lane_telemetry", start=T0 + timedelta(minutes=1), symbols="tsla", settings=provisioned)
    assert df["ticker"].tolist() == ["TSLA"] * 4
    assert df["ts"].min() == T0 + timedelta(minutes=1)
    assert len(read_table("lane_telemetry", limit=3, settings=provisioned)) == 3
    with pytest.raises(KeyError):
        read_table("not_a_table", settings=provisioned)
