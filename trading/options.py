"""Option contracts by their OCC symbols (QCOM260206C00150000: root, expiry, call/put, strike x 1000):
parsed once here so the connector, the desk's exit rules and the reports agree on what a symbol is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date

CONTRACT_MULTIPLIER = 100.0  # shares per standard US equity option contract

_OCC = re.compile(r"^(?P<root>[A-Z][A-Z0-9.]{0,5})(?P<yymmdd>\d{6})(?P<cp>[CP])(?P<strike>\d{8})$")


@dataclass(frozen=True, slots=True)
class OccSymbol:
    underlying: str
    expiration: date
    option_type: str  # call or put
    strike: float

    @property
    def symbol(self) -> str:
        cp = "C" if self.option_type == "call" else "P"
        return f"{self.underlying}{self.expiration:%y%m%d}{cp}{round(self.strike * 1000):08d}"


def parse_occ(symbol: str) -> OccSymbol | None:
    """The contract an OCC symbol names, or None when `symbol` is not one (a ticker, garbage)."""
    m = _OCC.match(symbol.strip().replace(" ", ""))
    if m is None:
        return None
    yymmdd = m["yymmdd"]
    try:
        expiry = date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError:
        return None
    return OccSymbol(m["root"], expiry, "call" if m["cp"] == "C" else "put", int(m["strike"]) / 1000.0)


def is_option(symbol: str) -> bool:
    return parse_occ(symbol) is not None


def multiplier(symbol: str) -> float:
    """Value of one unit of `symbol` per point of price: 100 for an option contract, 1 for a share."""
    return CONTRACT_MULTIPLIER if parse_occ(symbol) is not None else 1.0


# -- order prices: the contract's tick ----------------------------------------------------------
#
# The rule implemented (the options exchanges' minimum price variation): a class in the Penny
# Program (Alpaca's `ppind`) is quoted in $0.01 below $3.00 and $0.05 from $3.00; SPY, QQQ and IWM
# in $0.01 at every price; any other class, or one whose membership is unknown, in $0.05 below
# $3.00 and $0.10 from $3.00. The coarser grid is also valid under the finer one, so an unknown
# membership rounds to prices every class accepts.

PENNY_AT_ALL_PRICES = frozenset({"SPY", "QQQ", "IWM"})
TICK_BREAK = 3.0


def tick_size(price: float, *, penny: bool | None, underlying: str = "") -> float:
    """The minimum increment of a limit price of `price` for a contract of this class."""
    if penny and underlying in PENNY_AT_ALL_PRICES:
        return 0.01
    if penny:
        return 0.01 if price < TICK_BREAK else 0.05
    return 0.05 if price < TICK_BREAK else 0.10


def round_to_tick(price: float, *, penny: bool | None, underlying: str = "",
                  direction: str = "nearest") -> float:
    """`price` on the contract's tick grid: "nearest", "up" or "down" (a grid point stays put).
    The tick is the one of `price`'s level: 3.02 in the Penny Program becomes 3.00."""
    if not math.isfinite(price) or price < 0:
        raise ValueError(f"price {price!r} cannot be rounded to a tick")
    tick = tick_size(price, penny=penny, underlying=underlying)
    steps = price / tick
    if direction == "up":
        n = math.ceil(steps - 1e-9)
    elif direction == "down":
        n = math.floor(steps + 1e-9)
    elif direction == "nearest":  # half a tick goes up (a buy's mid between two ticks: the fill)
        n = math.floor(steps + 0.5 + 1e-9)
    else:
        raise ValueError(f"direction {direction!r}: expected nearest, up or down")
    # both grids hold $3.00, so a price that crosses the break lands on it: still on a grid
    return round(n * tick, 2)


LIMIT_MODES = ("mid", "ask")


@dataclass(frozen=True, slots=True)
class OptionOrder:
    """A buy-to-open of whole contracts at a limit, good for the day (what the desk submits)."""

    contract: str
    qty: int
    limit_price: float
    side: str = "buy"
    order_type: str = "limit"
    time_in_force: str = "day"

    @property
    def premium(self) -> float:
        """USD paid if filled at the limit: price x 100 x contracts."""
        return self.limit_price * CONTRACT_MULTIPLIER * self.qty


def limit_price(bid: float, ask: float, *, mode: str, penny: bool | None, underlying: str = "") -> float:
    """The buy limit: the mid rounded to the nearest tick (half a tick up), or the ask rounded up
    to a tick. When no tick lies between bid and ask (a quote finer than the class's grid, as when
    its Penny Program membership is unknown), the first tick above the bid: a marketable limit.
    Raises ValueError on a quote no price can be made from."""
    if mode not in LIMIT_MODES:
        raise ValueError(f"limit {mode!r}: expected one of {LIMIT_MODES}")
    if not (math.isfinite(bid) and math.isfinite(ask)) or bid <= 0 or ask < bid:
        raise ValueError(f"no limit from bid {bid!r} / ask {ask!r}")
    if mode == "ask":
        return round_to_tick(ask, penny=penny, underlying=underlying, direction="up")
    price = round_to_tick((bid + ask) / 2.0, penny=penny, underlying=underlying)
    if not bid <= price <= ask:
        price = round_to_tick(bid, penny=penny, underlying=underlying, direction="up")
    return price


def contracts_for(budget: float, price: float) -> int:
    """Whole contracts `budget` USD buys at `price` per share (0 when not even one)."""
    if not (math.isfinite(budget) and math.isfinite(price)) or price <= 0 or budget <= 0:
        return 0
    return int(budget / (price * CONTRACT_MULTIPLIER) + 1e-9)
