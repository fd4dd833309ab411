"""Black-Scholes prices and greeks, and a synthetic chain priced with them, for backtests and the
demo where no chain was recorded: every record it makes says modelled=True, so nothing mistakes a
model's price for a market's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple

from schemas.records import OptionQuote
from trading.calendar import NEW_YORK, SessionCalendar, trading_day
from trading.option_chain import OptionsConfig, chain_id, chain_window
from trading.options import OccSymbol, round_to_tick

YEAR_DAYS = 365.0  # calendar days: theta is per calendar day, as Alpaca and vollib give it
WEEKLY_HORIZON_DAYS = 42  # weeklies listed this far out; monthlies (third Fridays) beyond
MODEL_SOURCE = "model"
MODEL_SPREAD = 0.04  # a modelled quote is mid +- 2% (at least one tick each side)


class Greeks(NamedTuple):
    price: float
    delta: float
    gamma: float
    theta: float  # per calendar day
    vega: float  # per volatility point (1%)


def _cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def black_scholes(option_type: str, spot: float, strike: float, years: float, rate: float, sigma: float,
                  dividend: float = 0.0) -> Greeks:
    """European price and greeks (Black-Scholes-Merton, continuous dividend yield). At or after
    expiry (years <= 0) the intrinsic value, with delta 1/0 and no time value."""
    if option_type not in ("call", "put"):
        raise ValueError(f"option_type {option_type!r}: expected call or put")
    for name, value in (("spot", spot), ("strike", strike), ("sigma", sigma)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} {value!r} must be a positive number")
    if not (math.isfinite(years) and math.isfinite(rate) and math.isfinite(dividend)):
        raise ValueError("years, rate and dividend must be numbers")
    call = option_type == "call"
    if years <= 0:
        intrinsic = max(spot - strike, 0.0) if call else max(strike - spot, 0.0)
        itm = intrinsic > 0
        return Greeks(intrinsic, (1.0 if call else -1.0) if itm else 0.0, 0.0, 0.0, 0.0)
    root = math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate - dividend + 0.5 * sigma * sigma) * years) / (sigma * root)
    d2 = d1 - sigma * root
    disc_q, disc_r = math.exp(-dividend * years), math.exp(-rate * years)
    density = _pdf(d1)
    gamma = disc_q * density / (spot * sigma * root)
    vega = spot * disc_q * density * root / 100.0
    decay = -spot * disc_q * density * sigma / (2.0 * root)
    if call:
        price = spot * disc_q * _cdf(d1) - strike * disc_r * _cdf(d2)
        delta = disc_q * _cdf(d1)
        theta = decay - rate * strike * disc_r * _cdf(d2) + dividend * spot * disc_q * _cdf(d1)
    else:
        price = strike * disc_r * _cdf(-d2) - spot * disc_q * _cdf(-d1)
        delta = -disc_q * _cdf(-d1)
        theta = decay + rate * strike * disc_r * _cdf(-d2) - dividend * spot * disc_q * _cdf(-d1)
    return Greeks(price, delta, gamma, theta / YEAR_DAYS, vega)


def expiry_time(expiration: date) -> datetime:
    """The moment a contract stops trading: 16:00 New York on its expiration date."""
    return datetime.combine(expiration, time(16, 0), NEW_YORK).astimezone(UTC)


def years_to_expiry(now: datetime, expiration: date) -> float:
    return (expiry_time(expiration) - now).total_seconds() / (YEAR_DAYS * 86_400.0)


def third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


def _on_a_session(friday: date, calendar: SessionCalendar | None) -> date:
    """A Friday expiry on an exchange holiday moves to the session before it (Good Friday)."""
    if calendar is None:
        return friday
    day = friday
    for _ in range(7):
        try:
            if calendar.session(day) is not None:
                return day
        except LookupError:  # outside the calendar's years: keep the Friday
            return friday
        day -= timedelta(days=1)
    return friday


def standard_expirations(today: date, first: date, last: date,
                         calendar: SessionCalendar | None = None) -> list[date]:
    """Listed expiries in [first, last]: every Friday up to WEEKLY_HORIZON_DAYS from `today`, the
    third Friday of each month after that; a holiday Friday expires on the session before."""
    out: set[date] = set()
    friday = today + timedelta(days=(4 - today.weekday()) % 7)
    while friday <= last:
        weekly = (friday - today).days <= WEEKLY_HORIZON_DAYS
        if weekly or friday == third_friday(friday.year, friday.month):
            expiry = _on_a_session(friday, calendar)
            if first <= expiry <= last:
                out.add(expiry)
        friday += timedelta(days=7)
    return sorted(out)


def strike_increment(price: float) -> float:
    """The strike spacing listed around `price` (a simplification of the exchanges' rules)."""
    if price < 25:
        return 0.5
    if price < 100:
        return 1.0
    if price < 250:
        return 2.5
    if price < 500:
        return 5.0
    return 10.0


def strikes_between(low: float, high: float, step: float) -> list[float]:
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(i * step, 2) for i in range(max(first, 1), last + 1)]


def modelled_quote(occ: OccSymbol, spot: float, now: datetime, *, iv: float, rate: float,
                   dividend: float = 0.0, cid: str | None = None) -> OptionQuote:
    """One contract priced by the model: mid at the model price, bid/ask on the penny grid around
    it (a bid that would round to nothing is 0.0, which the choice rejects as a zero bid)."""
    g = black_scholes(occ.option_type, spot, occ.strike, years_to_expiry(now, occ.expiration), rate, iv,
                      dividend)
    half = max(g.price * MODEL_SPREAD / 2.0, 0.01)
    bid = round_to_tick(max(g.price - half, 0.0), penny=True, underlying=occ.underlying, direction="down")
    ask = round_to_tick(g.price + half, penny=True, underlying=occ.underlying, direction="up")
    return OptionQuote(
        contract=occ.symbol, underlying=occ.underlying, as_of=now, bid=bid, ask=max(ask, 0.01),
        bid_size=None, ask_size=None, last=None, iv=iv, delta=g.delta, gamma=g.gamma, theta=g.theta,
        vega=g.vega, source=MODEL_SOURCE, fetched_at=now, expiration=occ.expiration.isoformat(),
        strike=occ.strike, option_type=occ.option_type, open_interest=None, penny_program=True,
        underlying_price=spot, chain_id=cid, chain_as_of=now, modelled=True,
    )


def synthetic_chain(underlying: str, close: float, now: datetime, *, iv: float, config: OptionsConfig,
                    rate: float = 0.04, dividend: float = 0.0,
                    calendar: SessionCalendar | None = None) -> list[OptionQuote]:
    """Calls and puts of `underlying` over the window the connector would read (the standard
    expiries and strikes of chain_window), priced from `close` at `iv`: one chain snapshot."""
    if not math.isfinite(close) or close <= 0:
        raise ValueError(f"close {close!r} of {underlying} must be a positive number")
    window = chain_window(underlying, close, now, config)
    step = strike_increment(close)
    strikes = strikes_between(window.strike_gte, window.strike_lte, step)
    expiries = standard_expirations(trading_day(now), window.expiration_gte, window.expiration_lte, calendar)
    cid = chain_id(underlying, now)
    return [
        modelled_quote(OccSymbol(underlying, expiry, kind, strike), close, now, iv=iv, rate=rate,
                       dividend=dividend, cid=cid)
        for expiry in expiries for strike in strikes for kind in ("call", "put")
    ]


DEMO_IV = 0.30


def demo_chains(closes: Mapping[str, float], now: datetime, *, config: OptionsConfig | None = None,
                iv: Mapping[str, float] | None = None, calendar: SessionCalendar | None = None
                ) -> list[OptionQuote]:
    """Clearly synthetic chains for the demo session: one modelled snapshot per symbol at `now`
    from its close, at its IV (DEMO_IV when not given); symbols in sorted order."""
    cfg = config or OptionsConfig()
    vols = iv or {}
    out: list[OptionQuote] = []
    for symbol in sorted(closes):
        out.extend(synthetic_chain(symbol, closes[symbol], now, iv=vols.get(symbol, DEMO_IV), config=cfg,
                                   calendar=calendar))
    return out
