"""Bars/s from a fake Alpaca websocket through the bars connector onto market.bars.1m.

Measures the whole live path: msgpack frames in, parse + validate + revision book, Avro encode,
produce, and the broker's acknowledgement (a final flush). The fake server runs in the same
event loop, so its packing costs are included. Uses KAFKA_BOOTSTRAP_SERVERS when set, else
starts an embedded Tansu broker. Usage: python bench/bench_bars_connector.py [minutes]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.alpaca_bars import BarsConfig, BarsConnector  # noqa: E402
from connectors.credentials import CredentialSource  # noqa: E402
from connectors.intake import ProducerSink  # noqa: E402
from opsinfra.kafka_admin import create_topics  # noqa: E402
from opsinfra.kafka_config import admin_config  # noqa: E402
from opsinfra.settings import Settings  # noqa: E402
from schemas.codec import HeaderCodec  # noqa: E402
from schemas.topic_io import RecordProducer, read_records  # noqa: E402
from schemas.topics import ALL_TOPICS, BARS  # noqa: E402
from tests.fakes import wait_until  # noqa: E402
from tests.fakes.alpaca_market import FakeAlpacaRest, FakeAlpacaStream, bar_msg  # noqa: E402
from trading.calendar import TradingCalendar  # noqa: E402
from trading.clock import WallClock  # noqa: E402

SYMBOLS = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA")
KEY = ("PKBENCH", "bench-secret")
T0 = datetime(2025, 1, 2, 14, 30, tzinfo=UTC)


async def run(settings: Settings, bootstrap: str, minutes: int) -> tuple[int, float, float]:
    total = minutes * len(SYMBOLS)
    frames = [[bar_msg(s, T0 + timedelta(minutes=m), c=100.0 + (m % 10) / 10) for s in SYMBOLS]
              for m in range(minutes)]
    with FakeAlpacaRest({KEY}) as rest:
        async with FakeAlpacaStream({KEY}) as stream:
            config = BarsConfig.from_settings(
                settings, symbols=SYMBOLS, stream_url=stream.url, data_url=rest.url,
                gap_check_interval_s=None, gap_lookback_s=60.0,
            )
            producer = RecordProducer(settings, bootstrap, HeaderCodec())
            connector = BarsConnector(
                config,
                credentials=CredentialSource(file=None, key_id=SecretStr(KEY[0]),
                                             secret_key=SecretStr(KEY[1])),
                sink=ProducerSink(producer),
                calendar=TradingCalendar.xnys(),
                clock=WallClock(),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(connector.run(stop))
            await wait_until(lambda: stream.subscribed_clients == 1, timeout=60, what="subscription")
            start = time.perf_counter()
            for frame in frames:
                await stream.send(frame)
            sent = time.perf_counter()
            await wait_until(lambda: connector.intake.stats.live == total, timeout=600,
                             what="every bar through the connector")
            await asyncio.to_thread(producer.flush, 120)
            done = time.perf_counter()
            stop.set()
            await task
    return total, sent - start, done - start


def main() -> None:
    minutes = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    tmp = tempfile.TemporaryDirectory()
    if not bootstrap:
        from opsinfra.embedded import TansuBroker

        broker = TansuBroker(Path(tmp.name))
        broker.start()
        bootstrap = broker.bootstrap
    try:
        prefix = f"bench-{uuid.uuid4().hex[:8]}."
        settings = Settings(_env_file=None, kafka_bootstrap_servers=bootstrap,  # type: ignore[call-arg]
                            pipeline_topic_prefix=prefix, pipeline_data_dir=Path(tmp.name))
        create_topics(AdminClient(admin_config(settings, bootstrap)), ALL_TOPICS, prefix=prefix)
        total, send_s, total_s = asyncio.run(run(settings, bootstrap, minutes))
        on_topic = len(read_records(settings, bootstrap, HeaderCodec(), BARS, quiet_s=1.0))
        print(f"bars connector: {total} bars ({len(SYMBOLS)} symbols x {minutes} minutes), "
              f"{on_topic} on {prefix}{BARS.name}")
        print(f"  fake websocket -> connector -> broker (acked): {total / total_s:,.0f} bars/s "
              f"({total_s:.2f} s; the server finished sending after {send_s:.2f} s)")
        if on_topic != total:
            raise SystemExit(f"expected {total} records on the topic, found {on_topic}")
    finally:
        if broker is not None:
            broker.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
