"""The chain connector's parsing at the boundary (pure): listed contracts as Alpaca sends them, and
chain snapshots merged with them into the records of one snapshot."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.alpaca_options import parse_chain, parse_contract

NOW = datetime(2026, 2, 2, 15, 0, tzinfo=UTC)
CALL = "QCOM260227C00150000"


def listed(symbol: str = CALL, **kw: object) -> dict[str, object]:
    raw: dict[str, object] = {"symbol": symbol, "status": "active", "tradable": True, "open_interest": "1840",
                              "ppind": True, "strike_price": "150", "type": "call"}
    raw.update(kw)
    return raw


@pytest.mark.parametrize(("raw", "expected"), [
    (listed(), {"symbol": CALL, "open_interest": 1840, "penny_program": True}),
    (listed(open_interest=None, ppind=None), {"symbol": CALL, "open_interest": None, "penny_program": None}),
    (listed(open_interest="-5", ppind="yes"), {"symbol": CALL, "open_interest": -5, "penny_program": None}),
    (listed(open_interest="lots"), {"symbol": CALL, "open_interest": None, "penny_program": True}),
    (listed(status="inactive"), None),
    (listed(tradable=False), None),
    (listed(symbol="QCOM"), None),
    (listed(symbol=None), None),
])
def test_parse_contract(raw: dict[str, object], expected: dict[str, object] | None) -> None:
    assert parse_contract(raw) == expected


def test_parse_chain_merges_contracts_and_snapshots_into_one_snapshot() -> None:
    snaps = {
        CALL: {"latestQuote": {"t": "2026-02-02T14:59:58Z", "bp": 4.0, "ap": 4.2, "bs": 3, "as": 5},
               "impliedVolatility": 0.31,
               "greeks": {"delta": 0.52, "gamma": 0.04, "theta": -0.05, "vega": 0.2}},
        "QCOM260227P00150000": {"latestQuote": {"bp": 4.1, "ap": 4.3}},  # not listed
        "AAPL260227C00150000": {"latestQuote": {"bp": 1.0, "ap": 1.1}},  # another underlying
    }
    contracts = [listed(), listed("QCOM260227C00155000", ppind=False),
                 listed("QCOM260227C00160000", tradable=False)]
    records = parse_chain("QCOM", contracts, snaps, underlying_price=150.5, as_of=NOW)
    assert [r.contract for r in records] == [CALL, "QCOM260227C00155000", "QCOM260227P00150000"]
    call, unquoted, unlisted = records
    assert (call.bid, call.ask, call.delta, call.iv, call.open_interest, call.penny_program) == (
        4.0, 4.2, 0.52, 0.31, 1840, True)
    assert call.as_of == datetime(2026, 2, 2, 14, 59, 58, tzinfo=UTC) and call.fetched_at == NOW
    assert (unquoted.bid, unquoted.ask, unquoted.penny_program, unquoted.as_of) == (None, None, False, NOW)
    assert (unlisted.open_interest, unlisted.penny_program, unlisted.option_type) == (None, None, "put")
    assert {(r.chain_id, r.chain_as_of, r.underlying_price, r.source, r.modelled) for r in records} == {
        ("QCOM@2026-02-02T15:00:00Z", NOW, 150.5, "chain", False)}
    assert {(r.expiration, r.strike) for r in records} == {("2026-02-27", 150.0), ("2026-02-27", 155.0)}
