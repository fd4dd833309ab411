"""Broker truth from the fake Alpaca through alpaca-py's real clients: one session per key pair,
external and option positions, positions closed at the broker, bracket legs, 429 and 401 handling,
secrets out of logs, and the stricter fake refusing what Alpaca refuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from connectors.alpaca_broker import BrokerSession, sessions_for
from connectors.alpaca_trading import AlpacaOrders, TradeUpdates, outcome_of_update
from connectors.credentials import CredentialSource
from opsinfra.errors import ConnectorError
from opsinfra.settings import Settings
from schemas.records import Execution
from tests.fakes.alpaca_trading import FakeAlpacaTrading
from trading.execution import client_order_id
from trading.gates import AccountConfig

pytestmark = pytest.mark.integration

T = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)
CALL = "QCOM260206C00150000"
K1, K2 = ("AKLARGE1", "large-secret"), ("AKTINY22", "tiny-secret")


@pytest.fixture
def fake() -> Iterator[FakeAlpacaTrading]:
    server = FakeAlpacaTrading(prices={"AAPL": 101.5}).start()
    yield server
    server.stop()


def creds(key: tuple[str, str] = ("key", "secret")) -> CredentialSource:
    return CredentialSource(file=None, key_id=SecretStr(key[0]), secret_key=SecretStr(key[1]))


def session(fake: FakeAlpacaTrading, source: CredentialSource | None = None) -> BrokerSession:
    return BrokerSession(source or creds(), trading_url=fake.url, data_url=fake.url, timeout_s=5.0)


def keyfile(path: Path, key: tuple[str, str]) -> Path:
    path.write_text(f"APCA_API_KEY_ID={key[0]}\nAPCA_API_SECRET_KEY={key[1]}\n")
    return path


def order_exec(rid: str, qty: float = 3.0, symbol: str = "AAPL", action: str = "BUY") -> Execution:
    return Execution(recommendation_id=rid, account="paper", symbol=symbol, action=action, status="SUBMITTED",
                     gates=[], failure_reason=None, qty=qty, price=100.0, bar_used_ts=T, broker_order_id=None,
                     client_order_id=client_order_id("paper", rid), mode="alpaca-paper", decided_at=T)


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
    return result


def snap(s: BrokerSession, account: str = "paper", symbols: frozenset[str] = frozenset({"AAPL"})) -> Any:
    return s.snapshot(account, pipeline_symbols=symbols, trigger="poll", now=T)


def test_accounts_with_their_own_keys_each_see_their_own_cash_and_positions(
        fake: FakeAlpacaTrading, tmp_path: Path) -> None:
    fake.add_account(*K1, cash=121_000.0, buying_power=242_000.0)
    fake.add_account(*K2, cash=1_000.0, buying_power=1_000.0, options_buying_power=1_000.0)
    fake.set_position("AAPL", 10, 100.0, key=K1)
    fake.set_position("MSFT", 1, 400.0, key=K2, current_price=410.0)
    accounts = [AccountConfig(name="large-100k", mode="alpaca-paper",
                              credentials_file=str(keyfile(tmp_path / "large.env", K1))),
                AccountConfig(name="tiny-1k", mode="alpaca-paper",
                              credentials_file=str(keyfile(tmp_path / "tiny.env", K2))),
                AccountConfig(name="large-too", mode="alpaca-paper",
                              credentials_file=str(tmp_path / "large.env")),
                AccountConfig(name="global", mode="alpaca-paper"),
                AccountConfig(name="sim")]
    settings = Settings(_env_file=None, apca_api_key_id="key", apca_api_secret_key="secret",
                        alpaca_trading_url=fake.url, alpaca_data_url=fake.url)
    sessions = sessions_for(accounts, settings, timeout_s=5.0)
    assert set(sessions) == {"large-100k", "tiny-1k", "large-too", "global"}  # simulate has none
    assert sessions["large-100k"] is sessions["large-too"] and sessions["large-100k"].accounts == (
        "large-100k", "large-too")
    assert len({id(s) for s in sessions.values()}) == 3
    large, large_pos = snap(sessions["large-100k"], "large-100k")
    tiny, tiny_pos = snap(sessions["tiny-1k"], "tiny-1k")
    default, default_pos = snap(sessions["global"], "global")
    assert (large.cash, large.buying_power, large.equity) == (121_000.0, 242_000.0, 122_015.0)
    assert (tiny.cash, tiny.buying_power, tiny.equity) == (1_000.0, 1_000.0, 1_410.0)
    assert [(p.account, p.symbol, p.qty) for p in large_pos] == [("large-100k", "AAPL", 10.0)]
    assert [(p.symbol, p.origin, p.market_value) for p in tiny_pos] == [("MSFT", "external", 410.0)]
    assert default.cash == 100_000.0 and default_pos == []


def test_an_external_option_position_and_its_marks(fake: FakeAlpacaTrading, caplog: Any) -> None:
    fake.set_position(CALL, 2, 5.2, current_price=5.5)
    fake.set_position("AAPL", 10, 100.0)
    fake.set_option_quote(CALL, bid=5.4, ask=5.6, last=5.5, iv=0.31,
                          greeks={"delta": 0.52, "gamma": 0.04, "theta": -0.08, "vega": 0.12, "rho": 0.01})
    fake.set_option_quote("SPY260320P00580000", bid=None, ask=7.2)  # no bid
    fake.set_option_quote("SPY260320C00600000", bid=3.1, ask=2.9)  # crossed
    s = session(fake)
    account, positions = snap(s)
    by = {p.symbol: p for p in positions}
    call = by[CALL]
    assert (call.origin, call.asset_class, call.multiplier, call.qty) == ("external", "us_option", 100.0, 2.0)
    assert (call.underlying, call.expiration, call.option_type) == ("QCOM", "2026-02-06", "call")
    assert call.strike == 150.0
    assert call.market_value == pytest.approx(1100.0) and call.unrealized_pl == pytest.approx(60.0)
    assert by["AAPL"].origin == "pipeline" and account.long_market_value == pytest.approx(2115.0)
    quotes = {q.contract: q for q in s.option_quotes(
        [CALL, "SPY260320P00580000", "SPY260320C00600000", "NOPE260320C00001000"], now=T)}
    assert set(quotes) == {CALL, "SPY260320P00580000", "SPY260320C00600000"}  # nothing sent for NOPE
    q = quotes[CALL]
    assert (q.bid, q.ask, q.last, q.iv, q.delta, q.source) == (5.4, 5.6, 5.5, 0.31, 0.52, "quote")
    assert quotes["SPY260320P00580000"].bid is None and quotes["SPY260320P00580000"].mid is None
    assert quotes["SPY260320C00600000"].mid is None and "crossed" in caplog.text


def test_a_position_sold_at_the_broker_appears_once_with_qty_0_and_its_last_fill(
        fake: FakeAlpacaTrading) -> None:
    fake.set_position("AAPL", 10, 100.0)
    s = session(fake)
    _, first = snap(s)
    assert [(p.symbol, p.qty) for p in first] == [("AAPL", 10.0)] and s.calls == 3
    fake.manual_trade("AAPL", -10, 104.25)  # at the dashboard, not through the pipeline
    account, second = snap(s)
    assert [(p.symbol, p.qty, p.current_price, p.origin) for p in second] == [
        ("AAPL", 0.0, 104.25, "pipeline")]
    assert second[0].market_value == 0.0 and second[0].avg_entry_price == 100.0
    assert account.cash == pytest.approx(101_042.5) and s.calls == 3 + 4  # one closed-orders read
    _, third = snap(s)
    assert third == []


def test_a_bracket_stop_that_fills_while_away_is_seen_closed_at_its_price(fake: FakeAlpacaTrading) -> None:
    e = order_exec("rec-bracket", qty=3)
    out = AlpacaOrders(creds(), url=fake.url, timeout_s=5.0).submit(e, take_profit=110.004, stop_loss=95.499)
    assert out.broker_order_id is not None
    parent = fake.by_client_id[e.client_order_id or ""]
    assert parent.data["order_class"] == "bracket" and len(parent.legs) == 2
    assert {leg.data["client_order_id"] for leg in parent.legs}.isdisjoint({e.client_order_id})
    wait_for(lambda: all(leg.status == "new" for leg in parent.legs))  # the entry filled: legs live
    s = session(fake)
    account, _ = snap(s)
    legs = {o.order_type: o for o in account.open_orders}
    assert set(legs) == {"limit", "stop"} and {o.parent_id for o in legs.values()} == {parent.id}
    assert legs["limit"].limit_price == 110.0 and legs["stop"].stop_price == 95.5  # to the cent
    fake.trigger_stop(e.client_order_id or "")
    account, positions = snap(s)
    assert [(p.symbol, p.qty, p.current_price) for p in positions] == [("AAPL", 0.0, 95.5)]
    assert account.open_orders == []  # the take-profit leg canceled with it (OCO)


def test_cancel_legs_frees_the_position_for_the_desks_own_exit(fake: FakeAlpacaTrading) -> None:
    orders = AlpacaOrders(creds(), url=fake.url, timeout_s=5.0)
    entry = order_exec("rec-entry", qty=3)
    orders.submit(entry, take_profit=120.0, stop_loss=90.0)
    parent = fake.by_client_id[entry.client_order_id or ""]
    wait_for(lambda: all(leg.status == "new" for leg in parent.legs))
    exit_ = order_exec("rec-exit", qty=3, action="SELL")
    held = orders.submit(exit_)  # the legs hold the shares, as at Alpaca
    assert held.status == "FAILED" and "insufficient qty available" in (held.reason or "")
    s = session(fake)
    assert s.cancel_legs(entry.client_order_id or "") == 2
    assert {leg.status for leg in parent.legs} == {"canceled"}
    assert s.cancel_legs(entry.client_order_id or "") == 0 and s.cancel_legs("unknown") == 0
    again = order_exec("rec-exit-2", qty=3, action="SELL")
    assert orders.submit(again).broker_order_id is not None


def test_a_429_waits_what_retry_after_asks(fake: FakeAlpacaTrading) -> None:
    fake.rate_limit(1, retry_after="1", path_prefix="/v2/account")
    account, _ = snap(session(fake))
    assert account.cash == 100_000.0
    (t429, s429), (t200, s200) = fake.requests_to("/v2/account")
    assert (s429, s200) == (429, 200)
    assert 0.9 <= t200 - t429 < 2.5  # alpaca-py alone would wait its fixed 3 s


def test_a_401_reads_the_credentials_file_again(fake: FakeAlpacaTrading, tmp_path: Path) -> None:
    file = keyfile(tmp_path / "alpaca.env", K1)
    fake.add_account(*K1, cash=5_000.0)
    s = session(fake, CredentialSource(file=file, key_id=None, secret_key=None))
    assert snap(s)[0].cash == 5_000.0
    fake.rotate_keys(K1, ("AKROTATED", "rotated-secret"))
    keyfile(file, ("AKROTATED", "rotated-secret"))
    assert snap(s)[0].cash == 5_000.0
    assert [status for _t, status in fake.requests_to("/v2/account")] == [200, 401, 200]


def test_secrets_never_reach_logs_reprs_or_errors(fake: FakeAlpacaTrading, tmp_path: Path,
                                                  caplog: Any, capsys: Any) -> None:
    caplog.set_level(logging.DEBUG)
    file = keyfile(tmp_path / "wrong.env", ("AKWRONGKEY123", "wrong-secret-456"))
    s = session(fake, CredentialSource(file=file, key_id=None, secret_key=None, label="large-100k"))
    with pytest.raises(ConnectorError) as failed:
        snap(s)
    out = AlpacaOrders(s.credentials, url=fake.url, timeout_s=5.0).submit(order_exec("rec-wrong"))
    assert out.status == "FAILED"
    captured = capsys.readouterr()
    text = "".join([caplog.text, captured.out, captured.err, str(failed.value), repr(s), repr(s.credentials),
                    repr(out)])
    assert "401" in str(failed.value) and "large-100k" in text
    assert "AKWRONGKEY123" not in text and "wrong-secret-456" not in text


def test_the_fake_refuses_what_alpaca_refuses(fake: FakeAlpacaTrading) -> None:
    fake.add_account(*K2, cash=1_000.0, buying_power=1_000.0, shorting_enabled=False)
    orders = AlpacaOrders(creds(K2), url=fake.url, timeout_s=5.0)
    zero = orders.submit(order_exec("rec-zero", qty=0))
    unknown = orders.submit(order_exec("rec-zzzz", symbol="ZZZZ"))
    poor = orders.submit(order_exec("rec-poor", qty=20))
    short = orders.submit(order_exec("rec-short", qty=1, action="SELL"))
    assert zero.status == "FAILED" and "qty" in (zero.reason or "")
    assert unknown.status == "FAILED" and "not found" in (unknown.reason or "")
    assert poor.status == "FAILED" and "insufficient buying power" in (poor.reason or "")
    assert fake.post_attempts.count(client_order_id("paper", "rec-poor")) == 1  # no key reload and re-POST
    assert short.status == "FAILED" and "insufficient qty available" in (short.reason or "")
    assert not fake.account(K2).orders
    headers = {"APCA-API-KEY-ID": K2[0], "APCA-API-SECRET-KEY": K2[1]}
    body = {"symbol": "AAPL", "qty": "1", "side": "hold", "type": "market", "time_in_force": "day"}
    assert requests.post(f"{fake.url}/v2/orders", json=body, headers=headers, timeout=5).status_code == 422
    option = body | {"symbol": CALL, "qty": "1.5", "side": "buy"}
    fake.set_option_quote(CALL, bid=1.0, ask=1.2)
    assert requests.post(f"{fake.url}/v2/orders", json=option, headers=headers, timeout=5).status_code == 422
    theirs = AlpacaOrders(creds(), url=fake.url, timeout_s=5.0).submit(order_exec("rec-other", qty=1))
    other = f"{fake.url}/v2/orders/{theirs.broker_order_id}"
    assert requests.get(other, headers=headers, timeout=5).status_code == 404  # another account's order
    assert requests.get(other, timeout=5).status_code == 401


def updates_of(fake: FakeAlpacaTrading, act: Callable[[], None], until: Callable[[list[Any]], bool],
               keys: tuple[tuple[str, str], ...]) -> list[list[Any]]:
    """Trade updates each key pair's stream received while `act` ran, until `until(first's)`."""
    async def main() -> list[list[Any]]:
        loop = asyncio.get_running_loop()
        got: list[list[Any]] = [[] for _ in keys]
        streams = [TradeUpdates(creds(k), url=fake.stream_url, loop=loop, sink=g.append)
                   for k, g in zip(keys, got, strict=True)]
        for stream in streams:
            stream.start()
        try:
            deadline = time.monotonic() + 20
            while fake.stream_clients() < len(keys) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(act)
            while not until(got[0]) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # anything else on its way
        finally:  # alpaca-py notices a stop within its 5 s receive timeout: stop both at once
            await asyncio.gather(*(asyncio.to_thread(stream.stop) for stream in streams))
        return got

    return asyncio.run(main())


@pytest.mark.parametrize("then", ["canceled", "expired"])
def test_a_partial_fill_then_cancel_or_expiry_is_filled_with_the_partial_qty(
        fake: FakeAlpacaTrading, then: str) -> None:
    fake.fill = "hold"
    fake.add_account(*K1)
    e = order_exec(f"rec-partial-{then}", qty=10)
    coid = e.client_order_id or ""

    def act() -> None:
        AlpacaOrders(creds(), url=fake.url, timeout_s=5.0).submit(e)
        wait_for(lambda: fake.by_client_id[coid].status == "new")
        fake.partial_fill(coid, 4, price=101.0, then=then)

    def event(u: Any) -> str:
        return str(getattr(u.event, "value", u.event))

    ours, theirs = updates_of(fake, act, lambda got: any(event(u) == then for u in got),
                              keys=(("key", "secret"), K1))
    events = [event(u) for u in ours]
    assert events == ["new", "partial_fill", then]
    assert theirs == []  # another key pair's stream sees none of this account's orders
    outcomes = [outcome_of_update(u) for u in ours]
    assert outcomes[1] is None  # a partial fill is not final
    final = outcomes[-1]
    assert final is not None and (final.status, final.qty, final.price) == ("FILLED", 4.0, 101.0)
    assert fake.account().positions["AAPL"].qty == 4.0
