"""The bars connector's REST side, apart from its websocket session: Alpaca's historical bars fill the
minutes the stream missed and judge the minutes before a drop, and a REST failure never stops the
stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog
from confluent_kafka import KafkaException

from connectors.alpaca_rest import BarHistory, HistoryAuthError, RawBars
from connectors.backfill import apply_recheck, asked_revisions
from connectors.bars_config import BarsConfig, ConnectorStats
from connectors.credentials import Credentials
from connectors.gaps import Chunk, GapDetector, chunks
from connectors.intake import BarIntake
from opsinfra.errors import PipelineError
from trading.clock import Clock

log = structlog.get_logger(__name__)


class BarsRest:
    """Gap checks (on a timer and at each connect) and rechecks after a reconnect, one REST call at
    a time. The connector keeps what they share with the stream and lends it as callables: its
    credentials, the topic tail (`reseed`), the sink's flush, error counts, backoff and sleep."""

    def __init__(
        self,
        config: BarsConfig,
        *,
        intake: BarIntake,
        detector: GapDetector,
        stats: ConnectorStats,
        clock: Clock,
        history_factory: Callable[[Credentials], BarHistory],
        reload_credentials: Callable[[str], None],
        reseed: Callable[[], Awaitable[None]],
        flush: Callable[[], None],
        error: Callable[[str], None],
        backoff: Callable[[int], float],
        sleep: Callable[[float, asyncio.Event], Awaitable[None]],
    ) -> None:
        self.config = config
        self.intake = intake
        self.detector = detector
        self.stats = stats
        self.clock = clock
        self._history_factory = history_factory
        self._reload_credentials = reload_credentials
        self._reseed = reseed
        self._flush = flush
        self._error = error
        self._backoff = backoff
        self._sleep = sleep
        self._creds: Credentials | None = None
        self._history: BarHistory | None = None
        self._lock = asyncio.Lock()
        self._resync = False

    def use(self, creds: Credentials) -> None:
        self._creds = creds
        self._history = None  # rebuilt with the new keys on the next REST call

    def resync(self) -> None:
        """A delivery failed: the next gap check trusts only what the topic really has."""
        self._resync = True

    async def gap_timer(self, stopping: asyncio.Event) -> None:
        interval = self.config.gap_check_interval_s
        if interval is None:
            return
        while not stopping.is_set():
            await self._sleep(interval, stopping)
            if not stopping.is_set():
                await self.gap_check("timer")

    async def gap_check(self, reason: str) -> None:
        """Ask REST for the session minutes missing from the topic; publish what it has."""
        await self._with_rest("gap check", lambda: self._fill_gaps(reason))

    async def recheck(self, window: dict[str, tuple[datetime, ...]], stopping: asyncio.Event) -> None:
        """REST judges the minutes before a drop: an updated bar Alpaca sent while the socket was
        down is lost otherwise. Retried with backoff, then given up: never stops the stream."""
        for attempt in range(1, self.config.recheck_attempts + 1):
            if attempt > 1:
                await self._sleep(self._backoff(attempt - 1), stopping)
            if stopping.is_set():
                return
            if await self._with_rest("recheck", lambda: self._apply_recheck(window)):
                return
        self.stats.rechecks_given_up += 1
        log.warning("recheck given up: updated bars sent during the drop may be lost",
                    symbols=sorted(window), attempts=self.config.recheck_attempts)

    async def _apply_recheck(self, window: dict[str, tuple[datetime, ...]]) -> None:
        for chunk in chunks(window):
            asked = asked_revisions(self.intake.book, chunk)
            answer = await self._fetch(chunk)
            report = apply_recheck(self.intake, answer, asked=asked, now=self.clock.now())
            self.stats.recheck_reports.append(report)
            if report.revised:
                log.warning("bars revised from REST after a reconnect", minutes=len(report.revised),
                            first=report.revised[0][1].isoformat(), symbols=chunk.symbols)
        await asyncio.to_thread(self._flush)

    async def _with_rest(self, what: str, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """`work` (REST, then the topic) one at a time; False when it failed, logged, not raised."""
        async with self._lock:
            try:
                await work()
                return True
            except HistoryAuthError as exc:
                self._error(type(exc).__name__)
                log.warning(f"{what}: credentials refused", error=str(exc))
                self._reload_credentials("REST authentication failed")
            except (PipelineError, KafkaException, OSError, TimeoutError) as exc:
                self._error(type(exc).__name__)
                log.warning(f"{what} failed; retrying later", error=f"{type(exc).__name__}: {exc}")
        return False

    async def _fetch(self, chunk: Chunk) -> RawBars:
        if self._history is None:
            assert self._creds is not None
            self._history = self._history_factory(self._creds)
        history = self._history
        return await asyncio.wait_for(
            asyncio.to_thread(history.fetch, chunk.symbols, chunk.start, chunk.end),
            self.config.rest_timeout_s,
        )

    async def _fill_gaps(self, reason: str) -> None:
        if self._resync:
            self._resync = False
            self.detector.forget_seen()
            await self._reseed()
        now = self.clock.now()
        due = self.detector.due(now)
        if not due:
            return
        for chunk in chunks(due):
            answer = await self._fetch(chunk)
            report = self.intake.apply_backfill(chunk, answer, now=self.clock.now())
            self.stats.gap_reports.append(report)
            if report.filled:
                log.warning("gap filled from REST", reason=reason, minutes=len(report.filled),
                            first=report.filled[0][1].isoformat(), symbols=chunk.symbols)
            if report.no_trade:
                log.info("minutes without trades (not gaps)", minutes=len(report.no_trade))
        await asyncio.to_thread(self._flush)
