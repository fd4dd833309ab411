"""Option contracts by their OCC symbols (QCOM260206C00150000: root, expiry, call/put, strike x 1000):
parsed once here so the connector, the desk's exit rules and the reports agree on what a symbol is.
"""

from __future__ import annotations

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
