"""A fake Alpaca trading API (and the option market data endpoints) answering as Alpaca does, per
key pair, so alpaca-py's TradingClient, TradingStream and OptionHistoricalDataClient run unchanged.

Each key pair is a FakeAccount: balances, positions (equities and OCC options, marked as Alpaca
marks them: an option's market value is qty x price x 100) and orders. REST `/v2`: account,
positions, orders (POST validated as Alpaca validates: qty, side, symbol, held quantity, buying
power, sub-penny prices, bracket legs; GET with status/nested/symbols/limit/direction; DELETE
cancels), `/v1beta1/options/quotes/latest` and `/snapshots`. Websocket `/stream`: trade_updates of
the authenticated account only, as binary JSON frames. Test hooks: partial fills then cancel or
expiry, a bracket stop that fills while the client is away, a manual trade, scripted answers, 429s
with Retry-After, a kill hook between storing and answering. Runs on its own thread and loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

T = TypeVar("T")
Key = tuple[str, str]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SUB_PENNY = "sub-penny increment does not fulfill minimum pricing criteria"
DEFAULT_KEY: Key = ("key", "secret")
DEFAULT_ASSETS = frozenset({"AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA", "SPY", "QQQ", "QCOM",
                            "AMD", "NFLX", "IWM"})
OPEN = frozenset({"new", "accepted", "pending_new", "partially_filled", "held", "accepted_for_bidding",
                  "pending_cancel", "pending_replace", "calculated"})
_OCC = re.compile(r"^[A-Z][A-Z0-9.]{0,5}\d{6}[CP]\d{8}$")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def is_option(symbol: str) -> bool:
    return bool(_OCC.match(symbol))


def _s(value: float | None) -> str | None:
    return None if value is None else f"{value:.10g}"


def _sub_penny(price: float) -> bool:
    places = 100 if price >= 1.0 else 10_000
    return abs(price * places - round(price * places)) > 1e-6


@dataclass
class FakeOrder:
    data: dict[str, Any]
    account: FakeAccount | None = None
    seq: int = 0
    legs: list[FakeOrder] = field(default_factory=list)

    @property
    def client_order_id(self) -> str:
        return str(self.data["client_order_id"])

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def remaining(self) -> float:
        return float(self.data["qty"] or 0) - float(self.data["filled_qty"] or 0)

    def json(self, *, nested: bool = False) -> dict[str, Any]:
        out = dict(self.data)
        out["legs"] = [leg.json() for leg in self.legs] if nested and self.legs else None
        return out


@dataclass
class FakePosition:
    symbol: str
    qty: float  # signed
    avg_entry_price: float
    asset_class: str | None = None  # default: us_option for an OCC symbol, else us_equity
    exchange: str | None = None


@dataclass
class FakeAccount:
    key: Key
    cash: float = 100_000.0
    buying_power: float = 200_000.0
    options_buying_power: float | None = 100_000.0
    last_equity: float | None = None
    options_approved_level: int | None = 2
    status: str = "ACTIVE"
    shorting_enabled: bool = True
    trading_blocked: bool = False
    account_number: str = field(default_factory=lambda: f"PA{uuid.uuid4().int % 10**10:010d}")
    positions: dict[str, FakePosition] = field(default_factory=dict)
    orders: dict[str, FakeOrder] = field(default_factory=dict)  # by id, bracket legs included
    by_client_id: dict[str, FakeOrder] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = str(uuid.uuid4())
        if self.last_equity is None:
            self.last_equity = self.cash


ACCOUNT = web.RequestKey("account", FakeAccount)  # the key pair's account, set by the middleware


@dataclass
class FakeAlpacaTrading:
    keys: set[Key] = field(default_factory=lambda: {DEFAULT_KEY})
    fill: str = "immediate"  # "immediate": filled right after acceptance; "hold": stays new; "reject"
    prices: dict[str, float] = field(default_factory=dict)  # fill price and mark per symbol (default 100)
    post_delay_s: float = 0.0  # answer POSTs this late (the order is stored first)
    on_order: Callable[[FakeOrder], None] | None = None  # after storing, before answering
    scripted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # next POST answers
    assets: set[str] = field(default_factory=lambda: set(DEFAULT_ASSETS))  # tradable, besides prices/quotes

    def __post_init__(self) -> None:
        self.accounts: dict[Key, FakeAccount] = {}
        self.orders: dict[str, FakeOrder] = {}  # every account's, by id
        self.by_client_id: dict[str, FakeOrder] = {}  # every account's (tests use one client id once)
        self.post_attempts: list[str] = []  # client_order_id of every POST, refused ones included
        self.lookups: list[str] = []
        self.request_log: list[tuple[float, str, str, int]] = []  # (monotonic, method, path, status)
        self.option_quotes: dict[str, dict[str, Any]] = {}  # contract -> raw latest quote ("bp", "ap"...)
        self.option_snapshots: dict[str, dict[str, Any]] = {}  # contract -> raw snapshot
        self._throttle: list[tuple[str, str | None]] = []  # (path prefix, Retry-After) of the next 429s
        self._ws: dict[web.WebSocketResponse, tuple[Key, asyncio.Queue[bytes]]] = {}
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def start(self) -> FakeAlpacaTrading:
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-alpaca-trading", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        """Stops the server (Alpaca unreachable from then on); a second call does nothing."""
        if self._loop is not None and self._thread is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/v2/orders", self._post_order)
        app.router.add_get("/v2/orders", self._list_orders)
        app.router.add_get("/v2/orders:by_client_order_id", self._by_client_id)
        app.router.add_get("/v2/orders/{order_id}", self._by_id)
        app.router.add_delete("/v2/orders/{order_id}", self._cancel)
        app.router.add_get("/v2/account", self._account)
        app.router.add_get("/v2/positions", self._positions)
        app.router.add_get("/v2/positions/{symbol}", self._position)
        app.router.add_get("/v1beta1/options/quotes/latest", self._latest_quotes)
        app.router.add_get("/v1beta1/options/snapshots", self._snapshots)
        app.router.add_get("/stream", self._stream)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for ws in list(self._ws):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Runs a state change on the server's loop (it owns the state and the websockets)."""
        loop = self._loop
        if loop is None or not loop.is_running() or threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    # -- test helpers ---------------------------------------------------------------------------

    def account(self, key: Key = DEFAULT_KEY) -> FakeAccount:
        """The account of a key pair (made, with default balances, on first use)."""
        self.keys.add(key)
        if key not in self.accounts:
            self.accounts[key] = FakeAccount(key)
        return self.accounts[key]

    def add_account(self, key_id: str, secret: str, **fields: Any) -> FakeAccount:
        acct = FakeAccount((key_id, secret), **fields)
        self.keys.add(acct.key)
        self.accounts[acct.key] = acct
        return acct

    def rotate_keys(self, old: Key, new: Key) -> None:
        """The account's key pair is replaced: the old one now answers 401."""
        acct = self.account(old)
        self.keys.discard(old)
        self.keys.add(new)
        acct.key = new
        self.accounts[new] = self.accounts.pop(old)

    def set_position(self, symbol: str, qty: float, avg_entry_price: float, *, key: Key = DEFAULT_KEY,
                     current_price: float | None = None, asset_class: str | None = None,
                     exchange: str | None = None) -> FakePosition:
        """A position already held (bought before the test: cash unchanged)."""
        pos = FakePosition(symbol, qty, avg_entry_price, asset_class, exchange)
        self._on_loop(lambda: self.account(key).positions.__setitem__(symbol, pos))
        if current_price is not None:
            self.prices[symbol] = current_price
        return pos

    def set_option_quote(self, contract: str, *, bid: float | None, ask: float | None, bid_size: float = 10,
                         ask_size: float = 10, t: datetime | None = None, last: float | None = None,
                         iv: float | None = None, greeks: dict[str, float] | None = None) -> None:
        """The latest quote (and snapshot: trade, IV, greeks) of a contract, as the data API sends it."""
        ts = (t or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        quote: dict[str, Any] = {"t": ts, "ax": "C", "as": ask_size, "bx": "C", "bs": bid_size, "c": "A"}
        if bid is not None:
            quote["bp"] = bid
        if ask is not None:
            quote["ap"] = ask
        snap: dict[str, Any] = {"latestQuote": quote}
        if last is not None:
            snap["latestTrade"] = {"t": ts, "x": "C", "p": last, "s": 1, "c": "I"}
        if iv is not None:
            snap["impliedVolatility"] = iv
        if greeks is not None:
            snap["greeks"] = greeks
        self.option_quotes[contract] = quote
        self.option_snapshots[contract] = snap

    def rate_limit(self, times: int = 1, *, retry_after: str | None = "1", path_prefix: str = "") -> None:
        """The next `times` REST requests under `path_prefix` answer 429 (with this Retry-After)."""
        self._throttle.extend([(path_prefix, retry_after)] * times)

    def requests_to(self, path: str, method: str = "GET") -> list[tuple[float, int]]:
        """(monotonic time, status) of every request to `path`, in arrival order."""
        return [(t, s) for t, m, p, s in self.request_log if p == path and m == method]

    def stream_clients(self, key: Key | None = None) -> int:
        return sum(1 for k, _q in self._ws.values() if key is None or k == key)

    def orders_for(self, client_order_id: str) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.client_order_id == client_order_id]

    def fill_order(self, client_order_id: str, *, price: float | None = None, key: Key = DEFAULT_KEY) -> None:
        """Fills a held order (fill="hold") in full."""
        def run() -> None:
            order = self.account(key).by_client_id[client_order_id]
            self._execute(order, order.remaining, price if price is not None else self.price_of(order))
        self._on_loop(run)

    def partial_fill(self, client_order_id: str, qty: float, *, price: float | None = None,
                     then: str | None = "canceled", key: Key = DEFAULT_KEY) -> None:
        """Fills `qty` of an open order ("partial_fill"), then cancels or expires the rest."""
        def run() -> None:
            order = self.account(key).by_client_id[client_order_id]
            self._execute(order, qty, price if price is not None else self.price_of(order))
            if then is not None:
                self._close(order, then)
        self._on_loop(run)

    def trigger_stop(self, parent_client_order_id: str, *, price: float | None = None,
                     key: Key = DEFAULT_KEY) -> FakeOrder:
        """The bracket's stop leg fills (the client need not be there): position closed, cash in,
        the take-profit leg canceled (OCO)."""
        def run() -> FakeOrder:
            parent = self.account(key).by_client_id[parent_client_order_id]
            stop = next(leg for leg in parent.legs if leg.data["type"] == "stop")
            fill_at = price if price is not None else float(stop.data["stop_price"])
            self._execute(stop, stop.remaining, fill_at)
            for leg in parent.legs:
                if leg is not stop and leg.status in OPEN:
                    self._close(leg, "canceled")
            return stop
        return self._on_loop(run)

    def manual_trade(self, symbol: str, qty: float, price: float, *, key: Key = DEFAULT_KEY) -> FakeOrder:
        """A trade at the broker not sent by the pipeline (the dashboard, another program): a filled
        order of its own (qty > 0 buys, < 0 sells) that moves the position and cash."""
        def run() -> FakeOrder:
            body = {"symbol": symbol, "qty": abs(qty), "side": "buy" if qty > 0 else "sell", "type": "market",
                    "time_in_force": "day", "client_order_id": str(uuid.uuid4())}
            order = self._store(self.account(key), body)
            self._execute(order, abs(qty), price)
            return order
        return self._on_loop(run)

    # -- state ----------------------------------------------------------------------------------

    def price_of(self, order_or_symbol: FakeOrder | str) -> float:
        symbol = order_or_symbol if isinstance(order_or_symbol, str) else order_or_symbol.data["symbol"]
        if symbol in self.prices:
            return self.prices[symbol]
        quote = self.option_quotes.get(symbol, {})
        if quote.get("bp") is not None and quote.get("ap") is not None:
            return (float(quote["bp"]) + float(quote["ap"])) / 2.0
        return 1.0 if is_option(symbol) else 100.0

    def _known(self, symbol: str) -> bool:
        return symbol in self.assets or symbol in self.prices or symbol in self.option_quotes

    def _account_for(self, key: Key) -> FakeAccount | None:
        return self.account(key) if key in self.keys else None

    def _store(self, acct: FakeAccount, body: dict[str, Any]) -> FakeOrder:
        order = self._new_order(acct, body)
        if body.get("order_class") == "bracket":
            exit_side = "sell" if body["side"] == "buy" else "buy"
            for kind, price_field, price in (("limit", "limit_price", body["take_profit"]["limit_price"]),
                                             ("stop", "stop_price", body["stop_loss"]["stop_price"])):
                leg_body = {**body, "side": exit_side, "type": kind, "client_order_id": str(uuid.uuid4()),
                            price_field: price}
                leg = self._new_order(acct, leg_body)
                leg.data["status"] = "held"
                order.legs.append(leg)
        for o in (order, *order.legs):
            acct.orders[o.id] = self.orders[o.id] = o
            acct.by_client_id[o.client_order_id] = self.by_client_id[o.client_order_id] = o
        return order

    def _new_order(self, acct: FakeAccount, body: dict[str, Any]) -> FakeOrder:
        now = _now()
        qty = body.get("qty")
        symbol = body["symbol"]
        self._seq += 1
        data = {
            "id": str(uuid.uuid4()), "client_order_id": body["client_order_id"], "created_at": now,
            "updated_at": now, "submitted_at": now, "filled_at": None, "expired_at": None,
            "canceled_at": None, "failed_at": None, "replaced_at": None, "replaced_by": None,
            "replaces": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "symbol": symbol,
            "asset_class": "us_option" if is_option(symbol) else "us_equity", "notional": None,
            "qty": None if qty is None else _s(float(qty)), "filled_qty": "0", "filled_avg_price": None,
            "order_class": body.get("order_class") or "simple", "order_type": body.get("type", "market"),
            "type": body.get("type", "market"), "side": body["side"],
            "time_in_force": body.get("time_in_force", "day"),
            "limit_price": _s(body.get("limit_price")), "stop_price": _s(body.get("stop_price")),
            "status": "accepted", "extended_hours": False,
        }
        return FakeOrder(data, acct, self._seq)

    def _execute(self, order: FakeOrder, qty: float, price: float) -> None:
        """Fills `qty` of `order` at `price`: the order, the position, cash and buying power."""
        acct = order.account
        assert acct is not None
        d = order.data
        done = float(d["filled_qty"] or 0)
        avg = float(d["filled_avg_price"] or 0)
        total = done + qty
        d["filled_qty"] = _s(total)
        d["filled_avg_price"] = _s((done * avg + qty * price) / total)
        d["status"] = "filled" if total >= float(d["qty"]) - 1e-9 else "partially_filled"
        d["updated_at"] = _now()
        if d["status"] == "filled":
            d["filled_at"] = d["updated_at"]
        symbol = d["symbol"]
        signed = qty if d["side"] == "buy" else -qty
        mult = 100.0 if is_option(symbol) else 1.0
        flow = signed * price * mult
        acct.cash -= flow
        acct.buying_power -= flow
        if acct.options_buying_power is not None:
            acct.options_buying_power -= flow
        pos = acct.positions.get(symbol)
        held = pos.qty if pos else 0.0
        new = held + signed
        if abs(new) < 1e-9:
            acct.positions.pop(symbol, None)
        elif pos is None or held * new < 0:  # opened, or flipped: the remainder at this price
            acct.positions[symbol] = FakePosition(symbol, new, price, pos.asset_class if pos else None)
        else:
            if abs(new) > abs(held):
                pos.avg_entry_price = (abs(held) * pos.avg_entry_price + qty * price) / abs(new)
            pos.qty = new
        event = "fill" if d["status"] == "filled" else "partial_fill"
        self._emit(order, event, execution_id=str(uuid.uuid4()), price=_s(price), qty=_s(qty),
                   position_qty=_s(new))
        if d["status"] == "filled":
            for leg in order.legs:  # a bracket's exits go live once its entry filled
                if leg.status == "held":
                    leg.data["status"] = "new"
                    self._emit(leg, "new")

    def _close(self, order: FakeOrder, status: str) -> None:
        d = order.data
        d["status"] = status
        d["updated_at"] = _now()
        d["canceled_at" if status == "canceled" else "expired_at"] = d["updated_at"]
        self._emit(order, status)
        for leg in order.legs:
            if leg.status in OPEN:
                self._close(leg, status)

    def _emit(self, order: FakeOrder, event: str, **extra: Any) -> None:
        msg = {"stream": "trade_updates",
               "data": {"event": event, "order": order.json(), "timestamp": _now(), **extra}}
        payload = json.dumps(msg).encode()
        for key, queue in self._ws.values():
            if self.accounts.get(key) is order.account:
                queue.put_nowait(payload)

    # -- REST -----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/stream":
            return await handler(request)
        response = await self._answer(request, handler)
        self.request_log.append((time.monotonic(), request.method, request.path, response.status))
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        throttle = next((t for t in self._throttle if request.path.startswith(t[0])), None)
        if throttle is not None:
            self._throttle.remove(throttle)
            headers = {"Retry-After": throttle[1]} if throttle[1] is not None else {}
            return web.json_response({"code": 42910000, "message": "rate limit exceeded"}, status=429,
                                     headers=headers)
        key = (request.headers.get("APCA-API-KEY-ID", ""), request.headers.get("APCA-API-SECRET-KEY", ""))
        acct = self._account_for(key)
        if acct is None:
            return self._error(401, 40110000, "request is not authorized")
        request[ACCOUNT] = acct
        return await handler(request)

    @staticmethod
    def _error(status: int, code: int, message: str, **extra: Any) -> web.Response:
        return web.json_response({"code": code, "message": message, **extra}, status=status)

    def _refusal(self, acct: FakeAccount, body: dict[str, Any]) -> web.Response | None:
        """Alpaca's answer to an order it will not accept, or None."""
        symbol, side, kind = body.get("symbol"), body.get("side"), body.get("type", "market")
        if side not in ("buy", "sell"):
            return self._error(422, 40010001, f"invalid side: {side!r}")
        if kind not in ("market", "limit", "stop", "stop_limit", "trailing_stop"):
            return self._error(422, 40010001, f"invalid order type: {kind!r}")
        try:
            qty = float(body["qty"])
        except (KeyError, TypeError, ValueError):
            return self._error(422, 40010001, "qty is required")
        if qty <= 0:
            return self._error(422, 40010001, "qty must be > 0")
        if not isinstance(symbol, str) or not self._known(symbol):
            return self._error(422, 40010001, f"asset \"{symbol}\" not found")
        option = is_option(symbol)
        if option and qty != int(qty):
            return self._error(422, 40010001, "qty must be a whole number of contracts")
        for name in ("limit_price", "stop_price"):
            if body.get(name) is not None and _sub_penny(float(body[name])):
                return self._error(422, 42210000, f"invalid {name} {body[name]}. {SUB_PENNY}")
        base = float(body.get("limit_price") or self.price_of(symbol))
        if body.get("order_class") == "bracket":
            refused = self._bracket_refusal(body, side, base, option)
            if refused is not None:
                return refused
        mult = 100.0 if option else 1.0
        live = [o for o in acct.orders.values() if o.status in OPEN and o.data["symbol"] == symbol]
        if side == "sell":
            pos = acct.positions.get(symbol)
            held_long = pos.qty if pos is not None and pos.qty > 0 else 0.0
            parents = {self._oco_root(acct, o): o.remaining for o in live if o.data["side"] == "sell"}
            available = held_long - sum(parents.values())
            if held_long > 0 or parents or not acct.shorting_enabled or option:
                if qty > available + 1e-9:
                    return self._error(403, 40310000, f"insufficient qty available for order (requested: "
                                       f"{qty:g}, available: {max(available, 0.0):g})", symbol=symbol,
                                       available=_s(max(available, 0.0)), existing_qty=_s(held_long),
                                       held_for_orders=_s(sum(parents.values())))
            return None
        power = acct.buying_power
        if option and acct.options_buying_power is not None:
            power = acct.options_buying_power
        pending = sum(o.remaining * float(o.data["limit_price"] or self.price_of(o)) * mult
                      for o in acct.orders.values() if o.status in OPEN and o.data["side"] == "buy"
                      and is_option(o.data["symbol"]) == option)
        if self.fill == "reject" or qty * base * mult > power - pending + 1e-6:
            return self._error(403, 40310000, "insufficient buying power", buying_power=_s(power),
                               cost_basis=_s(qty * base * mult))
        return None

    def _bracket_refusal(self, body: dict[str, Any], side: str, base: float,
                         option: bool) -> web.Response | None:
        if option:
            return self._error(422, 42210000, "bracket orders are not supported for options")
        try:
            take = float(body["take_profit"]["limit_price"])
            stop = float(body["stop_loss"]["stop_price"])
        except (KeyError, TypeError, ValueError):
            return self._error(422, 40010001, "bracket orders require take_profit.limit_price and "
                                              "stop_loss.stop_price")
        for name, price in (("take_profit.limit_price", take), ("stop_loss.stop_price", stop)):
            if _sub_penny(price):
                return self._error(422, 42210000, f"invalid {name} {price}. {SUB_PENNY}")
        sign = 1 if side == "buy" else -1  # a buy's target is above the base price, its stop below
        if sign * (take - base) < 0.01 - 1e-9:
            bound = ">= base_price + 0.01" if sign > 0 else "<= base_price - 0.01"
            return self._error(422, 42210000, f"take_profit.limit_price must be {bound}")
        if sign * (base - stop) < 0.01 - 1e-9:
            bound = "<= base_price - 0.01" if sign > 0 else ">= base_price + 0.01"
            return self._error(422, 42210000, f"stop_loss.stop_price must be {bound}")
        return None

    @staticmethod
    def _oco_root(acct: FakeAccount, order: FakeOrder) -> str:
        """Bracket legs hold the position once between them (one-cancels-other)."""
        for parent in acct.orders.values():
            if order in parent.legs:
                return parent.id
        return order.id

    async def _post_order(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        body = await request.json()
        coid = body.get("client_order_id") or str(uuid.uuid4())
        body["client_order_id"] = coid
        self.post_attempts.append(coid)
        if self.scripted:
            status, answer = self.scripted.pop(0)
            if status >= 500 and answer.get("store", False):
                self._store(acct, body)
            return web.json_response({k: v for k, v in answer.items() if k != "store"}, status=status)
        if coid in acct.by_client_id:
            return self._error(422, 40010001, "client_order_id must be unique")
        refused = self._refusal(acct, body)
        if refused is not None:
            return refused
        order = self._store(acct, body)
        if self.on_order is not None:
            self.on_order(order)
        if self.post_delay_s:
            await asyncio.sleep(self.post_delay_s)
        answer = order.json()
        asyncio.get_running_loop().call_later(0.05, self._routed, order)
        return web.json_response(answer)

    def _routed(self, order: FakeOrder) -> None:
        """Accepted -> new at the venue ("new" on the stream), then filled unless held."""
        if order.status != "accepted":
            return
        order.data["status"] = "new"
        self._emit(order, "new")
        if self.fill == "immediate":
            self._execute(order, order.remaining, self.price_of(order))

    async def _list_orders(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        q = request.query
        status = q.get("status", "open")
        nested = q.get("nested", "").lower() == "true"
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        limit = min(int(q.get("limit", 50)), 500)
        leg_ids = {leg.id for o in acct.orders.values() for leg in o.legs}

        def wanted(o: FakeOrder) -> bool:
            members = [o, *o.legs] if nested else [o]
            is_open = any(m.status in OPEN for m in members)
            return status == "all" or (status == "open") == is_open

        found = [o for o in acct.orders.values() if not (nested and o.id in leg_ids) and wanted(o)
                 and (symbols is None or o.data["symbol"] in symbols)]
        found.sort(key=lambda o: o.seq, reverse=q.get("direction", "desc") == "desc")
        return web.json_response([o.json(nested=nested) for o in found[:limit]])

    async def _by_client_id(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        coid = request.query.get("client_order_id", "")
        self.lookups.append(coid)
        order = acct.by_client_id.get(coid)
        if order is None:
            return self._error(404, 40410000, f"order not found for {coid}")
        return web.json_response(order.json())

    async def _by_id(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        order = acct.orders.get(request.match_info["order_id"])
        if order is None:
            return self._error(404, 40410000, "order not found")
        return web.json_response(order.json(nested=request.query.get("nested", "").lower() == "true"))

    async def _cancel(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        order = acct.orders.get(request.match_info["order_id"])
        if order is None:
            return self._error(404, 40410000, "order not found")
        if order.status not in OPEN:
            return self._error(422, 42210000, f"order is not cancelable (status: {order.status})")
        self._close(order, "canceled")
        return web.Response(status=204)

    def _equity(self, acct: FakeAccount) -> tuple[float, float, float]:
        values = [self._position_json(p)["market_value"] for p in acct.positions.values()]
        long_mv = sum(float(v) for v in values if float(v) > 0)
        short_mv = sum(float(v) for v in values if float(v) < 0)
        return acct.cash + long_mv + short_mv, long_mv, short_mv

    async def _account(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        equity, long_mv, short_mv = self._equity(acct)
        return web.json_response({
            "id": acct.id, "account_number": acct.account_number, "status": acct.status,
            "crypto_status": "ACTIVE", "currency": "USD", "buying_power": _s(acct.buying_power),
            "regt_buying_power": _s(acct.buying_power), "non_marginable_buying_power": _s(acct.cash),
            "cash": _s(acct.cash), "accrued_fees": "0", "portfolio_value": _s(equity), "equity": _s(equity),
            "last_equity": _s(acct.last_equity), "long_market_value": _s(long_mv),
            "short_market_value": _s(short_mv), "initial_margin": "0", "maintenance_margin": "0",
            "last_maintenance_margin": "0", "sma": "0", "multiplier": "2",
            "shorting_enabled": acct.shorting_enabled, "trading_blocked": acct.trading_blocked,
            "transfers_blocked": False, "account_blocked": False, "trade_suspended_by_user": False,
            "created_at": "2024-01-02T14:30:00Z", "options_buying_power": _s(acct.options_buying_power),
            "options_approved_level": acct.options_approved_level,
            "options_trading_level": acct.options_approved_level,
        })

    def _position_json(self, pos: FakePosition) -> dict[str, Any]:
        option = is_option(pos.symbol)
        mult = 100.0 if option else 1.0
        price = self.prices.get(pos.symbol)
        if price is None:
            price = self.price_of(pos.symbol) if pos.symbol in self.option_quotes else pos.avg_entry_price
        market_value = pos.qty * price * mult
        cost_basis = pos.qty * pos.avg_entry_price * mult
        pl = market_value - cost_basis
        plpc = pl / abs(cost_basis) if cost_basis else 0.0
        return {
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, pos.symbol)), "symbol": pos.symbol,
            "exchange": pos.exchange if pos.exchange is not None else ("" if option else "NASDAQ"),
            "asset_class": pos.asset_class or ("us_option" if option else "us_equity"),
            "asset_marginable": not option, "qty": _s(pos.qty), "qty_available": _s(pos.qty),
            "avg_entry_price": _s(pos.avg_entry_price), "side": "long" if pos.qty > 0 else "short",
            "market_value": _s(market_value), "cost_basis": _s(cost_basis), "unrealized_pl": _s(pl),
            "unrealized_plpc": _s(plpc), "unrealized_intraday_pl": _s(pl),
            "unrealized_intraday_plpc": _s(plpc),
            "current_price": _s(price), "lastday_price": _s(pos.avg_entry_price),
            "change_today": _s(price / pos.avg_entry_price - 1 if pos.avg_entry_price else 0.0),
        }

    async def _positions(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        return web.json_response([self._position_json(p) for p in acct.positions.values()])

    async def _position(self, request: web.Request) -> web.Response:
        acct = request[ACCOUNT]
        pos = acct.positions.get(request.match_info["symbol"])
        if pos is None:
            return self._error(404, 40410000, "position does not exist")
        return web.json_response(self._position_json(pos))

    async def _latest_quotes(self, request: web.Request) -> web.Response:
        symbols = [s for s in request.query.get("symbols", "").split(",") if s]
        found = {s: self.option_quotes[s] for s in symbols if s in self.option_quotes}
        return web.json_response({"quotes": found})

    async def _snapshots(self, request: web.Request) -> web.Response:
        symbols = [s for s in request.query.get("symbols", "").split(",") if s]
        found = {s: self.option_snapshots[s] for s in symbols if s in self.option_snapshots}
        return web.json_response({"snapshots": found, "next_page_token": None})

    # -- the trade_updates websocket ------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        key: Key | None = None
        writer: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                data = json.loads(msg.data)
                action = data.get("action")
                if action in ("authenticate", "auth"):
                    d = data.get("data", {})
                    pair = (str(d.get("key_id")), str(d.get("secret_key")))
                    key = pair if pair in self.keys else None
                    status = "authorized" if key else "unauthorized"
                    reply = {"stream": "authorization", "data": {"status": status, "action": "authenticate"}}
                    await ws.send_bytes(json.dumps(reply).encode())
                    if key is None:
                        break
                elif action == "listen" and key is not None:
                    streams = data.get("data", {}).get("streams", [])
                    reply = {"stream": "listening", "data": {"streams": streams}}
                    await ws.send_bytes(json.dumps(reply).encode())
                    if "trade_updates" in streams and ws not in self._ws:
                        queue: asyncio.Queue[bytes] = asyncio.Queue()
                        self._ws[ws] = (key, queue)
                        writer = asyncio.ensure_future(self._write(ws, queue))
        finally:
            self._ws.pop(ws, None)
            if writer is not None:
                writer.cancel()
        return ws

    @staticmethod
    async def _write(ws: web.WebSocketResponse, queue: asyncio.Queue[bytes]) -> None:
        """One writer per client keeps its updates in the order they happened."""
        while True:
            payload = await queue.get()
            try:
                await ws.send_bytes(payload)
            except ConnectionError:
                return
