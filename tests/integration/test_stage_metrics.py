"""Stages feed their Prometheus metrics: the features stage as `ops-pipeline run --only features`
serves them (and /healthz) over HTTP; the sink's move as its batches commit; the bars connector
counts reconnects, records and dead letters."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.alpaca_bars import BarsConnector
from opsinfra.endpoints import Endpoints
from opsinfra.metrics import Metrics, metrics
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.topic_io import RecordProducer
from schemas.topics import BARS, FEATURES
from sinks.postgres import PostgresSink, SinkConfig
from tests.fakes import ManualClock, fresh_structlog, wait_until  # noqa: F401 - a fixture
from tests.fakes.alpaca_market import bar_msg
from tests.integration.test_bars_connector import SYMBOLS, T0, fakes, running, send_minute
from tests.integration.test_features_agent import walk
from tests.integration.test_sink import feat, produce, wait_drained, workload
from tests.samples import poll_until

pytestmark = pytest.mark.integration
M = timedelta(minutes=1)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == name and want <= ls]


def test_the_features_stage_serves_metrics_and_healthz(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    bars = walk(["AAPL", "MSFT", "TSLA"], 30)
    topic = provisioned.topic(BARS.name)
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        for bar in bars:
            producer.send(BARS, bar)
        producer.send_raw(
            topic,
            b"AAPL",
            b"\x00not avro",
            [("ops.schema", b"ops.pipeline.Bar"), ("ops.schema.version", b"1")],
        )
    port = free_port()
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DATABASE_URL=database_url,
        PIPELINE_TOPIC_PREFIX=provisioned.pipeline_topic_prefix,
        PIPELINE_DATA_DIR=str(tmp_path),
        METRICS_PORT=str(port),
        LOG_LEVEL="WARNING",
    )
    log = (tmp_path / "stage.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--only", "features"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def alive() -> bool:
        return proc.poll() is None

    def processed() -> float:
        try:
            got = scrape(port)
        except httpx.TransportError:  # not listening yet
            return 0
        return value(got, "ops_records_processed_total", stage="features", topic=topic) or 0

    try:
        poll_until(lambda: processed() >= len(bars) + 1, 90, "every bar processed", alive)
        got = scrape(port)
        assert (value(got, "ops_processing_latency_seconds_count", stage="features") or 0) >= len(bars)
        lags = series(got, "ops_consumer_lag", stage="features", topic=topic)
        assert lags and all(v >= 0 for v in lags)
        assert value(got, "ops_dlq_records_total", stage="features", topic=f"{topic}.dlq") == 1
        assert value(got, "ops_errors_total", stage="features", kind="DecodeError") == 1
        assert (value(got, "ops_last_progress_timestamp_seconds", stage="features") or 0) > time.time() - 60
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200 and health.json() == {"status": "ok", "stage": "features"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            log.close()
    assert proc.returncode == 0, (tmp_path / "stage.log").read_text()[-3000:]


def test_the_sink_feeds_its_metrics(provisioned: Settings, kafka_bootstrap: str, database_url: str) -> None:
    sent = workload(0, 20)
    produced = produce(provisioned, kafka_bootstrap, sent)
    features = provisioned.topic(FEATURES.name)
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        producer.send_raw(
            features,
            b"AAPL",
            b"not avro at all",
            [("ops.schema", b"ops.pipeline.Features"), ("ops.schema.version", b"1")],
        )
        producer.send(FEATURES, feat("NUL\x00", 1))  # decodes; PostgreSQL refuses the NUL
    produced[features] += 2
    m = Metrics()
    sink = PostgresSink(
        provisioned,
        Endpoints(kafka_bootstrap, database_url, None, False),
        SinkConfig(max_latency_s=0.2, stats_interval_ms=200),
        metrics=m,
    )
    stop, failures = threading.Event(), Counter[str]()

    def target() -> None:
        try:
            sink.run(stop)
        except BaseException as exc:  # surfaced below
            failures[repr(exc)] += 1

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    try:
        wait_drained(database_url, produced)

        def sample(name: str, **labels: str) -> float:
            return m.registry.get_sample_value(name, labels) or 0

        for topic, n in produced.items():
            assert sample("ops_records_processed_total", stage="sink", topic=topic) == n, topic
        assert sample("ops_dlq_records_total", stage="sink", topic=f"{features}.dlq") == 2
        assert sample("ops_errors_total", stage="sink", kind="DecodeError") == 1
        assert sample("ops_errors_total", stage="sink", kind="CharacterNotInRepertoire") == 1
        assert sample("ops_processing_latency_seconds_count", stage="sink") >= 1
        assert sample("ops_last_progress_timestamp_seconds", stage="sink") > time.time() - 60

        def lag_reported() -> bool:  # librdkafka statistics, every 200 ms
            return any(
                s.labels["stage"] == "sink" and s.labels["topic"] == features
                for family in m.registry.collect()
                if family.name == "ops_consumer_lag"
                for s in family.samples
            )

        poll_until(lag_reported, 30, "a consumer lag series", worker.is_alive)
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive() and not failures, failures


@pytest.mark.usefixtures("fresh_structlog")
def test_the_bars_connector_counts_reconnects_records_and_dead_letters(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    m = metrics()  # the connector's default, as `run` uses it: compare before and after
    topic = provisioned.topic(BARS.name)

    def sample(name: str, **labels: str) -> float:
        return m.registry.get_sample_value(name, {"stage": "bars", **labels}) or 0

    before = (sample("ops_reconnects_total"), sample("ops_errors_total", kind="StreamError"))

    async def scenario() -> BarsConnector:
        with fakes() as (stream, rest):
            stream.reject_with_406 = 2  # two refused sessions, then a good one
            async with stream:
                clock = ManualClock(T0 + timedelta(seconds=1))
                async with running(provisioned, kafka_bootstrap, stream, rest, clock) as conn:
                    await wait_until(lambda: stream.subscribed_clients == 1, what="third attempt")
                    await send_minute(stream, clock, conn, 0)
                    await stream.send([bar_msg("AAPL", T0 + 1 * M, h=1.0)])  # high < low
                    await wait_until(lambda: conn.intake.stats.rejected == 1, what="the reject")
                return conn

    asyncio.run(scenario())
    assert sample("ops_reconnects_total") - before[0] == 2
    assert sample("ops_errors_total", kind="StreamError") - before[1] == 2
    assert sample("ops_records_processed_total", topic=topic) == len(SYMBOLS)
    assert sample("ops_dlq_records_total", topic=f"{topic}.dlq") == 1
    assert sample("ops_last_progress_timestamp_seconds") > time.time() - 60
