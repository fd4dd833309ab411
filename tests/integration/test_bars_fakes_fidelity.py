"""The fakes speak what alpaca-py speaks: its own StockDataStream and StockHistoricalDataClient
(0.44) run against them unchanged. No broker needed; this keeps the connector tests honest."""

from __future__ import annotations

import asyncio
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fakes import wait_until
from tests.fakes.alpaca_market import FakeAlpacaRest, FakeAlpacaStream, bar_msg

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    from alpaca.data.enums import DataFeed
    from alpaca.data.historical.stock import StockHistoricalDataClient
    from alpaca.data.live.stock import StockDataStream
    from alpaca.data.models import Bar as AlpacaBar
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
KEY = ("PKFIDELITY01", "fidelity-secret")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # alpaca-py's legacy websockets client
def test_alpaca_py_stock_data_stream_reads_the_fake_stream() -> None:
    got: list[AlpacaBar] = []

    async def on_bar(bar: AlpacaBar | dict[Any, Any]) -> None:
        assert isinstance(bar, AlpacaBar)
        got.append(bar)

    async def scenario() -> FakeAlpacaStream:
        async with FakeAlpacaStream({KEY}) as fake:
            stream = StockDataStream(KEY[0], KEY[1], feed=DataFeed.IEX, url_override=fake.url)
            stream.subscribe_bars(on_bar, "AAPL", "MSFT")
            stream.subscribe_updated_bars(on_bar, "AAPL")
            task = asyncio.create_task(stream._run_forever())
            await wait_until(lambda: fake.subscribed_clients == 1, what="alpaca-py subscribed")
            await fake.send([bar_msg("AAPL", T0), bar_msg("MSFT", T0, c=100.0)])
            await fake.send([bar_msg("AAPL", T0, c=100.9, kind="u")])
            await wait_until(lambda: len(got) == 3, what="bars delivered to alpaca-py")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stream.close()
            return fake

    fake = asyncio.run(scenario())
    assert fake.content_types == ["application/msgpack"]  # alpaca-py asks for msgpack too
    assert fake.subscriptions[0]["bars"] == ["AAPL", "MSFT"]
    assert fake.subscriptions[0]["updatedBars"] == ["AAPL"]
    assert [(b.symbol, b.timestamp, b.close) for b in got] == [
        ("AAPL", T0, 100.5), ("MSFT", T0, 100.0), ("AAPL", T0, 100.9)
    ]
    assert got[0].volume == 1200 and got[0].trade_count == 12 and got[0].vwap == 100.25


def test_alpaca_py_historical_client_parses_the_fake_rest_with_paging() -> None:
    with FakeAlpacaRest({KEY}, page_size=7) as fake:
        for m in range(10):
            fake.add("AAPL", T0 + timedelta(minutes=m), c=100.0 + m / 10)
            fake.add("MSFT", T0 + timedelta(minutes=m))
        client = StockHistoricalDataClient(KEY[0], KEY[1], url_override=fake.url)
        request: Any = StockBarsRequest(
            symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute,
            start=T0 + timedelta(minutes=2), end=T0 + timedelta(minutes=8), feed=DataFeed.IEX,
        )
        barset: Any = client.get_stock_bars(request)
        client._session.close()
    assert len(fake.requests) == 2  # 14 bars in pages of 7, via next_page_token
    aapl = barset["AAPL"]
    assert [b.timestamp for b in aapl] == [T0 + timedelta(minutes=m) for m in range(2, 9)]  # end inclusive
    assert aapl[0].close == 100.2 and aapl[0].timestamp.tzinfo is not None
    assert len(barset["MSFT"]) == 7
    assert fake.requests[0]["feed"] == "iex" and fake.requests[0]["timeframe"] == "1Min"
