"""The broker's truth from Alpaca, one session per key pair: the account, every position and the open
orders (bracket legs under their parent), option quotes and greeks, parsed once here into the
contract's records; unknown or malformed input is logged and kept, never a crash.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from connectors.alpaca_trading import (
    _alpaca,
    _api_error,
    _is_auth,
    harden,
    trading_client,
)
from connectors.credentials import CredentialSource
from opsinfra.errors import ConnectorError
from opsinfra.settings import Settings
from schemas.records import BrokerAccount, BrokerOrder, BrokerPosition, OptionQuote
from trading.options import CONTRACT_MULTIPLIER, parse_occ

log = logging.getLogger(__name__)

OPEN_STATUSES = frozenset({"new", "accepted", "pending_new", "partially_filled", "held",
                           "accepted_for_bidding", "pending_cancel", "pending_replace", "calculated"})
KNOWN_ASSET_CLASSES = frozenset({"us_equity", "us_option", "crypto"})
CLOSED_LOOKBACK = 20  # closed orders read to find the last fill of a position closed at the broker
QUOTE_BATCH = 100  # contracts per market-data request


class AlpacaRefused(ConnectorError):
    """Alpaca answered with an error status (kept: callers branch on `status`, not on text)."""

    def __init__(self, message: str, *, status: int | None, code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# -- parsing at the boundary (pure) --------------------------------------------------------------


def _getter(raw: Any) -> Callable[[str], Any]:
    if isinstance(raw, dict):
        return raw.get
    return lambda name: getattr(raw, name, None)


def _text(value: Any) -> str | None:
    value = getattr(value, "value", value)  # alpaca-py enums
    return None if value is None else str(value)


def _num(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _required(get: Callable[[str], Any], *names: str) -> float:
    for name in names:
        value = _num(get(name))
        if value is not None:
            return value
    raise ValueError(f"the account has no {names[0]}")


def parse_account(raw: Any, *, account: str, as_of: datetime, trigger: str,
                  open_orders: Sequence[BrokerOrder] = ()) -> BrokerAccount:
    """An alpaca-py TradeAccount (or its JSON) as our record; raises ValueError without cash,
    buying power or equity, since no decision can use such an account."""
    get = _getter(raw)
    level = _num(get("options_approved_level"))
    return BrokerAccount(
        account=account, as_of=as_of, status=_text(get("status")) or "UNKNOWN",
        currency=_text(get("currency")) or "USD", cash=_required(get, "cash"),
        buying_power=_required(get, "buying_power"), options_buying_power=_num(get("options_buying_power")),
        equity=_required(get, "equity", "portfolio_value"), last_equity=_num(get("last_equity")),
        long_market_value=_num(get("long_market_value")), short_market_value=_num(get("short_market_value")),
        options_approved_level=None if level is None else int(level),
        trading_blocked=bool(get("trading_blocked") or get("account_blocked")),
        open_orders=list(open_orders), trigger=trigger,
    )


def _asset_class_of(symbol: str, raw_class: Any) -> str:
    asset_class = _text(raw_class)
    if asset_class:
        return asset_class
    return "us_option" if parse_occ(symbol) is not None else "us_equity"


def parse_order(raw: Any, *, parent_id: str | None = None) -> BrokerOrder:
    """One order (its legs not included: see parse_orders)."""
    get = _getter(raw)
    symbol = _text(get("symbol")) or ""
    return BrokerOrder(
        id=_text(get("id")) or "", client_order_id=_text(get("client_order_id")), symbol=symbol,
        asset_class=_asset_class_of(symbol, get("asset_class")), side=_text(get("side")) or "",
        qty=_num(get("qty")), filled_qty=_num(get("filled_qty")) or 0.0,
        order_type=_text(get("type")) or _text(get("order_type")) or "",
        order_class=_text(get("order_class")) or "", status=_text(get("status")) or "",
        limit_price=_num(get("limit_price")), stop_price=_num(get("stop_price")),
        parent_id=parent_id, submitted_at=_time(get("submitted_at")),
    )


def parse_orders(raws: Iterable[Any], *, open_only: bool = False) -> list[BrokerOrder]:
    """Orders read with nested=true, flattened: each parent, then its legs naming it (Alpaca ignores
    our client_order_id on legs, so the parent is how a leg is known); `open_only` drops the rest."""
    out: list[BrokerOrder] = []
    for raw in raws:
        parent = parse_order(raw)
        out.append(parent)
        out.extend(parse_order(leg, parent_id=parent.id) for leg in _getter(raw)("legs") or ())
    return [o for o in out if o.status in OPEN_STATUSES] if open_only else out


def parse_position(raw: Any, *, account: str, as_of: datetime, origin: str) -> BrokerPosition:
    """Every asset class, as Alpaca names it. An option's contract terms come from its OCC symbol;
    an unknown asset class or an unreadable option symbol is logged and kept with what is known."""
    get = _getter(raw)
    symbol = _text(get("symbol")) or _text(get("asset_id")) or "?"
    asset_class = _asset_class_of(symbol, get("asset_class"))
    qty = _num(get("qty")) or 0.0
    if _text(get("side")) == "short" and qty > 0:
        qty = -qty
    avg = _num(get("avg_entry_price"))
    if avg is None:
        log.warning("alpaca position %s of %s has no avg_entry_price; kept as 0", symbol, account)
    occ = parse_occ(symbol)
    if asset_class not in KNOWN_ASSET_CLASSES:
        log.warning("alpaca position %s of %s: unknown asset class %r; kept", symbol, account, asset_class)
    elif asset_class == "us_option" and occ is None:
        log.warning("alpaca position %s of %s: not an OCC option symbol; kept without contract terms",
                    symbol, account)
    option = asset_class == "us_option" or occ is not None
    return BrokerPosition(
        account=account, symbol=symbol, as_of=as_of, asset_class=asset_class, qty=qty,
        avg_entry_price=avg or 0.0, market_value=_num(get("market_value")),
        cost_basis=_num(get("cost_basis")),
        unrealized_pl=_num(get("unrealized_pl")), unrealized_plpc=_num(get("unrealized_plpc")),
        current_price=_num(get("current_price")), origin=origin,
        underlying=occ.underlying if occ else None,
        expiration=occ.expiration.isoformat() if occ else None,
        option_type=occ.option_type if occ else None, strike=occ.strike if occ else None,
        multiplier=CONTRACT_MULTIPLIER if option else 1.0,
    )


def _price(value: Any) -> float | None:
    out = _num(value)
    return out if out is not None and out >= 0 else None


def parse_option_quote(contract: str, quote: Any, snapshot: Any, *,
                       fetched_at: datetime) -> OptionQuote | None:
    """A contract's latest quote (raw data API JSON), with the snapshot's trade, IV and greeks when
    there is one; None when Alpaca sent neither. Missing or negative values stay None; a crossed
    quote is kept as sent (its mid is None)."""
    snap = snapshot if isinstance(snapshot, dict) else {}
    q = quote if isinstance(quote, dict) else snap.get("latestQuote")
    if not isinstance(q, dict) and not snap:
        return None
    q = q if isinstance(q, dict) else {}
    occ = parse_occ(contract)
    if occ is None:
        log.warning("option quote for %r: not an OCC symbol; kept", contract)
    bid, ask = _price(q.get("bp")), _price(q.get("ap"))
    if bid is not None and ask is not None and ask < bid:
        log.warning("option quote for %s is crossed (bid %s > ask %s); kept", contract, bid, ask)
    trade, greeks = (v if isinstance(v := snap.get(k), dict) else {} for k in ("latestTrade", "greeks"))
    return OptionQuote(
        contract=contract, underlying=occ.underlying if occ else contract,
        as_of=_time(q.get("t")) or _time(trade.get("t")) or fetched_at,
        bid=bid, ask=ask, bid_size=_price(q.get("bs")), ask_size=_price(q.get("as")),
        last=_price(trade.get("p")), iv=_num(snap.get("impliedVolatility")),
        delta=_num(greeks.get("delta")), gamma=_num(greeks.get("gamma")),
        theta=_num(greeks.get("theta")), vega=_num(greeks.get("vega")),
        source="quote" if isinstance(quote, dict) else "snapshot", fetched_at=fetched_at,
    )


# -- one session per key pair ----------------------------------------------------------------------


class BrokerSession:
    """Reads one Alpaca key pair's account (blocking calls: run them in a thread). Keys are read
    again after a 401/403; 429s wait what Retry-After asks (see alpaca_trading.harden)."""

    def __init__(self, credentials: CredentialSource, *, trading_url: str | None = None,
                 data_url: str | None = None, timeout_s: float = 10.0, label: str | None = None) -> None:
        self.credentials = credentials
        self.trading_url = trading_url
        self.data_url = data_url
        self.timeout_s = timeout_s
        who = label or credentials.label or (f"file {credentials.file}" if credentials.file
                                             else "global keys")
        self.label = f"{who} @ {trading_url or 'paper'}"
        self.accounts: tuple[str, ...] = ()  # the account names sharing this key pair (sessions_for)
        self.calls = 0  # HTTP requests answered (and failed to connect), for costs in tests and logs
        self._clients: tuple[Any, Any] | None = None  # (TradingClient, OptionHistoricalDataClient)
        self._lock = threading.Lock()
        self._published: dict[str, dict[str, BrokerPosition]] = {}  # account -> symbol -> open position

    def __repr__(self) -> str:
        return f"BrokerSession({self.label!r})"

    def _count(self, _response: requests.Response) -> None:
        self.calls += 1

    def _get_clients(self, *, reload: bool = False) -> tuple[Any, Any]:
        with self._lock:
            if self._clients is None or reload:
                creds = self.credentials.load(reason="auth failure" if reload else "start")
                key, secret = creds.key_id.get_secret_value(), creds.secret_key.get_secret_value()
                trading = trading_client(key, secret, url=self.trading_url, timeout_s=self.timeout_s,
                                         raw_data=True, on_response=self._count)
                data_cls = _option_data()
                data = harden(data_cls(key, secret, raw_data=True, url_override=self.data_url),
                              timeout_s=self.timeout_s, on_response=self._count)
                self._clients = (trading, data)
            return self._clients

    def _call(self, what: str, fn: Callable[[Any], Any], *, data: bool = False) -> Any:
        """One alpaca-py call, its errors as ConnectorError; the keys read again once after a
        refusal of them (a rotation)."""
        APIError = _alpaca().common.exceptions.APIError  # noqa: N806
        for attempt in (0, 1):
            clients = self._get_clients(reload=attempt > 0)
            try:
                return fn(clients[1] if data else clients[0])
            except APIError as exc:
                status, code, message = _api_error(exc)
                if attempt == 0 and status in (401, 403) and _is_auth(status, code, message):
                    log.warning("alpaca %s: %s on %s; reading the credentials again",
                                self.label, status, what)
                    continue
                raise AlpacaRefused(f"alpaca {self.label}: {what}: HTTP {status}: {message}",
                                    status=status, code=code) from exc
            except requests.RequestException as exc:
                self.calls += 1
                raise ConnectorError(f"alpaca {self.label}: {what}: {type(exc).__name__}") from exc
            except ValueError as exc:  # an answer alpaca-py could not read (bad JSON, a model)
                raise ConnectorError(f"alpaca {self.label}: {what}: unreadable answer ({exc})") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self, account: str, *, pipeline_symbols: Collection[str], trigger: str,
                 now: datetime, expect_held: Collection[str] = ()) -> tuple[BrokerAccount, list[BrokerPosition]]:
        """The account with its open orders, and every position; a position published last time
        and gone now comes once more with qty 0 and its last fill price, and so does a symbol of
        `expect_held` (the desk's open positions) that Alpaca does not hold. Raises ConnectorError
        when Alpaca cannot be read (nothing is remembered then)."""
        trading = _alpaca().trading
        open_orders = trading.requests.GetOrdersRequest(status=trading.enums.QueryOrderStatus.OPEN,
                                                        nested=True, limit=500)
        raw_account = self._call("account", lambda c: c.get_account())
        raw_positions = self._call("positions", lambda c: c.get_all_positions())
        raw_orders = self._call("open orders", lambda c: c.get_orders(open_orders))
        try:
            orders = parse_orders(raw_orders or (), open_only=True)
            record = parse_account(raw_account, account=account, as_of=now, trigger=trigger,
                                   open_orders=orders)
        except (ValueError, TypeError) as exc:
            raise ConnectorError(f"alpaca {self.label}: account of {account} unreadable: {exc}") from exc
        ours = set(pipeline_symbols)
        positions = [parse_position(p, account=account, as_of=now,
                                    origin="pipeline" if _getter(p)("symbol") in ours else "external")
                     for p in raw_positions or ()]
        held = {p.symbol for p in positions}
        published = self._published.get(account, {})
        closed = [self._closed(p, now) for s, p in sorted(published.items()) if s not in held]
        closed += [self._closed(_flat(account, s, now), now) for s in sorted(set(expect_held))
                   if s not in held and s not in published]
        self._published[account] = {p.symbol: p for p in positions if p.qty != 0}
        return record, positions + closed

    def _closed(self, last: BrokerPosition, now: datetime) -> BrokerPosition:
        """`last` as a closed position: qty 0 at its last fill price."""
        return replace(last, as_of=now, qty=0.0, market_value=0.0, cost_basis=0.0, unrealized_pl=0.0,
                       unrealized_plpc=None, current_price=self._last_fill_price(last.symbol))

    def _last_fill_price(self, symbol: str) -> float | None:
        """The price of the latest fill in `symbol` (a stop leg, a manual sale), None if unknown."""
        trading = _alpaca().trading
        request = trading.requests.GetOrdersRequest(status=trading.enums.QueryOrderStatus.CLOSED,
                                                    symbols=[symbol], limit=CLOSED_LOOKBACK,
                                                    direction=trading.requests.Sort.DESC)
        try:
            raws = self._call(f"closed orders of {symbol}", lambda c: c.get_orders(request))
        except ConnectorError as exc:
            log.warning("%s; the closed position's last price is unknown", exc)
            return None
        fills = [(_time(g("filled_at")) or _time(g("updated_at")), price) for g in map(_getter, raws or ())
                 if (_num(g("filled_qty")) or 0) > 0 and (price := _num(g("filled_avg_price"))) is not None]
        fills = [(t, p) for t, p in fills if t is not None]
        return max(fills)[1] if fills else None

    def remember(self, account: str, positions: Iterable[BrokerPosition]) -> None:
        """What was published before a restart (from the topic), so a position closed meanwhile
        still gets its qty 0 record."""
        self._published[account] = {p.symbol: p for p in positions if p.qty != 0}

    # -- option marks -------------------------------------------------------------------------

    def option_quotes(self, contracts: Sequence[str], *, now: datetime) -> list[OptionQuote]:
        """Latest quotes of `contracts`, with IV and greeks from their snapshots where Alpaca has
        them; one failing endpoint leaves the other's data, both failing raise ConnectorError."""
        data = _option_data_requests()
        wanted = list(dict.fromkeys(c for c in contracts if c))
        quotes: dict[str, Any] = {}
        snaps: dict[str, Any] = {}
        errors: list[ConnectorError] = []
        for i in range(0, len(wanted), QUOTE_BATCH):
            batch = wanted[i:i + QUOTE_BATCH]
            for what, target, request, method in (
                ("option quotes", quotes, data.OptionLatestQuoteRequest(symbol_or_symbols=batch),
                 "get_option_latest_quote"),
                ("option snapshots", snaps, data.OptionSnapshotRequest(symbol_or_symbols=batch),
                 "get_option_snapshot"),
            ):
                try:
                    answer = self._call(what, functools.partial(_invoke, method, request), data=True)
                except ConnectorError as exc:
                    errors.append(exc)
                    continue
                target.update(answer or {})
        if errors and not quotes and not snaps:
            raise errors[0]
        for error in errors:
            log.warning("%s; using what the other endpoint sent", error)
        out = [parse_option_quote(c, quotes.get(c), snaps.get(c), fetched_at=now) for c in wanted]
        return [q for q in out if q is not None]

    # -- bracket legs -------------------------------------------------------------------------

    def cancel_legs(self, parent_client_order_id: str) -> int:
        """Cancels the open legs of a bracket entry (found through its parent: the legs carry no
        client_order_id of ours) before the desk's own exit; returns how many it canceled."""
        trading = _alpaca().trading
        try:
            parent = self._call("bracket parent", lambda c: c.get_order_by_client_id(parent_client_order_id))
        except AlpacaRefused as exc:
            if exc.status == 404:
                return 0
            raise
        parent_id = str(_getter(parent)("id"))
        nested = trading.requests.GetOrderByIdRequest(nested=True)
        tree = self._call("bracket legs", lambda c: c.get_order_by_id(parent_id, nested))
        canceled = 0
        for leg in parse_orders([tree]):
            if leg.parent_id is None or leg.status not in OPEN_STATUSES:
                continue
            try:
                self._call("leg cancel", functools.partial(_invoke, "cancel_order_by_id", leg.id))
            except AlpacaRefused as exc:
                if exc.status in (404, 422):  # filled or canceled meanwhile: nothing left to cancel
                    log.info("alpaca %s: leg %s of %s not canceled: %s", self.label, leg.id,
                             parent_client_order_id, exc)
                    continue
                raise
            canceled += 1
        return canceled


def _invoke(method: str, arg: Any, client: Any) -> Any:
    return getattr(client, method)(arg)


def _option_data() -> Any:
    """alpaca-py's option data client class, imported on first use (see alpaca_trading._alpaca)."""
    _alpaca()  # imports alpaca.trading.stream, and websockets.legacy with it, under its warning filter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
        from alpaca.data.historical.option import OptionHistoricalDataClient
    return OptionHistoricalDataClient


def _option_data_requests() -> Any:
    _option_data()
    import alpaca.data.requests

    return alpaca.data.requests


def sessions_for(accounts: Iterable[Any], settings: Settings, *,
                 timeout_s: float = 10.0) -> dict[str, BrokerSession]:
    """A session per key pair of the alpaca-paper accounts, by account name: accounts naming the
    same credentials_file (or none: the global keys) and trading_url share one."""
    by_pair: dict[tuple[str | None, str | None], BrokerSession] = {}
    out: dict[str, BrokerSession] = {}
    for account in accounts:
        if getattr(account, "mode", None) != "alpaca-paper":
            continue
        file = getattr(account, "credentials_file", None)
        url = getattr(account, "trading_url", None) or settings.alpaca_trading_url
        pair = (str(Path(file).expanduser().resolve()) if file else None, url)
        session = by_pair.get(pair)
        if session is None:
            source = (CredentialSource(file=Path(file).expanduser(), key_id=None, secret_key=None) if file
                      else CredentialSource.from_settings(settings))
            session = by_pair[pair] = BrokerSession(
                source, trading_url=url, data_url=settings.alpaca_data_url, timeout_s=timeout_s,
                label=f"file {file}" if file else "global keys")
        session.accounts += (account.name,)
        session.credentials.label = ",".join(session.accounts)
        out[account.name] = session
    return out


def _flat(account: str, symbol: str, now: datetime) -> BrokerPosition:
    """A position of the desk's that Alpaca never reported (it closed between two snapshots)."""
    occ = parse_occ(symbol)
    return BrokerPosition(account, symbol, now, "us_option" if occ else "us_equity", 0.0, 0.0, 0.0, 0.0, 0.0,
                          None, None, "pipeline", multiplier=100.0 if occ else 1.0)
