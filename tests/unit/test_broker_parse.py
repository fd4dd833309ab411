"""Alpaca's account, position, order and option-quote payloads (the shapes its REST and data APIs
send) parsed into the contract's records: every asset class kept, options' terms from the OCC
symbol, and unknown or malformed input logged and kept, never an exception."""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.alpaca_broker import (
    parse_account,
    parse_option_quote,
    parse_order,
    parse_orders,
    parse_position,
)
from connectors.alpaca_trading import broker_price, retry_after_s

NOW = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)


def position(symbol: str, qty: str, avg: str, price: str, *, asset_class: str = "us_equity",
             side: str = "long", mult: float = 1.0) -> dict[str, Any]:
    q, a, p = float(qty), float(avg), float(price)
    mv, cb = q * p * mult, q * a * mult
    return {
        "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415", "symbol": symbol,
        "exchange": "" if asset_class == "us_option" else "NASDAQ", "asset_class": asset_class,
        "asset_marginable": asset_class == "us_equity", "qty": qty, "qty_available": qty,
        "avg_entry_price": avg, "side": side, "market_value": f"{mv:g}", "cost_basis": f"{cb:g}",
        "unrealized_pl": f"{mv - cb:g}",
        "unrealized_plpc": f"{(mv - cb) / abs(cb):.6f}", "unrealized_intraday_pl": f"{mv - cb:g}",
        "unrealized_intraday_plpc": "0", "current_price": price, "lastday_price": avg, "change_today": "0",
    }


ACCOUNT = {
    "id": "904837e3-3b76-47ec-b432-046db621571b", "account_number": "PA3GXWXJ0TE9", "status": "ACTIVE",
    "crypto_status": "ACTIVE", "currency": "USD", "buying_power": "242189.16",
    "regt_buying_power": "242189.16",
    "non_marginable_buying_power": "119094.58", "cash": "119094.58", "accrued_fees": "0",
    "portfolio_value": "121094.58", "pattern_day_trader": False, "trading_blocked": False,
    "transfers_blocked": False, "account_blocked": False, "created_at": "2024-01-02T14:30:00.000Z",
    "trade_suspended_by_user": False, "multiplier": "2", "shorting_enabled": True, "equity": "121094.58",
    "last_equity": "120500.02", "long_market_value": "2000", "short_market_value": "0",
    "initial_margin": "1000",
    "maintenance_margin": "600", "last_maintenance_margin": "600", "sma": "0", "daytrade_count": 0,
    "options_buying_power": "119094.58", "options_approved_level": 2, "options_trading_level": 2,
}


def order(symbol: str, **kw: Any) -> dict[str, Any]:
    base = {
        "id": "61e69015-8549-4bfd-b9c3-01e75843f47d", "client_order_id": "ours-1",
        "created_at": "2026-02-02T14:31:00.1Z", "updated_at": "2026-02-02T14:31:00.2Z",
        "submitted_at": "2026-02-02T14:31:00.1Z", "filled_at": None,
        "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415", "symbol": symbol, "asset_class": "us_equity",
        "notional": None, "qty": "10", "filled_qty": "0", "filled_avg_price": None, "order_class": "simple",
        "order_type": "market", "type": "market", "side": "buy", "time_in_force": "day", "limit_price": None,
        "stop_price": None, "status": "new", "extended_hours": False, "legs": None,
    }
    return base | kw


def test_an_account_as_alpaca_sends_it_and_as_alpaca_py_models_it() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
        from alpaca.trading.models import TradeAccount
    for raw in (ACCOUNT, TradeAccount(**ACCOUNT)):
        got = parse_account(raw, account="large-100k", as_of=NOW, trigger="poll")
        assert (got.cash, got.buying_power, got.options_buying_power) == (119094.58, 242189.16, 119094.58)
        assert (got.equity, got.last_equity, got.options_approved_level) == (121094.58, 120500.02, 2)
        assert got.status == "ACTIVE" and got.trading_blocked is False and got.trigger == "poll"


def test_an_account_without_cash_is_unusable() -> None:
    with pytest.raises(ValueError, match="cash"):
        parse_account(ACCOUNT | {"cash": None}, account="a", as_of=NOW, trigger="poll")


@pytest.mark.parametrize(("raw", "expect"), [
    (position("AAPL", "10", "180.5", "190"),
     {"asset_class": "us_equity", "qty": 10.0, "market_value": 1900.0, "multiplier": 1.0,
      "underlying": None}),
    (position("QCOM260206C00150000", "2", "5.2", "5.5", asset_class="us_option", mult=100),
     {"asset_class": "us_option", "qty": 2.0, "market_value": 1100.0, "unrealized_pl": 60.0,
      "multiplier": 100.0, "underlying": "QCOM", "expiration": "2026-02-06", "option_type": "call",
      "strike": 150.0}),
    (position("SPY260320P00580000", "1", "7.1", "6.4", asset_class="us_option", mult=100),
     {"option_type": "put", "strike": 580.0, "expiration": "2026-03-20", "underlying": "SPY",
      "market_value": 640.0}),
    (position("TSLA", "-10", "250", "240", side="short"),
     {"qty": -10.0, "market_value": -2400.0, "unrealized_pl": 100.0, "multiplier": 1.0}),
])
def test_positions_of_every_asset_class(raw: dict[str, Any], expect: dict[str, Any]) -> None:
    got = parse_position(raw, account="large-100k", as_of=NOW, origin="external")
    assert got.symbol == raw["symbol"] and got.origin == "external" and got.as_of == NOW
    assert {name: getattr(got, name) for name in expect} == pytest.approx(expect)


def test_a_short_reported_with_a_positive_qty_is_negative() -> None:
    got = parse_position(position("TSLA", "10", "250", "240") | {"side": "short"}, account="a", as_of=NOW,
                         origin="pipeline")
    assert got.qty == -10.0


def test_unknown_asset_class_and_garbage_option_symbols_are_logged_and_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.alpaca_broker")
    bond = parse_position(position("US912828", "5", "99.1", "99.3", asset_class="us_treasury"),
                          account="a", as_of=NOW, origin="external")
    garbage = parse_position(position("QCOM26X0206C150", "1", "5", "4", asset_class="us_option", mult=100),
                             account="a", as_of=NOW, origin="external")
    broken = parse_position({"symbol": "AAPL", "qty": "x", "avg_entry_price": None,
                             "asset_class": "us_equity"}, account="a", as_of=NOW, origin="pipeline")
    assert (bond.asset_class, bond.qty, bond.avg_entry_price) == ("us_treasury", 5.0, 99.1)
    assert bond.multiplier == 1.0
    assert garbage.asset_class == "us_option" and garbage.qty == 1.0 and garbage.multiplier == 100.0
    assert garbage.underlying is None and garbage.expiration is None and garbage.strike is None
    assert broken.qty == 0.0 and broken.avg_entry_price == 0.0 and broken.market_value is None
    text = caplog.text
    assert "unknown asset class 'us_treasury'" in text and "QCOM26X0206C150" in text
    assert "avg_entry_price" in text


def test_an_alpaca_py_position_model_parses_as_its_json() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
        from alpaca.trading.models import Position
    raw = position("QCOM260206C00150000", "2", "5.2", "5.5", asset_class="us_option", mult=100)
    assert parse_position(Position(**raw), account="a", as_of=NOW, origin="external") == \
        parse_position(raw, account="a", as_of=NOW, origin="external")


def test_bracket_legs_are_flattened_under_their_parent() -> None:
    legs = [order("AAPL", id="leg-tp", client_order_id="alpaca-1", side="sell", type="limit",
                  order_type="limit", limit_price="110", order_class="bracket", status="new"),
            order("AAPL", id="leg-sl", client_order_id="alpaca-2", side="sell", type="stop",
                  order_type="stop", stop_price="95", order_class="bracket", status="held")]
    parent = order("AAPL", id="parent", order_class="bracket", status="filled", filled_qty="10",
                   filled_avg_price="100.1", legs=legs)
    flat = parse_orders([parent])
    assert [(o.id, o.parent_id) for o in flat] == [("parent", None), ("leg-tp", "parent"),
                                                   ("leg-sl", "parent")]
    open_only = parse_orders([parent], open_only=True)
    assert [o.id for o in open_only] == ["leg-tp", "leg-sl"]
    tp, sl = open_only
    assert (tp.order_type, tp.limit_price, tp.side, tp.order_class) == ("limit", 110.0, "sell", "bracket")
    assert (sl.order_type, sl.stop_price, sl.status) == ("stop", 95.0, "held")
    assert flat[0].filled_qty == 10.0
    assert flat[0].submitted_at == datetime(2026, 2, 2, 14, 31, 0, 100000, tzinfo=UTC)


def test_an_option_order_without_asset_class_is_known_by_its_symbol() -> None:
    got = parse_order(order("QCOM260206C00150000") | {"asset_class": None, "qty": "1"})
    assert got.asset_class == "us_option" and got.qty == 1.0


C = "QCOM260206C00150000"
QUOTE = {"t": "2026-02-02T14:59:58.123Z", "ax": "C", "ap": 5.6, "as": 12, "bx": "N", "bp": 5.4, "bs": 9,
         "c": "A"}
SNAPSHOT = {"latestQuote": QUOTE, "impliedVolatility": 0.3123,
            "latestTrade": {"t": "2026-02-02T14:58:00Z", "x": "C", "p": 5.5, "s": 1, "c": "I"},
            "greeks": {"delta": 0.52, "gamma": 0.04, "rho": 0.01, "theta": -0.08, "vega": 0.12}}


def test_a_quote_with_its_snapshots_greeks() -> None:
    got = parse_option_quote(C, QUOTE, SNAPSHOT, fetched_at=NOW)
    assert got is not None
    assert (got.bid, got.ask, got.bid_size, got.ask_size, got.last) == (5.4, 5.6, 9.0, 12.0, 5.5)
    assert (got.iv, got.delta, got.gamma, got.theta, got.vega) == (0.3123, 0.52, 0.04, -0.08, 0.12)
    assert got.underlying == "QCOM" and got.source == "quote" and got.mid == pytest.approx(5.5)
    assert got.as_of == datetime(2026, 2, 2, 14, 59, 58, 123000, tzinfo=UTC) and got.fetched_at == NOW


def test_malformed_quotes_are_kept_with_none_where_unknown(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.alpaca_broker")
    no_bid = parse_option_quote(C, {k: v for k, v in QUOTE.items() if k != "bp"}, None, fetched_at=NOW)
    crossed = parse_option_quote(C, QUOTE | {"bp": 6.0, "ap": 5.0}, None, fetched_at=NOW)
    junk = parse_option_quote("NOT-AN-OCC", {"bp": "x", "ap": -1, "t": "yesterday"}, None, fetched_at=NOW)
    from_snapshot = parse_option_quote(C, None, SNAPSHOT, fetched_at=NOW)
    greeks_only = parse_option_quote(C, None, {"impliedVolatility": 0.2}, fetched_at=NOW)
    assert no_bid is not None and no_bid.bid is None and no_bid.ask == 5.6 and no_bid.mid is None
    assert crossed is not None and (crossed.bid, crossed.ask, crossed.mid) == (6.0, 5.0, None)
    assert junk is not None and (junk.bid, junk.ask, junk.as_of) == (None, None, NOW)
    assert junk.underlying == "NOT-AN-OCC"
    assert from_snapshot is not None and from_snapshot.source == "snapshot" and from_snapshot.bid == 5.4
    assert greeks_only is not None and greeks_only.bid is None and greeks_only.iv == 0.2
    assert parse_option_quote(C, None, None, fetched_at=NOW) is None
    assert "crossed" in caplog.text and "NOT-AN-OCC" in caplog.text


@pytest.mark.parametrize(("header", "expect"), [
    ("1", 1.0), ("0.5", 0.5), ("-3", 0.0), ("3600", 30.0), (None, 3.0), ("", 3.0), ("soon", 3.0),
    ("Mon, 02 Feb 2026 15:00:02 GMT", 2.0), ("Mon, 02 Feb 2026 14:59:00 GMT", 0.0),
])
def test_retry_after_in_seconds_or_as_a_date_within_the_cap(header: str | None, expect: float) -> None:
    assert retry_after_s(header, default=3.0, cap=30.0, now=NOW) == pytest.approx(expect)


@pytest.mark.parametrize(("price", "sent"), [(110.004, 110.0), (95.499, 95.5), (1.0049, 1.0),
                                             (0.98765, 0.9877), (0.12344, 0.1234)])
def test_prices_go_to_alpaca_without_sub_penny_increments(price: float, sent: float) -> None:
    assert broker_price(price) == sent
