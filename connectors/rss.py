"""The RSS/Atom connector: conditional GETs of RSS_FEEDS, each new item published once to news.raw,
whose own keys are the memory of what was published (no second store to disagree after a crash).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx

from connectors.feeds import FeedError, FeedParseError, parse_document
from opsinfra.backoff import Backoff
from opsinfra.endpoints import Endpoints
from opsinfra.errors import PipelineError
from opsinfra.kafka_io import read_to_end
from opsinfra.metrics import metrics
from opsinfra.settings import Settings, redact_url
from schemas.codec import make_codec
from schemas.records import NewsItem
from schemas.topic_io import RecordProducer
from schemas.topics import DAY_MS, NEWS_RAW

log = logging.getLogger(__name__)

STAGE = "rss"
USER_AGENT = "ops-pipeline-rss/0.1 (+https://github.com/ops-pipeline)"


class FeedHTTPError(FeedError):
    kind = "http_status"


class FeedTimeout(FeedError):
    kind = "timeout"


class FeedTooLarge(FeedError):
    kind = "too_large"


class FeedNetworkError(FeedError):
    kind = "network"


@dataclass(frozen=True)
class RssConfig:
    """What the connector needs from Settings, plus its own limits (defaults are production's)."""

    feeds: tuple[str, ...]
    poll_seconds: float = 60.0
    max_bytes: int = 5 * 1024 * 1024
    timeout_s: float = 20.0  # total per fetch: connect, headers and body
    max_concurrency: int = 4
    max_age: timedelta | None = timedelta(milliseconds=NEWS_RAW.retention_ms - DAY_MS)
    topic: str = NEWS_RAW.name  # physical (prefixed) name: the `topic` label of its metrics

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> RssConfig:
        conf: dict[str, object] = {
            "feeds": tuple(settings.rss_feeds),
            "poll_seconds": settings.rss_poll_seconds,
            "topic": getattr(settings, "pipeline_topic_prefix", "") + NEWS_RAW.name,
        }
        for name, attr in (("max_bytes", "rss_max_bytes"), ("timeout_s", "rss_timeout_seconds")):
            value = getattr(settings, attr, None)  # fields the settings owner may add
            if value is not None:
                conf[name] = value
        conf.update(overrides)
        return cls(**conf)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Fetched:
    body: bytes | None  # None: 304 Not Modified
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out


async def fetch_feed(
    client: httpx.AsyncClient,
    url: str,
    *,
    name: str,
    validators: Validators = Validators(),  # noqa: B008 - frozen, shared safely
    max_bytes: int,
    timeout_s: float,
) -> Fetched:
    """One conditional GET; raises a FeedError subclass for every way it can fail."""
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("GET", url, headers=validators.headers()) as resp:
                if resp.status_code == 304:
                    return Fetched(None)
                if not resp.is_success:
                    raise FeedHTTPError(name, f"HTTP {resp.status_code}")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FeedTooLarge(name, f"Content-Length {declared} > cap {max_bytes}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():  # decoded: the cap holds for gzip too
                    body += chunk
                    if len(body) > max_bytes:
                        raise FeedTooLarge(name, f"body over the cap of {max_bytes} bytes")
                return Fetched(
                    bytes(body),
                    resp.headers.get("etag"),
                    resp.headers.get("last-modified"),
                    resp.headers.get("content-type"),
                    str(resp.url),
                )
    except TimeoutError as exc:
        raise FeedTimeout(name, f"no complete response within {timeout_s}s") from exc
    except httpx.TimeoutException as exc:
        raise FeedTimeout(name, f"timed out: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise FeedNetworkError(name, f"{type(exc).__name__}: {exc}") from exc


class Publisher(Protocol):
    """Makes items durable on news.raw; raises when it could not (nothing is then marked seen)."""

    def __call__(self, items: Sequence[NewsItem]) -> None: ...


def producer_publisher(producer: RecordProducer) -> Publisher:
    def publish(items: Sequence[NewsItem]) -> None:
        for item in items:
            producer.send(NEWS_RAW, item)
        producer.flush()

    return publish


def load_seen_ids(settings: Settings, bootstrap: str, *, timeout_s: float = 600.0) -> set[str]:
    """The ids already on news.raw: its message keys, read to the end as of now."""
    topic = settings.topic(NEWS_RAW.name)
    return {
        m.key.decode("utf-8", "replace")
        for m in read_to_end(settings, bootstrap, topic, timeout_s=timeout_s)
        if m.key
    }


@dataclass
class FeedOutcome:
    feed: str
    status: str  # ok, not_modified, or a FeedError kind (malformed, too_large, timeout, ...)
    new: int = 0
    duplicates: int = 0
    stale: int = 0
    skipped: int = 0
    error: str | None = None


@dataclass
class RssConnector:
    """Polls every feed once per `poll_once()`; `run()` repeats it until stopped."""

    config: RssConfig
    publish: Publisher
    seen: set[str]
    transport: httpx.AsyncBaseTransport | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    _validators: dict[str, Validators] = field(default_factory=dict)

    async def poll_once(self) -> list[FeedOutcome]:
        limit = asyncio.Semaphore(self.config.max_concurrency)
        lock = asyncio.Lock()  # publish one feed at a time: seen-checks and flushes stay exact
        async with httpx.AsyncClient(
            transport=self.transport,
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"},
        ) as client:
            outcomes = await asyncio.gather(
                *(self._poll_feed(client, url, limit, lock) for url in self.config.feeds)
            )
        m = metrics()
        for o in outcomes:
            self.counts[(o.feed, o.status)] += 1
            self.counts[(o.feed, "items_published")] += o.new
            m.records.labels(STAGE, self.config.topic).inc(o.new)
            if o.status not in ("ok", "not_modified"):
                m.errors.labels(STAGE, f"feed_{o.status}").inc()
        m.progressed(STAGE)
        return list(outcomes)

    async def _poll_feed(
        self, client: httpx.AsyncClient, url: str, limit: asyncio.Semaphore, lock: asyncio.Lock
    ) -> FeedOutcome:
        name = redact_url(url)
        try:
            async with limit:
                fetched = await fetch_feed(
                    client,
                    url,
                    name=name,
                    validators=self._validators.get(url, Validators()),
                    max_bytes=self.config.max_bytes,
                    timeout_s=self.config.timeout_s,
                )
            if fetched.body is None:
                log.debug("feed %s: not modified", name)
                return FeedOutcome(name, "not_modified")
            parsed = await asyncio.to_thread(
                parse_document,
                fetched.body,
                name,
                self.clock(),
                content_type=fetched.content_type,
                base_url=fetched.url,
            )
        except FeedError as exc:
            log.warning("feed %s: %s (%s); other feeds go on", name, exc.reason, exc.kind)
            return FeedOutcome(name, exc.kind, error=exc.reason)
        except Exception as exc:  # a bug must cost one feed one poll, not the connector
            log.exception("feed %s: unexpected error", name)
            return FeedOutcome(name, "error", error=repr(exc))
        if parsed.warning:
            log.warning("feed %s: %s", name, parsed.warning)
        for reason in parsed.skipped:
            log.warning("feed %s: skipped %s", name, reason)
        outcome = FeedOutcome(name, "ok", skipped=len(parsed.skipped))
        async with lock:
            fresh: dict[str, NewsItem] = {}
            horizon = self.clock() - self.config.max_age if self.config.max_age else None
            for item in parsed.items:
                if item.id in self.seen or item.id in fresh:
                    outcome.duplicates += 1
                elif horizon and not item.published_estimated and item.published < horizon:
                    outcome.stale += 1
                else:
                    fresh[item.id] = item
            if fresh:
                try:
                    await asyncio.to_thread(self.publish, list(fresh.values()))
                except Exception as exc:  # nothing marked seen; no validators, so refetch next poll
                    log.error("feed %s: publishing %d item(s) failed: %s", name, len(fresh), exc)
                    self._validators.pop(url, None)
                    return FeedOutcome(name, "publish_failed", error=repr(exc))
                self.seen.update(fresh)
        outcome.new = len(fresh)
        # only now: a 304 next time must not hide items that never reached the topic
        self._validators[url] = Validators(fetched.etag, fetched.last_modified)
        log.info(
            "feed %s: %d new, %d already seen, %d older than retention, %d unusable",
            name, outcome.new, outcome.duplicates, outcome.stale, outcome.skipped,
        )
        return outcome

    async def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                outcomes = await self.poll_once()
            except Exception:  # every feed is guarded; this is a bug, and the next poll may pass
                log.exception("rss poll failed")
                outcomes = []
            failed = [o.feed for o in outcomes if o.status not in ("ok", "not_modified")]
            if failed:
                log.warning("rss poll: %d of %d feed(s) failed: %s",
                            len(failed), len(outcomes), ", ".join(failed))
            await asyncio.to_thread(stop.wait, self.config.poll_seconds)


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event) -> None:
    """The `rss` stage: load seen ids from news.raw, then poll until `stop` is set."""
    config = RssConfig.from_settings(settings)
    if not config.feeds:
        log.warning("rss: RSS_FEEDS is empty; nothing to poll (idle until stopped)")
        stop.wait()
        return
    bootstrap = endpoints.kafka_bootstrap_servers
    backoff = Backoff(floor=0.5, cap=60.0)  # retry n waits up to min(60, 2**(n-1)) s
    while True:
        try:
            seen = load_seen_ids(settings, bootstrap)
            break
        except PipelineError as exc:
            delay = backoff.next()
            log.warning("rss: cannot read seen ids from news.raw (%s); retry in %.1fs", exc, delay)
            if stop.wait(delay):
                return
    log.info("rss: %d item id(s) already on news.raw; polling %d feed(s) every %.0fs",
             len(seen), len(config.feeds), config.poll_seconds)
    codec = make_codec(endpoints.schema_registry_url)
    with RecordProducer(settings, bootstrap, codec, **metrics().librdkafka_stats(STAGE)) as producer:
        connector = RssConnector(config, producer_publisher(producer), seen)
        asyncio.run(connector.run(stop))


__all__ = [
    "FeedError",
    "FeedParseError",
    "RssConfig",
    "RssConnector",
    "fetch_feed",
    "load_seen_ids",
    "run",
]
