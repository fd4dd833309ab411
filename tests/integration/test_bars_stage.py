"""The `bars` stage as `ops-pipeline run --only bars` runs it: registry, wiring, stop event."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from opsinfra.endpoints import Endpoints
from opsinfra.errors import ConfigError
from opsinfra.settings import Settings
from pipeline import stages
from schemas.codec import HeaderCodec
from schemas.topic_io import read_records
from schemas.topics import BARS
from tests.fakes import fresh_structlog, wait_until  # noqa: F401 - a fixture
from tests.fakes.alpaca_market import FakeAlpacaRest, FakeAlpacaStream, bar_msg

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("fresh_structlog")]
KEY = ("PKSTAGE01", "stage-secret-1")
T0 = datetime(2025, 11, 20, 14, 30, tzinfo=UTC)  # the stage runs on the wall clock: the past


def test_the_registered_stage_streams_until_stopped(provisioned: Settings, kafka_bootstrap: str) -> None:
    run = stages.load("bars")
    endpoints = Endpoints(kafka_bootstrap, "", None, embedded=False)
    stop = threading.Event()
    errors: list[BaseException] = []

    async def scenario() -> None:
        with FakeAlpacaRest({KEY}) as rest:
            async with FakeAlpacaStream({KEY}) as stream:
                settings = provisioned.model_copy(update={
                    "pipeline_symbols": ("AAPL", "MSFT"), "alpaca_stream_url": stream.url,
                    "alpaca_data_url": rest.url, "apca_api_key_id": SecretStr(KEY[0]),
                    "apca_api_secret_key": SecretStr(KEY[1]),
                })

                def target() -> None:
                    try:
                        run(settings, endpoints, stop)
                    except BaseException as exc:  # surfaced by the assertion below
                        errors.append(exc)

                worker = threading.Thread(target=target, daemon=True)
                worker.start()
                await wait_until(lambda: stream.subscribed_clients == 1 or bool(errors), timeout=60)
                assert not errors, errors
                await stream.send([bar_msg(s, T0 + timedelta(minutes=m)) for m in range(3)
                                   for s in ("AAPL", "MSFT")])
                def count() -> int:
                    return len(read_records(settings, kafka_bootstrap, HeaderCodec(), BARS, quiet_s=0.2))

                while await asyncio.to_thread(count) < 6:
                    await asyncio.sleep(0.1)
                stop.set()
                await asyncio.to_thread(worker.join, 30)
                assert not worker.is_alive() and not errors

    asyncio.run(scenario())


def test_the_stage_without_credentials_is_a_configuration_error(
    provisioned: Settings, kafka_bootstrap: str
) -> None:
    settings = provisioned.model_copy(update={"apca_api_key_id": None, "apca_api_secret_key": None,
                                              "alpaca_credentials_file": None})
    with pytest.raises(ConfigError, match="APCA_API_KEY_ID"):
        stages.load("bars")(settings, Endpoints(kafka_bootstrap, "", None, False), threading.Event())
