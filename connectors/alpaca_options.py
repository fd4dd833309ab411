"""An option chain from Alpaca as OptionQuote records of one snapshot: the listed contracts (open
interest, Penny Program membership) from the trading API and their quotes, IV and greeks from the
data API's chain snapshots, read with alpaca-py's clients through a BrokerSession. The records are
published to options.quotes before any decision uses them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from connectors.alpaca_broker import (
    BrokerSession,
    _getter,
    _invoke,
    _num,
    _option_data_requests,
    parse_option_quote,
)
from connectors.alpaca_trading import _alpaca
from opsinfra.errors import ConnectorError
from schemas.records import OptionQuote
from trading.option_chain import ChainWindow, OptionsConfig, chain_id, chain_window
from trading.options import parse_occ

log = logging.getLogger(__name__)

CONTRACTS_PAGE = 1_000  # contracts per page (Alpaca allows up to 10,000)
MAX_PAGES = 50  # a runaway backstop: a chain window holds a few hundred contracts


def _int(value: Any) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def parse_contract(raw: Any) -> dict[str, Any] | None:
    """What a listed contract (alpaca-py OptionContract or its JSON) adds to a quote; None when it
    is not a tradable, active OCC contract (a negative open interest is kept for the choice to
    reject with its reason)."""
    get = _getter(raw)
    symbol = get("symbol")
    if not isinstance(symbol, str) or parse_occ(symbol) is None:
        return None
    status = getattr(get("status"), "value", get("status"))
    if get("tradable") is False or (status is not None and str(status) != "active"):
        return None
    ppind = get("ppind")
    return {"symbol": symbol, "open_interest": _int(get("open_interest")),
            "penny_program": ppind if isinstance(ppind, bool) else None}


def parse_chain(underlying: str, contracts: Iterable[Any], snapshots: Mapping[str, Any], *,
                underlying_price: float | None, as_of: datetime) -> list[OptionQuote]:
    """One chain snapshot as records (sorted by contract): every listed contract, with its snapshot
    when the data API sent one (a contract without is kept with no bid or ask, so the choice records
    why it was skipped), and every snapshot of the underlying not listed (open interest unknown)."""
    listed: dict[str, dict[str, Any]] = {}
    for raw in contracts:
        info = parse_contract(raw)
        if info is not None:
            listed[info["symbol"]] = info
    cid = chain_id(underlying, as_of)
    out: list[OptionQuote] = []
    for symbol in sorted(set(listed) | set(snapshots)):
        occ = parse_occ(symbol)
        if occ is None or occ.underlying != underlying:
            continue
        snap = snapshots.get(symbol)
        base = parse_option_quote(symbol, None, snap if isinstance(snap, dict) else {"latestQuote": {}},
                                  fetched_at=as_of)
        if base is None:
            continue
        info = listed.get(symbol, {})
        out.append(replace(
            base, source="chain", expiration=occ.expiration.isoformat(), strike=occ.strike,
            option_type=occ.option_type, open_interest=info.get("open_interest"),
            penny_program=info.get("penny_program"), underlying_price=underlying_price, chain_id=cid,
            chain_as_of=as_of,
        ))
    return out


class OptionChainReader:
    """Reads chains for the desk's option entries (blocking calls: run them in a thread)."""

    def __init__(self, session: BrokerSession, *, feed: str | None = None) -> None:
        self.session = session
        self.feed = feed  # "opra" or "indicative"; None: what the subscription gives

    def __repr__(self) -> str:
        return f"OptionChainReader({self.session.label!r})"

    def contracts(self, window: ChainWindow, option_type: str | None = None) -> list[Any]:
        """Every listed contract in the window, following next_page_token."""
        trading = _alpaca().trading
        kind = None if option_type is None else trading.enums.ContractType(option_type)
        out: list[Any] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            request = trading.requests.GetOptionContractsRequest(
                underlying_symbols=[window.underlying], status=trading.enums.AssetStatus.ACTIVE,
                expiration_date_gte=window.expiration_gte, expiration_date_lte=window.expiration_lte,
                strike_price_gte=f"{window.strike_gte:g}", strike_price_lte=f"{window.strike_lte:g}",
                type=kind, limit=CONTRACTS_PAGE, page_token=token)
            page = self.session._call(f"option contracts of {window.underlying}",
                                      functools.partial(_invoke, "get_option_contracts", request))
            get = _getter(page or {})
            out.extend(get("option_contracts") or ())
            token = get("next_page_token")
            if not token:
                return out
        raise ConnectorError(f"alpaca {self.session.label}: option contracts of {window.underlying}: "
                             f"more than {MAX_PAGES} pages")

    def snapshots(self, window: ChainWindow, option_type: str | None = None) -> dict[str, Any]:
        """The chain snapshots (quote, trade, IV, greeks) in the window; alpaca-py follows the pages."""
        data = _option_data_requests()
        request = data.OptionChainRequest(
            underlying_symbol=window.underlying, feed=self.feed, type=option_type,
            expiration_date_gte=window.expiration_gte, expiration_date_lte=window.expiration_lte,
            strike_price_gte=window.strike_gte, strike_price_lte=window.strike_lte)
        answer = self.session._call(f"option chain of {window.underlying}",
                                    functools.partial(_invoke, "get_option_chain", request), data=True)
        return dict(answer or {})

    def read(self, underlying: str, close: float, now: datetime, config: OptionsConfig,
             option_type: str | None = None) -> list[OptionQuote]:
        """The chain of `underlying` around `close` in the options block's window, as one snapshot
        taken at `now`. Raises ConnectorError when Alpaca cannot be read."""
        window = chain_window(underlying, close, now, config)
        contracts = self.contracts(window, option_type)
        snaps = self.snapshots(window, option_type)
        records = parse_chain(underlying, contracts, snaps, underlying_price=close, as_of=now)
        log.info("alpaca %s: chain of %s: %d contracts listed, %d snapshots, %d records", self.session.label,
                 underlying, len(contracts), len(snaps), len(records))
        return records
