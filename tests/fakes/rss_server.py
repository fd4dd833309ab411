"""A local HTTP server for feed tests: static documents with ETag / Last-Modified (so 304s),
error statuses, stalls, slow drips, huge and gzip-bomb bodies. Loopback only, bounded, and it
stops by itself when the test closes it.
"""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    """What one path answers. `body` is sent as is; the stream_* fields generate bodies."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: str | None = None
    last_modified: str | None = None
    stall_s: float = 0.0  # wait this long before answering (cut short by close())
    stream_bytes: int = 0  # send this many filler bytes after `body`, in chunks
    declare_length: bool = True  # send Content-Length (False: the body ends at close)
    drip_s: float = 0.0  # pause between chunks
    gzip_bomb_bytes: int = 0  # a gzip body that inflates to this many bytes


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        owner = self.server.owner
        path = self.path
        with owner.lock:
            owner.hits[path] += 1
            owner.requests.append((path, dict(self.headers.items())))
            route = owner.routes.get(path)
        if route is None:
            self.send_error(404)
            return
        if route.stall_s and owner.closing.wait(route.stall_s):
            return
        if route.etag and self.headers.get("If-None-Match") == route.etag:
            self._not_modified(route)
            return
        if route.last_modified and self.headers.get("If-Modified-Since") == route.last_modified:
            self._not_modified(route)
            return
        try:
            self._send(route)
        except (BrokenPipeError, ConnectionResetError):
            with owner.lock:
                owner.aborted[path] += 1

    def _not_modified(self, route: Route) -> None:
        self.send_response(304)
        if route.etag:
            self.send_header("ETag", route.etag)
        self.end_headers()

    def _send(self, route: Route) -> None:
        body = route.body
        if route.gzip_bomb_bytes:
            body = gzip.compress(b"\0" * route.gzip_bomb_bytes, compresslevel=9)
        total = len(body) + route.stream_bytes
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        if route.gzip_bomb_bytes:
            self.send_header("Content-Encoding", "gzip")
        if route.etag:
            self.send_header("ETag", route.etag)
        if route.last_modified:
            self.send_header("Last-Modified", route.last_modified)
        if route.declare_length:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        for chunk in self._chunks(body, route):
            if self.server.owner.closing.is_set():
                return
            self.wfile.write(chunk)
            if route.drip_s and self.server.owner.closing.wait(route.drip_s):
                return

    @staticmethod
    def _chunks(body: bytes, route: Route) -> Iterator[bytes]:
        size = 1 if route.drip_s else 64 * 1024
        for start in range(0, len(body), size):
            yield body[start : start + size]
        filler = b" " * size
        left = route.stream_bytes
        while left > 0:
            yield filler[: min(size, left)]
            left -= size


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FeedServer


class FeedServer:
    """`with FeedServer() as srv: srv.add("/a.xml", Route(body)); srv.url("/a.xml")`."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.aborted: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def add(self, path: str, route: Route) -> str:
        with self.lock:
            self.routes[path] = route
        return self.url(path)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def headers_of(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for p, h in self.requests if p == path]

    def start(self) -> FeedServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
