"""A fake Alpaca trading API speaking the shapes alpaca-py parses, for the dispatch tests.

REST (`/v2`): POST /orders with client_order_id uniqueness (a reused id is refused with 422,
code 40010001, "client_order_id must be unique"), GET /orders:by_client_order_id (404, code
40410000, when unknown), GET /orders/{id}, GET /account; APCA-API-KEY-ID/SECRET headers checked
(401, code 40110000). Websocket `/stream`: authenticate, listen to trade_updates, then "new" and
"fill" events as binary JSON frames, as Alpaca sends them. Faults: a hook run after an order is
stored and before it is answered (a test kills the client there), a delay before answering
(client timeouts), scripted error answers. Runs on its own thread and event loop.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeOrder:
    data: dict[str, Any]

    @property
    def client_order_id(self) -> str:
        return str(self.data["client_order_id"])


@dataclass
class FakeAlpacaTrading:
    keys: set[tuple[str, str]] = field(default_factory=lambda: {("key", "secret")})
    fill: str = "immediate"  # "immediate": filled right after acceptance; "hold": stays new; "reject"
    prices: dict[str, float] = field(default_factory=dict)  # fill price per symbol (default 100)
    post_delay_s: float = 0.0  # answer POSTs this late (the order is stored first)
    on_order: Callable[[FakeOrder], None] | None = None  # after storing, before answering
    scripted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # next POST answers

    def __post_init__(self) -> None:
        self.orders: dict[str, FakeOrder] = {}  # by id
        self.by_client_id: dict[str, FakeOrder] = {}
        self.post_attempts: list[str] = []  # client_order_id of every POST, refused ones included
        self.lookups: list[str] = []
        self._ws: set[web.WebSocketResponse] = set()
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
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/orders", self._post_order)
        app.router.add_get("/v2/orders:by_client_order_id", self._by_client_id)
        app.router.add_get("/v2/orders/{order_id}", self._by_id)
        app.router.add_get("/v2/account", self._account)
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

    # -- helpers --------------------------------------------------------------------------------

    def orders_for(self, client_order_id: str) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.client_order_id == client_order_id]

    def _authorized(self, request: web.Request) -> bool:
        key = request.headers.get("APCA-API-KEY-ID", "")
        secret = request.headers.get("APCA-API-SECRET-KEY", "")
        return (key, secret) in self.keys

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message}, status=status)

    def _new_order(self, body: dict[str, Any]) -> FakeOrder:
        now = _now()
        qty = body.get("qty")
        data = {
            "id": str(uuid.uuid4()),
            "client_order_id": body["client_order_id"],
            "created_at": now,
            "updated_at": now,
            "submitted_at": now,
            "filled_at": None,
            "asset_id": str(uuid.uuid5(uuid.NAMESPACE_DNS, body["symbol"])),
            "symbol": body["symbol"],
            "asset_class": "us_equity",
            "notional": None,
            "qty": None if qty is None else str(qty),
            "filled_qty": "0",
            "filled_avg_price": None,
            "order_class": "simple",
            "order_type": body.get("type", "market"),
            "type": body.get("type", "market"),
            "side": body["side"],
            "time_in_force": body.get("time_in_force", "day"),
            "limit_price": None,
            "stop_price": None,
            "status": "accepted",
            "extended_hours": False,
        }
        return FakeOrder(data)

    def _fill(self, order: FakeOrder) -> None:
        d = order.data
        d["status"] = "filled"
        d["filled_qty"] = d["qty"]
        d["filled_avg_price"] = str(self.prices.get(d["symbol"], 100.0))
        d["filled_at"] = d["updated_at"] = _now()

    async def _broadcast(self, event: str, order: FakeOrder) -> None:
        d = order.data
        msg: dict[str, Any] = {"stream": "trade_updates", "data": {
            "event": event, "order": dict(d), "timestamp": _now(),
        }}
        if event == "fill":
            msg["data"].update({"execution_id": str(uuid.uuid4()), "price": d["filled_avg_price"],
                                "qty": d["filled_qty"], "position_qty": d["filled_qty"]})
        payload = json.dumps(msg).encode()
        for ws in list(self._ws):
            try:
                await ws.send_bytes(payload)
            except ConnectionError:
                self._ws.discard(ws)

    # -- REST -----------------------------------------------------------------------------------

    async def _post_order(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 40110000, "request is not authorized")
        body = await request.json()
        coid = body.get("client_order_id") or str(uuid.uuid4())
        body["client_order_id"] = coid
        self.post_attempts.append(coid)
        if self.scripted:
            status, answer = self.scripted.pop(0)
            if status >= 500 and answer.get("store", False):
                self._store(body)
            return web.json_response({k: v for k, v in answer.items() if k != "store"}, status=status)
        if coid in self.by_client_id:
            return self._error(422, 40010001, "client_order_id must be unique")
        if self.fill == "reject":
            return self._error(403, 40310000, "insufficient buying power")
        order = self._store(body)
        if self.on_order is not None:
            self.on_order(order)
        if self.post_delay_s:
            await asyncio.sleep(self.post_delay_s)
        answer = dict(order.data)
        if self.fill == "immediate":
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, lambda: asyncio.ensure_future(self._fill_later(order)))
        return web.json_response(answer)

    def _store(self, body: dict[str, Any]) -> FakeOrder:
        order = self._new_order(body)
        self.orders[order.data["id"]] = order
        self.by_client_id[order.client_order_id] = order
        return order

    async def _fill_later(self, order: FakeOrder) -> None:
        order.data["status"] = "new"
        await self._broadcast("new", order)
        self._fill(order)
        await self._broadcast("fill", order)

    async def _by_client_id(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 40110000, "request is not authorized")
        coid = request.query.get("client_order_id", "")
        self.lookups.append(coid)
        order = self.by_client_id.get(coid)
        if order is None:
            return self._error(404, 40410000, f"order not found for {coid}")
        return web.json_response(order.data)

    async def _by_id(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["order_id"])
        if order is None:
            return self._error(404, 40410000, "order not found")
        return web.json_response(order.data)

    async def _account(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 40110000, "request is not authorized")
        return web.json_response({
            "id": str(uuid.uuid4()), "account_number": "PA000000", "status": "ACTIVE", "currency": "USD",
            "buying_power": "200000", "cash": "100000", "portfolio_value": "100000", "equity": "100000",
            "shorting_enabled": True, "trading_blocked": False,
        })

    # -- the trade_updates websocket ------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        authed = False
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                break
            data = json.loads(msg.data)
            action = data.get("action")
            if action in ("authenticate", "auth"):
                d = data.get("data", {})
                authed = (d.get("key_id"), d.get("secret_key")) in self.keys
                status = "authorized" if authed else "unauthorized"
                reply = {"stream": "authorization", "data": {"status": status, "action": "authenticate"}}
                await ws.send_bytes(json.dumps(reply).encode())
                if not authed:
                    break
            elif action == "listen" and authed:
                streams = data.get("data", {}).get("streams", [])
                reply = {"stream": "listening", "data": {"streams": streams}}
                await ws.send_bytes(json.dumps(reply).encode())
                if "trade_updates" in streams:
                    self._ws.add(ws)
        self._ws.discard(ws)
        return ws
