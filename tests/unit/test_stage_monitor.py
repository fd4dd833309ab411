"""The faust stage monitor, fed faust's sensor calls by hand: records, latency, lag, progress, DLQ."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.types import TP, Message
from pydantic import SecretStr

from opsinfra.endpoints import Endpoints
from opsinfra.metrics import Metrics
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.topics import BARS
from streams.app import create_app
from streams.monitor import StageMonitor, stage_of

BARS_TP = TP("market.bars.1m", 3)


def message(tp: TP, offset: int) -> Message:
    return Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"AAPL", b"v", None, tp=tp)


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


@pytest.fixture
def fed() -> tuple[Metrics, StageMonitor]:
    m = Metrics()
    return m, StageMonitor(stage="features", metrics=m)


def test_acked_messages_become_records_latency_and_progress(fed: tuple[Metrics, StageMonitor]) -> None:
    m, mon = fed
    msgs = [message(BARS_TP, o) for o in range(5)]
    for msg in msgs:
        mon.on_message_in(BARS_TP, msg.offset, msg)
    for msg in msgs[:4]:  # one still in flight: not processed yet
        mon.on_message_out(BARS_TP, msg.offset, msg)
    other = TP("news.raw", 0)
    mon.on_message_out(other, 0, message(other, 0))  # never seen coming in: counted, not timed
    assert sample(m, "ops_records_processed_total", stage="features", topic="market.bars.1m") is None
    mon.export()  # counters move once a second, not per message
    assert sample(m, "ops_records_processed_total", stage="features", topic="market.bars.1m") == 4
    assert sample(m, "ops_records_processed_total", stage="features", topic="news.raw") == 1
    assert sample(m, "ops_processing_latency_seconds_count", stage="features") == 4
    assert sample(m, "ops_last_progress_timestamp_seconds", stage="features") is not None
    mon.on_message_out(BARS_TP, 4, msgs[4])
    mon.export()
    mon.export()  # nothing new: no double counting
    assert sample(m, "ops_records_processed_total", stage="features", topic="market.bars.1m") == 5


def test_lag_is_high_watermark_minus_committed_or_read_position(fed: tuple[Metrics, StageMonitor]) -> None:
    m, mon = fed
    lag = {"stage": "features", "topic": "market.bars.1m", "partition": "3"}
    mon.track_tp_end_offset(BARS_TP, 100)
    mon.export()
    assert sample(m, "ops_consumer_lag", **lag) is None  # nothing read or committed yet
    mon.on_message_in(BARS_TP, 9, message(BARS_TP, 9))
    mon.export()
    assert sample(m, "ops_consumer_lag", **lag) == 90  # before the first commit: the read position
    mon.on_tp_commit({BARS_TP: 60})
    mon.export()
    assert sample(m, "ops_consumer_lag", **lag) == 40
    mon.on_tp_commit({BARS_TP: 120})  # a high watermark below the commit (Tansu): 0, not negative
    mon.export()
    assert sample(m, "ops_consumer_lag", **lag) == 0
    mon.on_rebalance_start(SimpleNamespace(rebalancing_count=1))  # type: ignore[arg-type]
    mon.export()
    assert sample(m, "ops_consumer_lag", **lag) is None  # maybe revoked: no stale series


def test_the_stage_is_named_by_the_app_id() -> None:
    assert stage_of("ops-pipeline-features") == "features"
    assert stage_of("ops-pipeline-signals") == "signals"
    assert stage_of("bench-consume-only") == "bench-consume-only"


def test_create_app_attaches_the_monitor_and_counts_dead_letters(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers="127.0.0.1:1",
        pipeline_topic_prefix="p.",
        pipeline_data_dir=tmp_path,
        apca_api_secret_key=SecretStr("unused"),
    )
    m = Metrics()

    async def build() -> None:  # faust binds its services to the running loop
        papp = create_app(
            settings,
            Endpoints("127.0.0.1:1", "", None, False),
            app_id="ops-pipeline-features",
            codec=HeaderCodec(),
            metrics=m,
        )
        monitor = papp.app.monitor
        assert isinstance(monitor, StageMonitor) and monitor.stage == "features" and monitor.metrics is m
        papp.dead_letter(
            BARS, stage="features", error=ValueError("bad"), key=b"k", value=b"v", partition=0, offset=1
        )
        papp.dead_letter(
            BARS, stage="features", error="not a bar", key=None, value=None, partition=0, offset=2
        )

    asyncio.run(build())
    assert sample(m, "ops_dlq_records_total", stage="features", topic="p.market.bars.1m.dlq") == 2
    assert sample(m, "ops_errors_total", stage="features", kind="ValueError") == 1
    assert sample(m, "ops_errors_total", stage="features", kind="Invalid") == 1
