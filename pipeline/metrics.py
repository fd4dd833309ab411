"""Prometheus metrics and a `/healthz` endpoint for every long-running process.

One `Metrics` per process, created lazily by `metrics()` (importing this module registers nothing).
librdkafka statistics (`statistics.interval.ms`) feed the consumer-lag gauge through `stats_cb`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The pipeline's metric families, labelled by stage (and topic where it applies)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter("ops_records_processed", "Records processed", ["stage", "topic"], registry=r)
        self.errors = Counter("ops_errors", "Errors absorbed by a stage", ["stage", "kind"], registry=r)
        self.dlq = Counter(
            "ops_dlq_records", "Records sent to a dead-letter queue", ["stage", "topic"], registry=r
        )
        self.reconnects = Counter("ops_reconnects", "Reconnects to a source or sink", ["stage"], registry=r)
        self.lag = Gauge(
            "ops_consumer_lag", "Consumer lag in messages", ["stage", "topic", "partition"], registry=r
        )
        self.latency = Histogram(
            "ops_processing_latency_seconds",
            "Input to output latency",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.last_progress = Gauge(
            "ops_last_progress_timestamp_seconds", "When a stage last made progress", ["stage"], registry=r
        )

    def progressed(self, stage: str) -> None:
        self.last_progress.labels(stage).set(time.time())

    def stats_cb(self, stage: str) -> Callable[[str], None]:
        """A librdkafka `stats_cb` that exports per-partition consumer lag."""

        def on_stats(raw: str) -> None:
            try:
                stats = json.loads(raw)
            except ValueError:
                return
            for topic, tstats in stats.get("topics", {}).items():
                for part, pstats in tstats.get("partitions", {}).items():
                    lag = pstats.get("consumer_lag", -1)
                    if part != "-1" and lag >= 0:
                        self.lag.labels(stage, topic, part).set(lag)

        return on_stats


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's Metrics, created on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics


class MetricsServer:
    """Serves `/metrics` (Prometheus text format) and `/healthz` (200 or 503, JSON) on a thread."""

    def __init__(
        self,
        m: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        handler = _handler(m, health)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(m: Metrics, health: Callable[[], tuple[bool, dict[str, Any]]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] == "/metrics":
                body, ctype, code = generate_latest(m.registry), CONTENT_TYPE_LATEST, 200
            elif self.path.split("?")[0] == "/healthz":
                ok, detail = health()
                body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
                ctype, code = "application/json", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
            return

    return Handler
