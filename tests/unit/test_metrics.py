"""Metrics endpoint and health endpoint over real HTTP, and librdkafka stats to lag gauges."""

from __future__ import annotations

import json

import httpx
import pytest

from opsinfra.metrics import Metrics, MetricsServer


@pytest.fixture
def served() -> tuple[Metrics, MetricsServer, list[bool]]:
    m = Metrics()
    healthy = [True]
    server = MetricsServer(m, lambda: (healthy[0], {"stage": "sink"})).start()
    yield m, server, healthy
    server.stop()


def test_metrics_endpoint_exposes_counters(served: tuple) -> None:
    m, server, _ = served
    m.records.labels("features", "market.bars.1m").inc(7)
    m.dlq.labels("features", "market.bars.1m").inc()
    m.latency.labels("features").observe(0.004)
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    assert 'ops_records_processed_total{stage="features",topic="market.bars.1m"} 7.0' in text
    assert 'ops_dlq_records_total{stage="features",topic="market.bars.1m"} 1.0' in text
    assert 'ops_processing_latency_seconds_bucket{le="0.005",stage="features"} 1.0' in text


def test_healthz_follows_the_health_callback(served: tuple) -> None:
    _, server, healthy = served
    ok = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
    assert ok.status_code == 200 and ok.json() == {"status": "ok", "stage": "sink"}
    healthy[0] = False
    bad = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
    assert bad.status_code == 503 and bad.json()["status"] == "unhealthy"
    assert httpx.get(f"http://127.0.0.1:{server.port}/nope").status_code == 404


def test_librdkafka_stats_become_lag_gauges() -> None:
    m = Metrics()
    stats = {
        "topics": {
            "features.1m": {
                "partitions": {
                    "0": {"consumer_lag": 12},
                    "1": {"consumer_lag": -1, "hi_offset": 40, "committed_offset": -1001},
                    "2": {"consumer_lag": -1, "hi_offset": 40, "committed_offset": 45},
                    "-1": {"consumer_lag": 99},
                }
            }
        }
    }
    m.stats_cb("sink")(json.dumps(stats))
    m.stats_cb("sink")(json.dumps({"type": "producer", "msg_cnt": 3, "topics": {}}))
    m.stats_cb("sink")("not json")  # ignored, not raised
    assert (
        m.registry.get_sample_value(
            "ops_consumer_lag", {"stage": "sink", "topic": "features.1m", "partition": "0"}
        )
        == 12
    )
    assert (
        m.registry.get_sample_value(
            "ops_consumer_lag", {"stage": "sink", "topic": "features.1m", "partition": "1"}
        )
        is None
    )
    # a watermark below the commit (Tansu under-reports it): caught up, not unknown
    assert (
        m.registry.get_sample_value(
            "ops_consumer_lag", {"stage": "sink", "topic": "features.1m", "partition": "2"}
        )
        == 0
    )
    assert m.registry.get_sample_value("ops_producer_queue_messages", {"stage": "sink"}) == 3
