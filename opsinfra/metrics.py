"""Prometheus metrics and `/healthz` for every long-running process: one lazily created `Metrics` per
process (importing registers nothing); the README lists who feeds what.
"""

from __future__ import annotations

import json
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

#: how often librdkafka clients report statistics (lag, queue) to `stats_cb`
STATS_INTERVAL_MS = 5000
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The pipeline's metric families, labelled by stage (and topic where it applies)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:  # process_start_time_seconds: what the "stage restarting" rule watches
            ProcessCollector(registry=r)
        self.records = Counter("ops_records_processed", "Records processed", ["stage", "topic"], registry=r)
        self.errors = Counter("ops_errors", "Errors absorbed by a stage", ["stage", "kind"], registry=r)
        self.dlq = Counter(
            "ops_dlq_records", "Records sent to a dead-letter queue", ["stage", "topic"], registry=r
        )
        self.reconnects = Counter("ops_reconnects", "Reconnects to a source or sink", ["stage"], registry=r)
        self.lag = Gauge(
            "ops_consumer_lag", "Consumer lag in messages", ["stage", "topic", "partition"], registry=r
        )
        self.latency = BucketedHistogram(
            "ops_processing_latency_seconds", "Input to output latency", ["stage"], LATENCY_BUCKETS, r
        )
        self.last_progress = Gauge(
            "ops_last_progress_timestamp_seconds", "When a stage last made progress", ["stage"], registry=r
        )
        self.producer_queue = Gauge(
            "ops_producer_queue_messages",
            "Messages in a librdkafka producer's queue, not yet delivered",
            ["stage"],
            registry=r,
        )

    def progressed(self, stage: str) -> None:
        self.last_progress.labels(stage).set(time.time())

    def dead_lettered(self, stage: str, dlq_topic: str, kind: str, n: int = 1) -> None:
        """`n` records of a stage went to `dlq_topic` because of a per-record error of `kind`."""
        self.dlq.labels(stage, dlq_topic).inc(n)
        self.errors.labels(stage, kind).inc(n)

    def librdkafka_stats(self, stage: str, interval_ms: int = STATS_INTERVAL_MS) -> dict[str, Any]:
        """Settings for a confluent-kafka client's config that feed these metrics."""
        return {"statistics.interval.ms": interval_ms, "stats_cb": self.stats_cb(stage)}

    def stats_cb(self, stage: str) -> Callable[[str], None]:
        """A librdkafka `stats_cb`: per-partition consumer lag, a producer's queue.

        Lag is librdkafka's `consumer_lag` (high watermark - committed offset). librdkafka says -1
        (unknown) when the watermark is below the commit, which only a broker under-reporting it
        does: Tansu reports the base offset of the partition's last batch. That reads as 0 here,
        so a caught-up consumer has a series there too; on Tansu lag reads low, never high.
        """

        def on_stats(raw: str) -> None:
            try:
                stats = json.loads(raw)
            except ValueError:
                return
            if stats.get("type") == "producer" and "msg_cnt" in stats:
                self.producer_queue.labels(stage).set(stats["msg_cnt"])
            for topic, tstats in stats.get("topics", {}).items():
                for part, pstats in tstats.get("partitions", {}).items():
                    if part == "-1":
                        continue
                    lag = pstats.get("consumer_lag", -1)
                    if lag < 0:
                        high, committed = pstats.get("hi_offset", -1), pstats.get("committed_offset", -1)
                        if high < 0 or committed < 0:
                            continue
                        lag = max(0, high - committed)
                    self.lag.labels(stage, topic, part).set(lag)

        return on_stats


class HistogramSeries:
    """One labelled series: bucket counts (the last is +Inf) and the sum of observations."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, amount: float) -> None:
        with self._lock:
            self._counts[bisect_left(self.bounds, amount)] += 1
            self._sum += amount

    def add(self, counts: Sequence[int], total: float) -> None:
        """Observations counted elsewhere: counts[bisect_left(bounds, amount)] += 1 each."""
        with self._lock:
            for i, n in enumerate(counts):
                self._counts[i] += n
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class BucketedHistogram:
    """A labelled Prometheus histogram that also takes observations already bucketed.

    prometheus_client's `observe` costs ~0.7 us (a lock per bucket and the sum); a hot path counts
    into a plain list instead (`bisect_left`, ~0.1 us) and `add`s the counts once a second.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], HistogramSeries] = {}
        self._lock = threading.Lock()
        registry.register(self)  # a Collector: describe() and collect()

    def labels(self, *values: str) -> HistogramSeries:
        key = tuple(str(v) for v in values)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = HistogramSeries(self.buckets)
            return series

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            items = list(self._series.items())
        les = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for key, series in items:
            counts, total = series.snapshot()
            family.add_metric(list(key), list(zip(les, accumulate(counts), strict=True)), total)
        yield family


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
