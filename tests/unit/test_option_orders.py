"""Option order prices on the contract's tick (Penny Program: $0.01 under $3, $0.05 from $3; others
$0.05 / $0.10; SPY, QQQ, IWM $0.01 throughout), the buy limit at mid or ask, whole contracts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading.options import OptionOrder, contracts_for, limit_price, round_to_tick, tick_size


@pytest.mark.parametrize(("price", "penny", "underlying", "tick"), [
    (2.99, True, "AAPL", 0.01), (3.00, True, "AAPL", 0.05), (12.4, True, "AAPL", 0.05),
    (2.99, False, "QCOM", 0.05), (3.00, False, "QCOM", 0.10), (2.99, None, "QCOM", 0.05),
    (45.0, True, "SPY", 0.01), (45.0, False, "SPY", 0.10),
])
def test_tick_by_class_and_price(price: float, penny: bool | None, underlying: str, tick: float) -> None:
    assert tick_size(price, penny=penny, underlying=underlying) == tick


@pytest.mark.parametrize(("price", "penny", "direction", "expected"), [
    (1.234, True, "nearest", 1.23), (1.235001, True, "nearest", 1.24), (1.231, True, "up", 1.24),
    (1.239, True, "down", 1.23), (2.996, True, "nearest", 3.00), (3.02, True, "nearest", 3.00),
    (3.03, True, "nearest", 3.05), (3.01, True, "up", 3.05), (4.37, True, "down", 4.35),
    (1.234, False, "nearest", 1.25), (1.22, False, "down", 1.20), (4.37, False, "nearest", 4.40),
    (4.31, False, "up", 4.40), (4.39, None, "down", 4.30), (0.03, None, "down", 0.0),
    (2.50, True, "up", 2.50),
])
def test_round_to_tick(price: float, penny: bool | None, direction: str, expected: float) -> None:
    assert round_to_tick(price, penny=penny, underlying="AAPL", direction=direction) == expected


@given(st.floats(0.0, 500.0), st.sampled_from([True, False, None]),
       st.sampled_from(["nearest", "up", "down"]))
def test_a_rounded_price_is_on_its_grid_and_moves_less_than_a_tick(price: float, penny: bool | None,
                                                                    direction: str) -> None:
    out = round_to_tick(price, penny=penny, direction=direction)
    tick = tick_size(out, penny=penny)
    assert math.isclose(out / tick, round(out / tick), abs_tol=1e-6)
    assert abs(out - price) <= max(tick_size(price, penny=penny), tick) + 1e-9
    if direction == "up":
        assert out >= price - 1e-9
    if direction == "down":
        assert out <= price + 1e-9


def test_bad_prices_are_refused() -> None:
    for bad in (math.nan, -0.01, math.inf):
        with pytest.raises(ValueError):
            round_to_tick(bad, penny=True)
    with pytest.raises(ValueError, match="direction"):
        round_to_tick(1.0, penny=True, direction="sideways")


@pytest.mark.parametrize(("bid", "ask", "mode", "penny", "expected"), [
    (4.00, 4.20, "mid", True, 4.10), (4.00, 4.30, "mid", True, 4.15), (1.01, 1.04, "mid", True, 1.03),
    (1.00, 1.10, "mid", False, 1.05), (4.00, 4.20, "ask", True, 4.20), (4.00, 4.22, "ask", False, 4.30),
    (2.95, 3.05, "mid", True, 3.00), (0.05, 0.06, "mid", False, 0.05), (1.01, 1.04, "mid", None, 1.05),
    (1.01, 1.03, "mid", False, 1.05), (0.96, 0.99, "mid", None, 1.00),
])
def test_limit_price_at_mid_or_ask_on_the_tick(bid: float, ask: float, mode: str, penny: bool | None,
                                              expected: float) -> None:
    assert limit_price(bid, ask, mode=mode, penny=penny) == expected


def test_no_limit_from_a_quote_without_a_price() -> None:
    for bid, ask in ((0.0, 1.0), (1.2, 1.1), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="no limit"):
            limit_price(bid, ask, mode="mid", penny=True)
    with pytest.raises(ValueError, match="limit 'market'"):
        limit_price(1.0, 1.1, mode="market", penny=True)


def test_whole_contracts_and_the_order() -> None:
    assert contracts_for(1_000.0, 2.5) == 4 and contracts_for(999.99, 2.5) == 3
    assert contracts_for(100.0, 4.1) == 0 and contracts_for(1_000.0, 0.0) == 0
    assert contracts_for(math.nan, 2.5) == contracts_for(math.inf, 2.5) == 0
    assert contracts_for(1_000.0, math.nan) == 0
    order = OptionOrder("QCOM260227C00150000", 2, 4.1)
    assert (order.side, order.order_type, order.time_in_force) == ("buy", "limit", "day")
    assert math.isclose(order.premium, 820.0)
