"""An option chain from the fake Alpaca through alpaca-py's real clients: the contracts endpoint
(its parameters, validation, default expiry bound and next_page_token pages) and the chain
snapshots with greeks, turned into OptionQuote records of one snapshot and chosen from; malformed
contracts are skipped with their reasons."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from connectors import alpaca_options
from connectors.alpaca_broker import BrokerSession
from connectors.alpaca_options import OptionChainReader
from connectors.credentials import CredentialSource
from opsinfra.errors import ConnectorError
from schemas.codec import HeaderCodec, decode
from schemas.records import OptionQuote
from tests.fakes.alpaca_trading import FakeAlpacaTrading
from trading.option_chain import OptionsConfig, choose_contract

pytestmark = pytest.mark.integration

NOW = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)  # a Monday
EXPIRY = "260227"  # 25 days out


def contract(strike: int, cp: str = "C", expiry: str = EXPIRY) -> str:
    return f"QCOM{expiry}{cp}{strike * 1000:08d}"


@pytest.fixture
def fake() -> Iterator[FakeAlpacaTrading]:
    server = FakeAlpacaTrading().start()
    server.option_today = NOW.date()
    yield server
    server.stop()


@pytest.fixture
def reader(fake: FakeAlpacaTrading) -> OptionChainReader:
    creds = CredentialSource(file=None, key_id=SecretStr("key"), secret_key=SecretStr("secret"))
    return OptionChainReader(BrokerSession(creds, trading_url=fake.url, data_url=fake.url, timeout_s=5.0))


def list_chain(fake: FakeAlpacaTrading, strikes: range = range(130, 171, 5), *, expiry: str = EXPIRY) -> None:
    """Calls and puts with deltas falling 0.04 per point of strike; 0.5 at 150."""
    for k in strikes:
        for cp in ("C", "P"):
            symbol = contract(k, cp, expiry)
            delta = 0.5 - (k - 150) * 0.04 if cp == "C" else -0.5 - (k - 150) * 0.04
            fake.add_option_contract(symbol, open_interest=1_000 + k, ppind=True)
            fake.set_option_quote(symbol, bid=4.0, ask=4.2, t=NOW - timedelta(seconds=5), last=4.1, iv=0.31,
                                  greeks={"delta": round(delta, 4), "gamma": 0.04, "rho": 0.02,
                                          "theta": -0.05, "vega": 0.2})


def test_a_chain_read_through_alpaca_py_becomes_one_snapshot_of_records(
        fake: FakeAlpacaTrading, reader: OptionChainReader) -> None:
    list_chain(fake)
    list_chain(fake, range(150, 151), expiry="260417")  # outside max_dte: not asked for
    records = reader.read("QCOM", 150.0, NOW, OptionsConfig(strike_range_pct=10))
    assert [r.contract for r in records] == sorted(contract(k, cp) for k in range(135, 166, 5) for cp in "CP")
    r = next(r for r in records if r.contract == contract(150))
    assert (r.bid, r.ask, r.last, r.iv, r.delta, r.theta) == (4.0, 4.2, 4.1, 0.31, 0.5, -0.05)
    assert (r.expiration, r.strike, r.option_type, r.open_interest, r.penny_program) == (
        "2026-02-27", 150.0, "call", 1_150, True)
    assert (r.chain_id, r.chain_as_of, r.underlying_price, r.modelled, r.source) == (
        "QCOM@2026-02-02T15:00:00Z", NOW, 150.0, False, "chain")
    asked = {k: v for k, v in _last_query(fake, "/v2/options/contracts").items() if k != "limit"}
    assert asked == {"underlying_symbols": "QCOM", "status": "active",
                     "expiration_date_gte": "2026-02-09", "expiration_date_lte": "2026-03-19",
                     "strike_price_gte": "135", "strike_price_lte": "165"}
    codec = HeaderCodec()
    value, headers = codec.encode("options.quotes", r)
    assert decode(codec, OptionQuote, value, headers, topic="options.quotes") == r
    choice = choose_contract(records, underlying="QCOM", action="SELL", now=NOW + timedelta(minutes=1),
                             config=OptionsConfig())
    assert choice.quote is not None and choice.quote.contract == contract(150, "P")


def _last_query(fake: FakeAlpacaTrading, path: str) -> dict[str, str]:
    return dict(fake.last_queries[path])


def test_contracts_are_read_page_by_page(fake: FakeAlpacaTrading, reader: OptionChainReader,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    list_chain(fake, range(100, 201, 1))
    monkeypatch.setattr(alpaca_options, "CONTRACTS_PAGE", 25)
    records = reader.read("QCOM", 150.0, NOW, OptionsConfig(strike_range_pct=50))
    assert len(records) == 202 and all(r.open_interest is not None for r in records)
    assert len(fake.requests_to("/v2/options/contracts")) == 9  # 202 contracts, 25 a page


def test_a_runaway_pagination_is_an_error_not_a_hang(fake: FakeAlpacaTrading, reader: OptionChainReader,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    list_chain(fake, range(100, 201, 1))
    monkeypatch.setattr(alpaca_options, "CONTRACTS_PAGE", 25)
    monkeypatch.setattr(alpaca_options, "MAX_PAGES", 3)
    with pytest.raises(ConnectorError, match="option contracts of QCOM: more than 3 pages"):
        reader.read("QCOM", 150.0, NOW, OptionsConfig(strike_range_pct=50))
    assert len(fake.requests_to("/v2/options/contracts")) == 3


def test_the_chain_snapshots_follow_next_page_token(fake: FakeAlpacaTrading,
                                                    reader: OptionChainReader) -> None:
    for i in range(1_050):  # alpaca-py asks for 1,000 a page
        fake.set_option_quote(f"QCOM260227C{100_000 + i * 50:08d}", bid=1.0, ask=1.1, t=NOW)
    records = reader.read("QCOM", 150.0, NOW, OptionsConfig(strike_range_pct=90))
    assert len(fake.requests_to("/v1beta1/options/snapshots/QCOM")) == 2
    assert len(records) == sum(1 for i in range(1_050) if 15 <= 100 + i * 0.05 <= 285)
    assert all(r.open_interest is None for r in records)  # not listed: unknown, rejected by the choice


def test_malformed_contracts_are_skipped_with_their_reasons(fake: FakeAlpacaTrading,
                                                            reader: OptionChainReader) -> None:
    good, no_greeks, zero_bid, crossed, negative_oi, no_snapshot = (
        contract(150), contract(145), contract(155), contract(140), contract(160), contract(152))
    greeks = {"delta": 0.5, "gamma": 0.04, "theta": -0.05, "vega": 0.2}
    for symbol, bid, ask, g, oi in ((good, 4.0, 4.2, greeks, 900), (no_greeks, 4.0, 4.2, None, 900),
                                    (zero_bid, 0.0, 4.2, greeks, 900), (crossed, 4.4, 4.2, greeks, 900),
                                    (negative_oi, 4.0, 4.2, {**greeks, "delta": 0.55}, -5)):
        fake.add_option_contract(symbol, open_interest=oi)
        fake.set_option_quote(symbol, bid=bid, ask=ask, t=NOW, iv=0.3, greeks=g)
    fake.add_option_contract(no_snapshot, open_interest=900)
    fake.add_option_contract(contract(151), status="inactive")
    fake.add_option_contract(contract(153), tradable=False)
    records = reader.read("QCOM", 150.0, NOW, OptionsConfig())
    assert {r.contract for r in records} == {good, no_greeks, zero_bid, crossed, negative_oi, no_snapshot}
    choice = choose_contract(records, underlying="QCOM", action="BUY", now=NOW, config=OptionsConfig())
    assert choice.quote is not None and choice.quote.contract == good
    reasons = {c.contract: c.reason for c in choice.rejected()}
    assert reasons == {no_greeks: "no delta (greeks missing)", zero_bid: "zero bid",
                       crossed: "crossed quote (bid 4.4 > ask 4.2)", negative_oi: "negative open interest -5",
                       no_snapshot: "no bid"}


# -- the fake answers as Alpaca does -----------------------------------------------------------


def _get(fake: FakeAlpacaTrading, path: str, **params: Any) -> requests.Response:
    headers = {"APCA-API-KEY-ID": "key", "APCA-API-SECRET-KEY": "secret"}
    return requests.get(fake.url + path, params=params, headers=headers, timeout=5)


@pytest.mark.parametrize(("params", "message"), [
    ({"limit": "0"}, "limit must be between 1 and 10000"), ({"limit": "10001"}, "limit must be between"),
    ({"expiration_date_gte": "02/09/2026"}, "invalid expiration_date_gte"),
    ({"type": "straddle"}, "invalid type"), ({"status": "expired"}, "invalid status"),
    ({"strike_price_gte": "abc"}, "invalid strike_price_gte"),
    ({"page_token": "bogus"}, "invalid page_token"), ({"page_token": "Zm9vYmFy"}, "invalid page_token"),
])
def test_the_contracts_endpoint_validates_as_alpaca_does(fake: FakeAlpacaTrading, params: dict[str, str],
                                                         message: str) -> None:
    answer = _get(fake, "/v2/options/contracts", underlying_symbols="QCOM", **params)
    assert answer.status_code == 422 and message in answer.json()["message"]


def test_without_an_upper_bound_only_contracts_before_the_next_weekend_come(fake: FakeAlpacaTrading) -> None:
    list_chain(fake, range(150, 151), expiry="260206")  # this Friday
    list_chain(fake, range(150, 151))  # later
    body = _get(fake, "/v2/options/contracts", underlying_symbols="QCOM").json()
    assert {c["expiration_date"] for c in body["option_contracts"]} == {"2026-02-06"}
    assert body["next_page_token"] is None
    body = _get(fake, "/v2/options/contracts", underlying_symbols="QCOM",
                expiration_date_gte="2026-02-09").json()
    assert body["option_contracts"] == []  # the default upper bound still applies


def test_the_chain_endpoint_answers_for_its_underlying_only(fake: FakeAlpacaTrading) -> None:
    list_chain(fake, range(150, 151))
    fake.set_option_quote("AAPL260227C00150000", bid=1.0, ask=1.1)
    body = _get(fake, "/v1beta1/options/snapshots/QCOM", type="call").json()
    assert list(body["snapshots"]) == [contract(150)] and body["next_page_token"] is None
    assert set(body["snapshots"][contract(150)]) == {"latestQuote", "latestTrade", "impliedVolatility",
                                                     "greeks"}


def test_the_chain_endpoint_validates_as_alpaca_does(fake: FakeAlpacaTrading) -> None:
    for params, message in (({"feed": "sip"}, "invalid feed"), ({"limit": "1001"}, "limit must be between")):
        answer = _get(fake, "/v1beta1/options/snapshots/QCOM", **params)
        assert answer.status_code == 400 and message in answer.json()["message"]


def test_alpaca_py_models_read_the_fakes_answers(fake: FakeAlpacaTrading) -> None:
    """Not raw data: alpaca-py's own pydantic models accept what the fake sends."""
    from alpaca.trading.client import TradingClient
    from alpaca.trading.requests import GetOptionContractsRequest

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
        from alpaca.data.historical.option import OptionHistoricalDataClient
        from alpaca.data.requests import OptionChainRequest
    list_chain(fake, range(145, 156, 5))
    trading = TradingClient("key", "secret", url_override=fake.url)
    page = trading.get_option_contracts(GetOptionContractsRequest(
        underlying_symbols=["QCOM"], expiration_date_gte=date(2026, 2, 9),
        expiration_date_lte=date(2026, 3, 19)))
    assert [c.symbol for c in page.option_contracts][:2] == [contract(145), contract(150)]
    assert page.option_contracts[0].open_interest == "1145" and page.option_contracts[0].strike_price == 145.0
    data = OptionHistoricalDataClient("key", "secret", url_override=fake.url)
    chain = data.get_option_chain(OptionChainRequest(underlying_symbol="QCOM"))
    snap = chain[contract(150)]
    assert snap.greeks is not None and snap.greeks.delta == 0.5 and snap.implied_volatility == 0.31
    assert snap.latest_quote is not None and snap.latest_quote.bid_price == 4.0
