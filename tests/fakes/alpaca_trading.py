"""A fake Alpaca trading API and option data endpoints, served as Alpaca serves them (REST, the
trade_updates websocket, 429s, test hooks) on their own thread, so alpaca-py's clients run unchanged.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from tests.fakes.alpaca_option_chain import OptionChainEndpoints
from tests.fakes.alpaca_trading_state import (
    DEFAULT_ASSETS,
    DEFAULT_KEY,
    OPEN,
    BrokerState,
    FakeAccount,
    FakePosition,
    Key,
    now_iso,
)
from tests.fakes.alpaca_trading_state import FakeOrder as FakeOrder

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ACCOUNT = web.RequestKey("account", FakeAccount)  # the key pair's account, set by the middleware


@dataclass
class FakeAlpacaTrading(BrokerState, OptionChainEndpoints):
    keys: set[Key] = field(default_factory=lambda: {DEFAULT_KEY})
    fill: str = "immediate"  # "immediate": filled right after acceptance; "hold": stays new; "reject"
    prices: dict[str, float] = field(default_factory=dict)  # fill price and mark per symbol (default 100)
    post_delay_s: float = 0.0  # answer POSTs this late (the order is stored first)
    on_order: Callable[[FakeOrder], None] | None = None  # after storing, before answering
    scripted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # next POST answers
    assets: set[str] = field(default_factory=lambda: set(DEFAULT_ASSETS))  # tradable, besides prices/quotes

    def __post_init__(self) -> None:
        self._init_state()
        self.post_attempts: list[str] = []  # client_order_id of every POST, refused ones included
        self.lookups: list[str] = []
        self.request_log: list[tuple[float, str, str, int]] = []  # (monotonic, method, path, status)
        self._throttle: list[tuple[str, str | None]] = []  # (path prefix, Retry-After) of the next 429s
        self._ws: dict[web.WebSocketResponse, tuple[Key, asyncio.Queue[bytes]]] = {}
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
        self.add_option_routes(app)
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
            return self._error(refused.status, refused.code, refused.message, **refused.extra)
        order = self._store(acct, body)
        if self.on_order is not None:
            self.on_order(order)
        if self.post_delay_s:
            await asyncio.sleep(self.post_delay_s)
        answer = order.json()
        asyncio.get_running_loop().call_later(0.05, self._routed, order)
        return web.json_response(answer)

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

    async def _account(self, request: web.Request) -> web.Response:
        return web.json_response(self._account_json(request[ACCOUNT]))

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

    def _emit(self, order: FakeOrder, event: str, **extra: Any) -> None:
        msg = {"stream": "trade_updates",
               "data": {"event": event, "order": order.json(), "timestamp": now_iso(), **extra}}
        payload = json.dumps(msg).encode()
        for key, queue in self._ws.values():
            if self.accounts.get(key) is order.account:
                queue.put_nowait(payload)

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
