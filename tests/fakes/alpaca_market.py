"""Fakes of Alpaca market data that speak its real wire protocol, for the bars connector tests.

FakeAlpacaStream: the v2 websocket (`/v2/{feed}`): `[{"T":"success","msg":"connected"}]`, an
auth action answered `authenticated` or error 402, error 406 when the connection limit is hit,
a `subscription` answer listing every channel, bars "b" and updated bars "u" whose "t" is a
msgpack Timestamp (RFC 3339 text in JSON mode), abrupt drops, and stalls (a session kept open,
pings answered, that is sent nothing more). FakeAlpacaRest: GET
/v2/stocks/bars in the JSON shape alpaca-py parses, paged with next_page_token, and HTTP 500 on
demand.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgpack
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
            "corrections", "cancelErrors")


def rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bar_msg(symbol: str, ts: datetime, o: float = 100.0, h: float = 101.0, low: float = 99.5,
            c: float = 100.5, v: Any = 1200, *, n: int | None = 12, vw: float | None = 100.25,
            kind: str = "b") -> dict[str, Any]:
    """A stream bar as Alpaca sends it (before msgpack); "t" is a msgpack Timestamp."""
    msg: dict[str, Any] = {"T": kind, "S": symbol, "o": o, "h": h, "l": low, "c": c, "v": v,
                           "t": msgpack.Timestamp.from_datetime(ts)}
    if n is not None:
        msg["n"] = n
    if vw is not None:
        msg["vw"] = vw
    return msg


def rest_bar(ts: datetime, o: float = 100.0, h: float = 101.0, low: float = 99.5, c: float = 100.5,
             v: Any = 1200, n: int = 12, vw: float = 100.25) -> dict[str, Any]:
    """A REST bar as Alpaca's JSON has it."""
    return {"t": rfc3339(ts), "o": o, "h": h, "l": low, "c": c, "v": v, "n": n, "vw": vw}


def _jsonable(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in msgs:
        m = dict(m)
        if isinstance(m.get("t"), msgpack.Timestamp):
            m["t"] = rfc3339(m["t"].to_datetime())
        out.append(m)
    return out


@dataclass(frozen=True)
class AuthAttempt:
    key: str
    ok: bool
    code: int | None


class FakeAlpacaStream:
    def __init__(self, keys: Iterable[tuple[str, str]], *, feed: str = "iex") -> None:
        self.valid_keys = set(keys)
        self.feed = feed
        self.max_connections = 1
        self.reject_with_406 = 0  # answer the next N authentications with 406
        self.down = False  # refuse websocket upgrades with HTTP 503
        self.connections_opened = 0
        self.auth_attempts: list[AuthAttempt] = []
        self.subscriptions: list[dict[str, Any]] = []
        self.content_types: list[str | None] = []
        self._authenticated: set[ServerConnection] = set()
        self._subscribed: set[ServerConnection] = set()
        self._stalled: set[ServerConnection] = set()
        self._server: Server | None = None
        self.url = ""

    async def start(self) -> str:
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._gate)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v2/{self.feed}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeAlpacaStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def auth_failures(self) -> int:
        return sum(1 for a in self.auth_attempts if not a.ok)

    @property
    def subscribed_clients(self) -> int:
        return len(self._subscribed)

    @property
    def stalled_clients(self) -> int:
        return len(self._stalled)

    def _gate(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != f"/v2/{self.feed}":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.down:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "down\n")
        return None

    @staticmethod
    def _pack(ws: ServerConnection, msgs: list[dict[str, Any]]) -> bytes | str:
        if ws.request is not None and ws.request.headers.get("Content-Type") == "application/msgpack":
            return bytes(msgpack.packb(msgs))
        return json.dumps(_jsonable(msgs))

    @staticmethod
    def _unpack(data: bytes | str) -> Any:
        return json.loads(data) if isinstance(data, str) else msgpack.unpackb(data)

    async def _error(self, ws: ServerConnection, code: int, msg: str) -> None:
        await ws.send(self._pack(ws, [{"T": "error", "code": code, "msg": msg}]))
        await ws.close()

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections_opened += 1
        assert ws.request is not None
        self.content_types.append(ws.request.headers.get("Content-Type"))
        try:
            await ws.send(self._pack(ws, [{"T": "success", "msg": "connected"}]))
            auth = self._unpack(await asyncio.wait_for(ws.recv(), 10))
            if not isinstance(auth, dict) or auth.get("action") != "auth":
                return await self._error(ws, 401, "not authenticated")
            key, secret = str(auth.get("key")), str(auth.get("secret"))
            if (key, secret) not in self.valid_keys:
                self.auth_attempts.append(AuthAttempt(key, False, 402))
                return await self._error(ws, 402, "auth failed")
            if self.reject_with_406 > 0 or len(self._authenticated) >= self.max_connections:
                self.reject_with_406 = max(0, self.reject_with_406 - 1)
                self.auth_attempts.append(AuthAttempt(key, False, 406))
                return await self._error(ws, 406, "connection limit exceeded")
            self.auth_attempts.append(AuthAttempt(key, True, None))
            self._authenticated.add(ws)
            await ws.send(self._pack(ws, [{"T": "success", "msg": "authenticated"}]))
            async for data in ws:
                msg = self._unpack(data)
                if isinstance(msg, dict) and msg.get("action") == "subscribe":
                    self.subscriptions.append(msg)
                    answer = {"T": "subscription", **{ch: list(msg.get(ch, [])) for ch in CHANNELS}}
                    await ws.send(self._pack(ws, [answer]))
                    self._subscribed.add(ws)
        except ConnectionClosed:
            pass
        finally:
            self._authenticated.discard(ws)
            self._subscribed.discard(ws)
            self._stalled.discard(ws)

    async def send(self, msgs: list[dict[str, Any]]) -> None:
        """One frame with these messages to every subscribed client that is not stalled."""
        for ws in list(self._subscribed - self._stalled):
            try:
                await ws.send(self._pack(ws, msgs))
            except ConnectionClosed:
                pass

    async def send_raw(self, data: bytes) -> None:
        for ws in list(self._subscribed):
            await ws.send(data)

    def stall(self) -> None:
        """Stall every current session: it stays open and answers pings, but nothing more is sent
        to it (a half-dead feed). Sessions opened afterwards are served normally."""
        self._stalled |= self._subscribed

    async def drop(self) -> None:
        """Cut every connection without a closing handshake, as a network failure would."""
        for ws in list(self._authenticated):
            ws.transport.abort()
        self._authenticated.clear()
        self._subscribed.clear()
        self._stalled.clear()


class FakeAlpacaRest:
    """GET /v2/stocks/bars: `{"bars": {symbol: [bar, ...]}, "next_page_token": ...}`."""

    def __init__(self, keys: Iterable[tuple[str, str]], *, page_size: int = 500) -> None:
        self.valid_keys = set(keys)
        self.page_size = page_size
        self.bars: dict[str, dict[datetime, dict[str, Any]]] = {}
        self.requests: list[dict[str, str]] = []
        self.unauthorized = 0
        self.fail_next = 0  # answer the next N authorized requests with HTTP 500
        self.failed = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def add(self, symbol: str, ts: datetime, **values: Any) -> None:
        self.bars.setdefault(symbol, {})[ts] = rest_bar(ts, **values)

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body = fake._answer(self.path, self.headers)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeAlpacaRest:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _answer(self, path: str, headers: Any) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        if parts.path != "/v2/stocks/bars":
            return 404, {"code": 40410000, "message": "endpoint not found"}
        if (headers.get("APCA-API-KEY-ID"), headers.get("APCA-API-SECRET-KEY")) not in self.valid_keys:
            self.unauthorized += 1
            return 401, {"code": 40110000, "message": "request is not authorized"}
        if self.fail_next > 0:
            self.fail_next -= 1
            self.failed += 1
            return 500, {"code": 50010000, "message": "internal server error occurred"}
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append(q)
        if q.get("timeframe") != "1Min":
            return 422, {"code": 42210000, "message": f"unsupported timeframe {q.get('timeframe')}"}
        start = datetime.fromisoformat(q["start"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(q["end"].replace("Z", "+00:00"))
        rows = [
            (sym, ts, bar)
            for sym in sorted(q["symbols"].split(","))
            for ts, bar in sorted(self.bars.get(sym, {}).items())
            if start <= ts <= end
        ]
        offset = int(base64.b64decode(q["page_token"])) if q.get("page_token") else 0
        limit = min(int(q.get("limit") or 10_000), self.page_size)
        page = rows[offset : offset + limit]
        out: dict[str, list[dict[str, Any]]] = {}
        for sym, _, bar in page:
            out.setdefault(sym, []).append(bar)
        more = offset + limit < len(rows)
        token = base64.b64encode(str(offset + limit).encode()).decode() if more else None
        return 200, {"bars": out, "next_page_token": token}
