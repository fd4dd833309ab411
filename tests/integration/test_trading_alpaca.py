"""Alpaca paper orders against the fake trading API: one order per client_order_id whatever goes
wrong, unknown outcomes resolved by lookup and never failed by guess, fills from trade_updates."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.alpaca_trading import AlpacaOrders, TradeUpdates, outcome_of_update
from connectors.credentials import CredentialSource
from schemas.records import Execution
from tests.fakes.alpaca_trading import FakeAlpacaTrading
from trading.execution import client_order_id

pytestmark = pytest.mark.integration

T = datetime(2024, 3, 12, 14, 0, tzinfo=UTC)


def order_exec(rid: str = "rec-1", qty: float = 3.0, symbol: str = "AAPL") -> Execution:
    return Execution(recommendation_id=rid, account="paper", symbol=symbol, action="BUY", status="SUBMITTED",
                     gates=[], failure_reason=None, qty=qty, price=100.0, bar_used_ts=T, broker_order_id=None,
                     client_order_id=client_order_id("paper", rid), mode="alpaca-paper", decided_at=T,
                     intent="entry")


@pytest.fixture
def fake() -> Iterator[FakeAlpacaTrading]:
    server = FakeAlpacaTrading(prices={"AAPL": 101.5}).start()
    yield server
    server.stop()


def creds(key: str = "key", secret: str = "secret") -> CredentialSource:
    return CredentialSource(file=None, key_id=SecretStr(key), secret_key=SecretStr(secret))


def orders(fake: FakeAlpacaTrading, **kw: Any) -> AlpacaOrders:
    return AlpacaOrders(kw.pop("credentials", creds()), url=fake.url, timeout_s=kw.pop("timeout_s", 2.0))


def test_submit_then_the_same_order_again_is_one_order(fake: FakeAlpacaTrading) -> None:
    o = orders(fake)
    e = order_exec()
    first = o.submit(e)
    assert first.status == "SUBMITTED" and first.broker_order_id is not None
    stored = fake.by_client_id[e.client_order_id or ""]
    deadline = time.monotonic() + 10
    while stored.status != "filled":  # the fake fills it shortly after answering
        assert time.monotonic() < deadline, stored.data
        time.sleep(0.02)
    again = o.submit(e)  # a redelivery: 422 duplicate -> lookup
    assert again.status == "FILLED" and again.broker_order_id == first.broker_order_id
    assert again.qty == 3.0 and again.price == 101.5
    coid = e.client_order_id or ""
    assert fake.post_attempts.count(coid) == 2
    assert len(fake.orders_for(coid)) == 1
    assert fake.lookups == [e.client_order_id]


def test_timeout_is_resolved_by_lookup_not_by_a_second_post(fake: FakeAlpacaTrading) -> None:
    fake.post_delay_s = 3.0
    o = orders(fake, timeout_s=1.0)
    e = order_exec("rec-slow")
    out = o.submit(e)
    assert out.broker_order_id == fake.by_client_id[e.client_order_id or ""].data["id"]
    assert fake.post_attempts == [e.client_order_id]  # never re-POSTed


def test_server_error_after_storing_is_found_by_lookup(fake: FakeAlpacaTrading) -> None:
    fake.scripted = [(500, {"code": 50010000, "message": "internal", "store": True})]
    out = orders(fake).submit(order_exec("rec-500"))
    assert out.status in ("SUBMITTED", "FILLED") and out.broker_order_id is not None


def test_unknown_outcome_stays_submitted(fake: FakeAlpacaTrading) -> None:
    fake.scripted = [(503, {"code": 50300000, "message": "unavailable"})]
    out = orders(fake).submit(order_exec("rec-503"))
    assert out.status == "SUBMITTED" and out.broker_order_id is None and not out.known
    assert fake.post_attempts == [client_order_id("paper", "rec-503")]


def test_rejection_is_failed_with_the_brokers_reason(fake: FakeAlpacaTrading) -> None:
    fake.fill = "reject"
    out = orders(fake).submit(order_exec("rec-poor"))
    assert out.status == "FAILED" and out.reason is not None and "insufficient buying power" in out.reason


def test_rotated_keys_are_read_again_after_a_401(fake: FakeAlpacaTrading, tmp_path: Path) -> None:
    file = tmp_path / "alpaca.env"
    file.write_text("APCA_API_KEY_ID=old\nAPCA_API_SECRET_KEY=old\n")
    source = CredentialSource(file=file, key_id=None, secret_key=None)
    o = orders(fake, credentials=source)
    o._get_client()  # keys loaded at start: the old ones
    file.write_text("APCA_API_KEY_ID=key\nAPCA_API_SECRET_KEY=secret\n")  # rotated
    out = o.submit(order_exec("rec-rotated"))
    assert out.broker_order_id is not None and len(fake.orders) == 1


def test_trade_updates_stream_delivers_the_fill(fake: FakeAlpacaTrading) -> None:
    async def main() -> list[Any]:
        got: list[Any] = []
        loop = asyncio.get_running_loop()
        stream = TradeUpdates(creds(), url=fake.stream_url, loop=loop, sink=got.append)
        stream.start()
        try:
            deadline = time.monotonic() + 20
            while not fake._ws and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(orders(fake).submit, order_exec("rec-stream"))
            while len(got) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await asyncio.to_thread(stream.stop)
        return got

    updates = asyncio.run(main())
    outcomes = [outcome_of_update(u) for u in updates]
    assert [o.status for o in outcomes if o is not None] == ["SUBMITTED", "FILLED"]
    filled = outcomes[-1]
    assert filled is not None and filled.qty == 3.0 and filled.price == 101.5
    assert updates[-1].order.client_order_id == client_order_id("paper", "rec-stream")
