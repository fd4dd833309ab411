"""Black-Scholes prices and greeks against vollib (the oracle), the standard expiries and strikes of
a synthetic chain, and its records labelled as modelled."""

from __future__ import annotations

import math
import warnings
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.calendar import TradingCalendar
from trading.option_chain import OptionsConfig, choose_contract
from trading.option_pricing import (
    black_scholes,
    demo_chains,
    expiry_time,
    standard_expirations,
    strike_increment,
    strikes_between,
    synthetic_chain,
    third_friday,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the oracle's own imports (scipy, simplejson) are not ours to judge
    from vollib.black_scholes_merton import black_scholes_merton as oracle_price
    from vollib.black_scholes_merton.greeks import analytical as oracle

NOW = datetime(2026, 3, 30, 15, 0, tzinfo=UTC)  # Monday before Good Friday (2026-04-03)


def _close(ours: float, theirs: float, tol: float = 1e-7) -> bool:
    return math.isclose(ours, theirs, rel_tol=tol, abs_tol=tol)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["call", "put"]),
    spot=st.floats(5.0, 2_000.0),
    moneyness=st.floats(0.5, 1.5),
    years=st.floats(1.0 / 365, 2.0),
    rate=st.floats(0.0, 0.08),
    sigma=st.floats(0.05, 1.5),
    dividend=st.floats(0.0, 0.05),
)
def test_prices_and_greeks_equal_the_oracle(kind: str, spot: float, moneyness: float, years: float,
                                            rate: float, sigma: float, dividend: float) -> None:
    strike = spot * moneyness
    flag = kind[0]
    ours = black_scholes(kind, spot, strike, years, rate, sigma, dividend)
    args = (flag, spot, strike, years, rate, sigma, dividend)
    expected = {
        "price": oracle_price(*args), "delta": oracle.delta(*args), "gamma": oracle.gamma(*args),
        "theta": oracle.theta(*args), "vega": oracle.vega(*args),
    }
    for name, theirs in expected.items():
        assert _close(getattr(ours, name), theirs, 1e-6), (name, getattr(ours, name), theirs)


def test_a_known_value_and_put_call_parity() -> None:
    call = black_scholes("call", 100.0, 100.0, 0.5, 0.05, 0.2)
    put = black_scholes("put", 100.0, 100.0, 0.5, 0.05, 0.2)
    assert round(call.price, 6) == 6.888729  # Hull's textbook case
    assert math.isclose(call.price - put.price, 100.0 - 100.0 * math.exp(-0.05 * 0.5), abs_tol=1e-9)
    assert math.isclose(call.delta - put.delta, 1.0, abs_tol=1e-12)


def test_at_expiry_only_intrinsic_value_is_left() -> None:
    assert black_scholes("call", 105.0, 100.0, 0.0, 0.05, 0.2) == (5.0, 1.0, 0.0, 0.0, 0.0)
    assert black_scholes("put", 105.0, 100.0, -1e-3, 0.05, 0.2) == (0.0, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("args", [("call", 0.0, 100.0, 0.5, 0.0, 0.2), ("call", 100.0, 100.0, 0.5, 0.0, 0.0),
                                  ("call", 100.0, math.nan, 0.5, 0.0, 0.2), ("straddle", 1, 1, 1, 0, 1)])
def test_bad_inputs_are_refused(args: tuple) -> None:
    with pytest.raises(ValueError, match="must be a positive number|expected call or put"):
        black_scholes(*args)


def test_expiries_are_weekly_fridays_then_monthly_third_fridays_and_skip_holidays() -> None:
    cal = TradingCalendar()
    today = date(2026, 3, 30)
    got = standard_expirations(today, today, today + timedelta(days=120), cal)
    assert got[0] == date(2026, 4, 2)  # Good Friday: the Thursday before
    assert got[1:6] == [date(2026, 4, 10), date(2026, 4, 17), date(2026, 4, 24), date(2026, 5, 1),
                        date(2026, 5, 8)]
    assert got[6:] == [date(2026, 5, 15), date(2026, 6, 18), date(2026, 7, 17)]  # monthlies; Juneteenth
    assert third_friday(2026, 6) == date(2026, 6, 19)
    no_calendar = standard_expirations(today, today, today + timedelta(days=10))
    assert no_calendar[0] == date(2026, 4, 3)


def test_a_contract_expires_at_the_new_york_close() -> None:
    assert expiry_time(date(2026, 2, 27)) == datetime(2026, 2, 27, 21, 0, tzinfo=UTC)
    assert expiry_time(date(2026, 7, 17)) == datetime(2026, 7, 17, 20, 0, tzinfo=UTC)


def test_strikes_follow_the_increment_of_the_price_level() -> None:
    assert [strike_increment(p) for p in (12, 60, 190, 420, 900)] == [0.5, 1.0, 2.5, 5.0, 10.0]
    assert strikes_between(171.0, 209.0, 2.5)[:3] == [172.5, 175.0, 177.5]
    assert strikes_between(171.0, 209.0, 2.5)[-1] == 207.5


def test_a_synthetic_chain_is_labelled_modelled_and_priced_by_the_model() -> None:
    cfg = OptionsConfig()
    chain = synthetic_chain("AAPL", 190.0, NOW, iv=0.3, config=cfg, calendar=TradingCalendar())
    assert chain and all(r.modelled and r.source == "model" for r in chain)
    assert {r.chain_id for r in chain} == {"AAPL@2026-03-30T15:00:00Z"}
    for r in chain:
        assert r.bid is not None and r.ask is not None and r.delta is not None and r.strike is not None
        assert 0.0 <= r.bid < r.ask and r.open_interest is None
        assert r.ask - r.bid >= 0.02 - 1e-9  # at least a tick each side of the model's price
        assert r.expiration is not None and r.option_type is not None
        years = (expiry_time(date.fromisoformat(r.expiration)) - NOW).total_seconds() / (365 * 86_400)
        model = black_scholes(r.option_type, 190.0, r.strike, years, 0.04, 0.3)
        assert r.bid <= model.price <= r.ask and r.delta == model.delta
    choice = choose_contract(chain, underlying="AAPL", action="BUY", now=NOW + timedelta(minutes=1),
                             config=cfg)
    assert choice.quote is not None and choice.quote.modelled
    assert abs(choice.quote.delta - 0.5) <= 0.05  # type: ignore[operator]


def test_demo_chains_are_a_pure_function_of_the_closes() -> None:
    closes = {"MSFT": 410.0, "AAPL": 190.0}
    one = demo_chains(closes, NOW)
    assert one == demo_chains(dict(reversed(closes.items())), NOW)
    assert [r.underlying for r in one] == sorted(r.underlying for r in one)
    assert {r.underlying for r in one} == {"AAPL", "MSFT"} and all(r.modelled for r in one)
    with pytest.raises(ValueError, match="close nan of AAPL"):
        demo_chains({"AAPL": math.nan}, NOW)
