"""The bars connector: Alpaca's websocket minute bars and updated bars -> market.bars.1m, spoken with
`websockets` from our own loop (alpaca-py's StockDataStream hides the 406/402 codes and owns the
retry loop: see the README); REST is in bars_rest, the pure parts in alpaca_protocol, intake, gaps.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog
from confluent_kafka import KafkaException
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from connectors import alpaca_protocol as proto
from connectors.alpaca_rest import AlpacaBarHistory, BarHistory
from connectors.bars_config import BarsConfig, ConnectorStats
from connectors.bars_rest import BarsRest
from connectors.credentials import Credentials, CredentialSource, CredentialsUnavailable
from connectors.gaps import GapDetector, stalled
from connectors.intake import ORIGIN_STREAM, STAGE, BarIntake, BarSink, ProducerSink
from connectors.revisions import RevisionBook
from connectors.topic_tail import bars_tail
from opsinfra.backoff import backoff_delay, connection_limit_delay
from opsinfra.endpoints import Endpoints
from opsinfra.errors import ConfigError, PipelineError
from opsinfra.kafka_io import DeliveryError
from opsinfra.metrics import Metrics
from opsinfra.metrics import metrics as process_metrics
from opsinfra.settings import Settings
from schemas.codec import make_codec
from schemas.records import Bar
from schemas.topic_io import RecordProducer
from schemas.topics import BARS
from trading.calendar import TradingCalendar
from trading.clock import WaitingClock, WallClock

log = structlog.get_logger(__name__)
_WS_LOG = logging.getLogger("connectors.alpaca_bars.websocket")


class StreamStalled(PipelineError):
    """No market data for the stall timeout while the market was open."""


class BarsConnector:
    def __init__(
        self,
        config: BarsConfig,
        *,
        credentials: CredentialSource,
        sink: BarSink,
        calendar: TradingCalendar,
        clock: WaitingClock | None = None,
        history_factory: Callable[[Credentials], BarHistory] | None = None,
        tail: Callable[[], Iterable[Bar]] | None = None,
        rand: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.sink = sink
        self.calendar = calendar
        self.clock = clock or WallClock()
        self._tail = tail
        self._rand = rand
        self.detector = GapDetector(
            calendar,
            config.symbols,
            lookback=timedelta(seconds=config.gap_lookback_s),
            settle=timedelta(seconds=config.gap_settle_s),
        )
        self.intake = BarIntake(
            sink,
            symbols=config.symbols,
            book=RevisionBook(config.revision_memory),
            detector=self.detector,
            max_skew=timedelta(seconds=config.max_skew_s),
        )
        self.stats = ConnectorStats()
        self.metrics = metrics if metrics is not None else process_metrics()
        self.rest = BarsRest(
            config,
            intake=self.intake,
            detector=self.detector,
            stats=self.stats,
            clock=self.clock,
            history_factory=history_factory
            or (lambda c: AlpacaBarHistory(c, feed=config.feed, url=config.data_url)),
            reload_credentials=self._load_credentials,
            reseed=self._seed,
            flush=self._flush,
            error=self._error,
            backoff=self._backoff,
            sleep=self._sleep,
        )
        self._creds: Credentials | None = None
        self._last_data = self.clock.now()
        self._got_data = False
        self._before_drop: dict[str, tuple[datetime, ...]] = {}  # for REST to recheck
        self._tasks: set[asyncio.Task[None]] = set()
        # websockets logs every frame at DEBUG, the auth frame included: never below INFO
        _WS_LOG.setLevel(logging.INFO)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Stream until `stopping` is set; raises only ConfigError."""
        self._load_credentials("start")
        if not await self._seed_until_read(stopping):
            return
        timer = asyncio.create_task(self.rest.gap_timer(stopping), name="bars-gap-timer")
        flusher = asyncio.create_task(self._flush_loop(stopping), name="bars-flush")
        try:
            await self._stream(stopping)
        finally:
            pending = [timer, flusher, *self._tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.to_thread(self._flush)

    async def _seed_until_read(self, stopping: asyncio.Event) -> bool:
        """Read the topic tail before streaming (revisions and seen minutes depend on it); a
        broker that is not there yet is waited for, a missing topic is a configuration error."""
        attempt = 0
        while not stopping.is_set():
            try:
                await self._seed()
                return True
            except ConfigError:
                raise
            except (PipelineError, KafkaException, OSError) as exc:
                attempt += 1
                log.warning("bars tail unreadable; retrying", error=f"{type(exc).__name__}: {exc}")
                await self._sleep(self._backoff(attempt), stopping)
        return False

    async def _seed(self) -> None:
        if self._tail is None:
            return
        bars = await asyncio.to_thread(lambda: list(self._tail() if self._tail else ()))
        self.intake.book.seed(bars)
        for bar in bars:
            self.detector.observe(bar.symbol, bar.ts)
        log.info("bars tail read", records=len(bars))

    def _load_credentials(self, reason: str) -> None:
        try:
            creds = self.credentials.load(reason=reason)
        except CredentialsUnavailable as exc:
            if self._creds is None:
                raise
            log.warning("alpaca credentials unavailable; keeping the previous ones", error=str(exc))
            return
        self.stats.credential_loads += 1
        self._creds = creds
        self.rest.use(creds)

    # -- the websocket -----------------------------------------------------------------------

    async def _stream(self, stopping: asyncio.Event) -> None:
        attempt = 0  # consecutive failed sessions; a session that delivered data resets it
        while not stopping.is_set():
            self._got_data = False
            self.stats.attempts += 1
            failure: BaseException | None = None
            try:
                await self._session(stopping)
            except InvalidURI as exc:
                raise ConfigError(f"ALPACA_STREAM_URL is not a websocket URL: {exc}") from None
            except (proto.StreamError, OSError, TimeoutError, WebSocketException,
                    proto.ProtocolError, proto.FrameError, StreamStalled) as exc:
                failure = exc
            # taken at the drop, before the next session's bars: what REST rechecks after it
            self._before_drop = self.intake.book.recent(self.config.symbols, self.config.recheck_minutes)
            if stopping.is_set():
                return
            attempt = 1 if self._got_data else attempt + 1
            delay = self._delay_after(failure, attempt)
            self._error("stream_closed" if failure is None else type(failure).__name__)
            self.metrics.reconnects.labels(STAGE).inc()
            log.info("alpaca stream reconnecting", in_seconds=round(delay, 3), attempt=attempt)
            await self._sleep(delay, stopping)

    def _delay_after(self, failure: BaseException | None, attempt: int) -> float:
        if isinstance(failure, proto.StreamError):
            return self._after_stream_error(failure, attempt)
        if isinstance(failure, InvalidStatus):
            status = failure.response.status_code
            log.warning("alpaca stream refused the connection", http_status=status)
            if status == 429:  # too many connections, answered at the HTTP level
                return self._connection_limit_delay()
        elif failure is not None:
            log.warning("alpaca stream lost", error=f"{type(failure).__name__}: {failure}")
        else:  # the server ended the session politely
            log.warning("alpaca stream closed by the server")
        return self._backoff(attempt)

    def _after_stream_error(self, exc: proto.StreamError, attempt: int) -> float:
        action = proto.action_for(exc.code)
        log.warning("alpaca stream error", code=exc.code, action=action.value)
        if action is proto.Action.FATAL:
            raise ConfigError(f"alpaca stream: {exc} (check ALPACA_FEED and PIPELINE_SYMBOLS)")
        if action is proto.Action.WAIT_CONNECTION_LIMIT:
            return self._connection_limit_delay()
        if action is proto.Action.REAUTH:
            self.stats.auth_failures += 1
            self._load_credentials("authentication failed")
        return self._backoff(attempt)

    def _connection_limit_delay(self) -> float:
        self.stats.connection_limits += 1
        return connection_limit_delay(
            wait=self.config.connection_limit_wait_s,
            jitter=self.config.connection_limit_jitter_s,
            rand=self._rand,
        )

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(
            attempt, floor=self.config.backoff_floor_s, cap=self.config.backoff_cap_s, rand=self._rand
        )

    async def _session(self, stopping: asyncio.Event) -> None:
        assert self._creds is not None
        async with connect(
            self.config.stream_url,
            additional_headers={"Content-Type": proto.CONTENT_TYPE},
            open_timeout=self.config.handshake_timeout_s,
            ping_interval=10,
            ping_timeout=30,
            logger=_WS_LOG,
        ) as ws:
            proto.expect_success(await self._recv(ws), "connected")
            await ws.send(proto.auth_message(self._creds))
            proto.expect_success(await self._recv(ws), "authenticated")
            await ws.send(proto.subscribe_message(self.config.symbols))
            subscribed = False
            while not subscribed:  # bars may come with, or right after, the acknowledgement
                msgs = await self._recv(ws)
                self._handle(msgs)
                subscribed = any(m.get("T") == "subscription" for m in msgs)
            self.stats.connections += 1
            self._last_data = self.clock.now()
            log.info("alpaca stream subscribed", url=self.config.stream_url,
                     symbols=len(self.config.symbols), feed=self.config.feed)
            self._spawn(self.rest.gap_check("connect"))
            if self._before_drop:
                self._spawn(self.rest.recheck(self._before_drop, stopping))
                self._before_drop = {}
            await self._consume(ws, stopping)

    async def _recv(self, ws: ClientConnection) -> list[dict[str, Any]]:
        data = await asyncio.wait_for(ws.recv(), self.config.handshake_timeout_s)
        return proto.decode_frame(data)

    async def _consume(self, ws: ClientConnection, stopping: asyncio.Event) -> None:
        stall = timedelta(seconds=self.config.stall_timeout_s)
        while not stopping.is_set():
            try:
                data = await asyncio.wait_for(ws.recv(), self.config.poll_s)
            except TimeoutError:
                data = None
            if data is not None:
                self._frame(data)
            if stalled(self._last_data, self.clock.now(), stall, self.calendar):
                self.stats.stalls += 1
                raise StreamStalled(f"no market data for {self.config.stall_timeout_s:g}s")

    def _frame(self, data: bytes | str) -> None:
        try:
            msgs = proto.decode_frame(data)
        except proto.FrameError as exc:
            raw = data.encode() if isinstance(data, str) else bytes(data)
            self.intake.reject(ORIGIN_STREAM, exc.args[0], raw, "application/octet-stream", None,
                               self.clock.now(), error_type="FrameError")
            return
        self._handle(msgs)

    def _handle(self, msgs: list[dict[str, Any]]) -> None:
        proto.raise_for_error(msgs)
        for msg in msgs:
            if msg.get("T") in proto.BAR_TYPES:
                now = self.clock.now()
                self._last_data = now
                self._got_data = True
                self.intake.stream_message(msg, now=now)

    # -- plumbing ----------------------------------------------------------------------------

    def _flush(self) -> None:
        try:
            self.sink.flush()
        except DeliveryError as exc:
            self._error(type(exc).__name__)
            log.error("bars not delivered; re-reading the topic before the next gap check",
                      error=str(exc))
            self.rest.resync()

    async def _flush_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), self.config.flush_interval_s)
            except TimeoutError:
                await asyncio.to_thread(self._flush)

    def _error(self, kind: str) -> None:
        self.metrics.errors.labels(STAGE, kind).inc()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep(self, seconds: float, stopping: asyncio.Event) -> None:
        """The clock's sleep, cut short by a stop request."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waiter = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waiter):
                task.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event) -> None:
    """The `bars` stage: `ops-pipeline run --only bars`."""
    serve(build(settings, endpoints), stop)


def build(
    settings: Settings, endpoints: Endpoints, *, clock: WaitingClock | None = None, **timings: Any
) -> BarsConnector:
    """The stage's connector, wired to the broker as `run` wires it. Production passes nothing;
    a test passes a bar-time clock and the real-time knobs (poll, flush) to compress a session."""

    config = BarsConfig.from_settings(settings, **timings)
    codec = make_codec(endpoints.schema_registry_url)
    producer = RecordProducer(settings, endpoints.kafka_bootstrap_servers, codec,
                              **process_metrics().librdkafka_stats(STAGE))
    topic = settings.topic(BARS.name)
    return BarsConnector(
        config,
        credentials=CredentialSource.from_settings(settings),
        sink=ProducerSink(producer),
        calendar=TradingCalendar.xnys(),
        clock=clock,
        tail=lambda: bars_tail(settings, endpoints.kafka_bootstrap_servers, codec, topic,
                               per_partition=config.tail_per_partition),
    )


def serve(connector: BarsConnector, stop: threading.Event) -> None:
    """Run `connector` on its own event loop until `stop` is set."""
    asyncio.run(_until(connector, stop))


async def _until(connector: BarsConnector, stop: threading.Event) -> None:
    stopping = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.2)
        stopping.set()

    watcher = asyncio.create_task(watch())
    try:
        await connector.run(stopping)
    finally:
        watcher.cancel()
