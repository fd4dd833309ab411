"""`ops-pipeline dashboard`: the trader's read-only page, live from the topics over server-sent
events. A tail thread decodes records into the view (pipeline/dashboard_view.py) on the event loop;
a status thread refreshes what `ops-pipeline status` computes; aiohttp serves the page and deltas.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any

import typer
from aiohttp import web
from confluent_kafka import Consumer, KafkaError, TopicPartition
from pydantic import SecretStr

from opsinfra.endpoints import Endpoints, resolve
from opsinfra.errors import ConfigError, DecodeError, PipelineError
from opsinfra.kafka_config import consumer_config
from opsinfra.kafka_io import end_offsets
from opsinfra.settings import Settings
from pipeline.dashboard_view import DashboardView
from schemas.codec import Codec, decode, make_codec
from schemas.topics import (
    ALERTS,
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
    CLOCK,
    EQUITY,
    EXECUTIONS,
    POSITIONS,
    TopicSpec,
)
from trading.accounts import accounts_from_settings
from trading.calendar import trading_day

log = logging.getLogger(__name__)

# Where the tail starts: about this many records before each partition's end (a day of one-minute
# equity points for several accounts; the decisions, positions and alerts of a busy day).
TAILS: dict[TopicSpec, int] = {EQUITY: 5000, BROKER_ACCOUNTS: 200, BROKER_POSITIONS: 1000, POSITIONS: 1000,
                               EXECUTIONS: 3000, ALERTS: 500, CLOCK: 200}
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
COOKIE = "ops_dashboard"
FLUSH_S = 0.25  # records are folded in as they come; the page gets at most this many deltas a second


@dataclass(frozen=True)
class DashboardConfig:
    host: str = "127.0.0.1"  # loopback unless asked: the page shows money and positions
    port: int = 8050
    token: SecretStr | None = None  # required of every request when set
    status_every_s: float = 30.0


def _asset(name: str) -> bytes:
    return (resources.files("pipeline") / "dashboard_assets" / name).read_bytes()


class _Hub:
    """The view and the open event streams; touched only on the event loop."""

    def __init__(self, view: DashboardView) -> None:
        self.view = view
        self.dirty: set[str] = set()
        self.clients: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def record(self, rec: Any) -> None:
        self.dirty.update(self.view.apply(rec))

    def status(self, report: dict[str, Any]) -> None:
        self.dirty.update(self.view.set_status(report))

    def flush(self) -> None:
        self.dirty.update(self.view.roll(trading_day(datetime.now(UTC))))
        if not self.dirty:
            return
        delta = {name: self.view.section(name) for name in sorted(self.dirty)}
        self.dirty.clear()
        for q in list(self.clients):
            if q.full():  # a page that stopped reading: end its stream; EventSource reconnects
                self.clients.discard(q)
                q.get_nowait()
                q.put_nowait(None)
            else:
                q.put_nowait(delta)


def _tail(settings: Settings, bootstrap: str, codec: Codec, deliver: Callable[[Any], None],
          stop: threading.Event, ready: threading.Event) -> None:
    """Reads the dashboard's topics from about a day back, then live, until `stop`."""
    specs = {settings.topic(s.name): s for s in TAILS}
    ends = end_offsets(settings, bootstrap, list(specs))
    conf = consumer_config(settings, bootstrap, group_id=f"ops-pipeline-dashboard-{time.monotonic_ns()}",
                           **{"fetch.wait.max.ms": 100})
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(t, p, max(0, end - TAILS[specs[t]])) for (t, p), end in ends.items()])
        ready.set()
        while not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("dashboard tail: %s", err)
                continue
            topic = msg.topic() or ""
            headers: Any = msg.headers() or []
            try:
                rec = decode(codec, specs[topic].record, msg.value(), headers, topic=topic,
                             partition=msg.partition() or 0, offset=msg.offset() or 0)
            except DecodeError:
                continue  # the topic's consumers dead-letter it; the page has nothing to show
            deliver(rec)
    finally:
        ready.set()
        consumer.close()


def _status_report(settings: Settings, endpoints: Endpoints) -> dict[str, Any]:
    from pipeline.status import collect  # psycopg and the REST check: only where status runs

    try:
        return collect(settings, endpoints).to_json()
    except PipelineError as exc:
        return {"error": str(exc), "now": datetime.now(UTC).isoformat()}
    except Exception as exc:  # whatever status raises, the page stays up and says so
        log.warning("dashboard status: %s", type(exc).__name__)
        return {"error": f"status failed: {type(exc).__name__}", "now": datetime.now(UTC).isoformat()}


class Dashboard:
    """The server: `await start()` returns the bound port, `await stop()` ends everything."""

    def __init__(self, settings: Settings, endpoints: Endpoints, config: DashboardConfig, *,
                 status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.settings, self.endpoints, self.config = settings, endpoints, config
        self.status = status or (lambda: _status_report(settings, endpoints))
        names = [a.name for a in accounts_from_settings(settings)]
        self.hub = _Hub(DashboardView(names, trading_day(datetime.now(UTC))))
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._index)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/assets/{name}", self._static)
        return app

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        if not end_offsets(self.settings, self.endpoints.kafka_bootstrap_servers,
                           [self.settings.topic(s.name) for s in TAILS]):
            raise ConfigError("none of the dashboard's topics exist: run `ops-pipeline topics create`")
        codec = make_codec(self.endpoints.schema_registry_url)
        ready = threading.Event()

        def deliver(rec: Any) -> None:
            loop.call_soon_threadsafe(self.hub.record, rec)

        def statuses() -> None:
            while not self.stop_event.is_set():
                report = self.status()
                loop.call_soon_threadsafe(self.hub.status, report)
                self.stop_event.wait(self.config.status_every_s)

        self.threads = [
            threading.Thread(target=_tail, name="dashboard-tail", daemon=True,
                             args=(self.settings, self.endpoints.kafka_bootstrap_servers, codec, deliver,
                                   self.stop_event, ready)),
            threading.Thread(target=statuses, name="dashboard-status", daemon=True),
        ]
        for t in self.threads:
            t.start()
        await asyncio.to_thread(ready.wait, 60)
        self.flusher = asyncio.create_task(self._flush_forever())
        self.runner = web.AppRunner(self.app(), access_log=None)  # the query may carry the token
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port)
        await site.start()
        port: int = self.runner.addresses[0][1]
        log.info("dashboard on http://%s:%d/", self.config.host, port)
        if self.config.host not in ("127.0.0.1", "localhost", "::1") and self.config.token is None:
            log.warning("dashboard on %s without DASHBOARD_TOKEN: whoever reaches it sees the page",
                        self.config.host)
        return port

    async def stop(self) -> None:
        self.stop_event.set()
        for q in list(self.hub.clients):
            q.put_nowait(None)
        self.flusher.cancel()
        if self.runner is not None:
            await self.runner.cleanup()
        for t in self.threads:
            await asyncio.to_thread(t.join, 10)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.hub.flush()

    # -- HTTP ----------------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self.config.token
        if token is not None:
            given = (request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                     or request.query.get("token") or request.cookies.get(COOKIE) or "")
            if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
                raise web.HTTPUnauthorized(text="a dashboard token is required (DASHBOARD_TOKEN)")
        resp: web.StreamResponse = await handler(request)
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        return resp

    async def _index(self, request: web.Request) -> web.StreamResponse:
        if "token" in request.query and self.config.token is not None:
            # keep the token out of the address bar and history: a cookie for this origin instead
            found = web.HTTPFound("/")
            found.set_cookie(COOKIE, self.config.token.get_secret_value(), httponly=True, samesite="Strict")
            raise found
        return web.Response(body=_asset("index.html"), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=ASSETS[name])

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.hub.view.snapshot())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await resp.prepare(request)
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=100)
        self.hub.clients.add(q)
        try:
            await resp.write(_sse("snapshot", self.hub.view.snapshot()))
            while True:
                try:
                    delta = await asyncio.wait_for(q.get(), 15)
                except TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                if delta is None:
                    break
                await resp.write(_sse("delta", delta))
        except ConnectionResetError:
            pass
        finally:
            self.hub.clients.discard(q)
        return resp


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class DashboardThread:
    """The dashboard on its own event loop in a daemon thread (for `run` and the tests)."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dashboard", daemon=True)

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.dashboard.start(), self.loop).result(90)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.dashboard.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def alongside(settings: Settings, endpoints: Endpoints, environ: Mapping[str, str]) -> Iterator[int | None]:
    """The dashboard beside `run` or `up` when DASHBOARD_PORT is set (with DASHBOARD_HOST and
    DASHBOARD_TOKEN): its bound port, or None. It is optional: when it cannot start, the stages
    still run, with a warning saying why."""
    if not environ.get("DASHBOARD_PORT"):
        yield None
        return
    server: DashboardThread | None = None
    try:
        token = environ.get("DASHBOARD_TOKEN")
        config = DashboardConfig(environ.get("DASHBOARD_HOST") or "127.0.0.1", int(environ["DASHBOARD_PORT"]),
                                 SecretStr(token) if token else None)
        server = DashboardThread(Dashboard(settings, endpoints, config))
        port: int | None = server.start()
    except (PipelineError, ValueError, OSError) as exc:
        log.warning("dashboard not started: %s", exc)
        port = None
    try:
        yield port
    finally:
        if port is not None and server is not None:
            server.stop()


def dashboard_command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(envvar="DASHBOARD_HOST", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="DASHBOARD_PORT", help="Port to bind.")] = 8050,
    token: Annotated[str | None, typer.Option(envvar="DASHBOARD_TOKEN", show_default=False,
                                              help="Required of every request when set.")] = None,
    status_every: Annotated[float, typer.Option(help="Seconds between status refreshes.")] = 30.0,
) -> None:
    """The trader's read-only page: equity, positions, decisions, skips, stages and alerts, live."""
    settings = ctx.obj
    assert isinstance(settings, Settings)
    config = DashboardConfig(host, port, SecretStr(token) if token else None, status_every)
    dashboard = Dashboard(settings, resolve(settings), config)

    async def serve() -> None:
        bound = await dashboard.start()
        print(f"dashboard on http://{host}:{bound}/ (Ctrl-C stops it)", flush=True)  # noqa: T201
        try:
            await asyncio.Event().wait()
        finally:
            await dashboard.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard_command)
