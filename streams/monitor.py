"""The faust Monitor of an agent stage, feeding the Prometheus metrics of opsinfra.metrics; not
faust's PrometheusMonitor, which costs far more a message and names its families per app (README).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from faust.sensors import Monitor
from faust.types import TP, AppT, Message
from mode import Service

from opsinfra.metrics import Metrics

APP_ID_PREFIX = "ops-pipeline-"


def stage_of(app_id: str) -> str:
    """The stage label of an app id: "ops-pipeline-features" -> "features"."""
    return app_id.removeprefix(APP_ID_PREFIX) or app_id


class StageMonitor(Monitor):
    """faust's Monitor plus: records processed per topic (acked, so outputs were delivered),
    in-to-ack latency, consumer lag per partition and the time of last progress."""

    def __init__(
        self, *args: Any, stage: str, metrics: Metrics, export_interval_s: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.stage = stage
        self.metrics = metrics
        self.export_interval_s = export_interval_s
        self._latency = metrics.latency.labels(stage)
        self._bounds = self._latency.bounds
        self._latency_counts = [0] * (len(self._bounds) + 1)  # since the last export
        self._latency_sum = 0.0
        self._processed: dict[str, int] = {}  # topic -> messages acked since the last export
        self._records: dict[str, Any] = {}  # topic -> its labelled counter
        self._lags: dict[tuple[str, str], Any] = {}  # (topic, partition) -> its labelled gauge

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        """Every stream is done with the message (for our agents: its outputs were delivered)."""
        super().on_message_out(tp, offset, message)  # sets time_total when time_in is known
        total = message.time_total
        if total is not None:
            self._latency_counts[bisect_left(self._bounds, total)] += 1
            self._latency_sum += total
        processed = self._processed
        topic = tp.topic
        processed[topic] = processed.get(topic, 0) + 1

    def on_rebalance_start(self, app: AppT) -> dict[str, Any]:
        # offsets of partitions this worker may lose: their lag is someone else's to report
        self.tp_end_offsets.clear()
        self.tp_committed_offsets.clear()
        self.tp_read_offsets.clear()
        return super().on_rebalance_start(app)

    @Service.task
    async def _export_loop(self) -> None:
        async for _ in self.itertimer(self.export_interval_s, name="StageMonitor.export"):
            self.export()

    async def on_stop(self) -> None:
        self.export()
        await super().on_stop()

    def export(self) -> None:
        """Bring the Prometheus counters and gauges up to date (on the app's loop)."""
        processed, self._processed = self._processed, {}
        if any(self._latency_counts):
            counts, self._latency_counts = self._latency_counts, [0] * len(self._latency_counts)
            total, self._latency_sum = self._latency_sum, 0.0
            self._latency.add(counts, total)
        m, stage = self.metrics, self.stage
        for topic, n in processed.items():
            child = self._records.get(topic)
            if child is None:
                child = self._records[topic] = m.records.labels(stage, topic)
            child.inc(n)
        if processed:
            m.progressed(stage)
        self._export_lag()

    def _export_lag(self) -> None:
        """Lag = high watermark - committed offset (the read position until the first commit).

        The high watermark is the one aiokafka saw in the last fetch of the partition. Tansu
        reports the base offset of the partition's last batch there, up to a batch below the real
        end, so on Tansu lag reads low (clamped at 0), never high.
        """
        m, stage = self.metrics, self.stage
        committed, read = self.tp_committed_offsets, self.tp_read_offsets
        seen: dict[tuple[str, str], Any] = {}
        for tp, end in list(self.tp_end_offsets.items()):
            position = committed.get(tp)
            if position is None:
                last = read.get(tp)
                if last is None:
                    continue
                position = last + 1
            key = (tp.topic, str(tp.partition))
            gauge = self._lags.get(key)
            if gauge is None:
                gauge = m.lag.labels(stage, *key)
            gauge.set(max(0, end - position))
            seen[key] = gauge
        for key in self._lags.keys() - seen.keys():
            m.lag.remove(stage, *key)  # revoked: no stale series
        self._lags = seen
