"""The RSS connector against a local HTTP server and the real broker: items land once across
polls and restarts, conditional GETs turn into 304s, and hostile or broken feeds are reported
by name without harming the others."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from connectors.rss import (
    FeedOutcome,
    RssConfig,
    RssConnector,
    load_seen_ids,
    producer_publisher,
)
from connectors.rss import run as run_rss
from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import NewsItem
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import NEWS_RAW
from tests.fakes.rss_server import FeedServer, Route

pytestmark = pytest.mark.integration

FEEDS = Path(__file__).parent.parent / "data" / "feeds"
FETCHED = datetime(2025, 6, 10, 14, 0, tzinfo=UTC)
MiB = 1024 * 1024


def doc(name: str) -> bytes:
    return (FEEDS / name).read_bytes()


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as srv:
        yield srv


@pytest.fixture
def producer(provisioned: Settings, kafka_bootstrap: str) -> Iterator[RecordProducer]:
    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as p:
        yield p


def connector(
    settings: Settings, bootstrap: str, producer: RecordProducer, urls: list[str], **conf: object
) -> RssConnector:
    conf = {"poll_seconds": 0.1, "timeout_s": 5.0, **conf}
    config = RssConfig(feeds=tuple(urls), **conf)  # type: ignore[arg-type]
    seen = load_seen_ids(settings, bootstrap, timeout_s=60)
    return RssConnector(config, producer_publisher(producer), seen, clock=lambda: FETCHED)


def news(settings: Settings, bootstrap: str) -> list[NewsItem]:
    got = read_records(settings, bootstrap, HeaderCodec(), NEWS_RAW, quiet_s=0.5)
    for msg, rec in got:
        assert isinstance(rec, NewsItem), rec
        assert msg.key == rec.id.encode()
    return [rec for _, rec in got]  # type: ignore[misc]


def by_feed(outcomes: list[FeedOutcome]) -> dict[str, FeedOutcome]:
    return {o.feed: o for o in outcomes}


async def _poll(c: RssConnector) -> list[FeedOutcome]:
    return await c.poll_once()


def poll(c: RssConnector) -> dict[str, FeedOutcome]:
    import asyncio

    return by_feed(asyncio.run(_poll(c)))


def test_items_land_once_across_polls_304s_and_restarts(
    provisioned: Settings, kafka_bootstrap: str, server: FeedServer, producer: RecordProducer
) -> None:
    markets = server.add("/markets.xml", Route(doc("markets_rss20.xml"), etag='"v1"'))
    tech = server.add(
        "/tech.atom",
        Route(doc("tech_atom.xml"), content_type="application/atom+xml",
              last_modified="Tue, 10 Jun 2025 12:00:00 GMT"),
    )
    wire = server.add("/wire.rdf", Route(doc("wire_rdf.xml"), content_type="application/rdf+xml"))
    old = server.add("/old.xml", Route(doc("netscape_rss091.xml"), content_type="text/xml"))
    urls = [markets, tech, wire, old]

    first = connector(provisioned, kafka_bootstrap, producer, urls)
    assert first.seen == set()
    out = poll(first)
    assert {u: (o.status, o.new, o.duplicates) for u, o in out.items()} == {
        markets: ("ok", 5, 1),  # the feed repeats one guid within itself
        tech: ("ok", 3, 0),
        wire: ("ok", 2, 0),
        old: ("ok", 1, 0),
    }
    out = poll(first)
    assert {u: (o.status, o.new, o.duplicates) for u, o in out.items()} == {
        markets: ("not_modified", 0, 0),
        tech: ("not_modified", 0, 0),
        wire: ("ok", 0, 2),  # no validators: fetched again, nothing new
        old: ("ok", 0, 1),
    }
    assert server.headers_of("/markets.xml")[1].get("If-None-Match") == '"v1"'
    assert server.headers_of("/tech.atom")[1].get("If-Modified-Since") == (
        "Tue, 10 Jun 2025 12:00:00 GMT"
    )
    landed = news(provisioned, kafka_bootstrap)
    assert len(landed) == 11 and len({n.id for n in landed}) == 11
    assert {n.feed for n in landed} == set(urls)

    # a new process: no validators in memory, seen ids read back from news.raw
    restarted = connector(provisioned, kafka_bootstrap, producer, urls)
    assert restarted.seen == {n.id for n in landed}
    out = poll(restarted)
    assert all(o.status == "ok" and o.new == 0 for o in out.values())
    assert sum(o.duplicates for o in out.values()) == 12
    assert len(news(provisioned, kafka_bootstrap)) == 11

    # the feed changes: only the new item goes out
    fresh = doc("markets_rss20.xml").replace(
        b"<item>",
        b"<item><title>Microsoft beats estimates</title><guid>mkt-2002</guid>"
        b"<pubDate>Tue, 10 Jun 2025 13:55:00 GMT</pubDate></item>\n    <item>",
        1,
    )
    server.add("/markets.xml", Route(fresh, etag='"v2"'))
    out = poll(restarted)
    assert (out[markets].status, out[markets].new) == ("ok", 1)
    titles = [n.title for n in news(provisioned, kafka_bootstrap)]
    assert len(titles) == 12 and titles.count("Microsoft beats estimates") == 1


def test_bad_feeds_are_reported_by_name_and_harm_nothing(
    provisioned: Settings,
    kafka_bootstrap: str,
    server: FeedServer,
    producer: RecordProducer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("CANARY-7f3a secret local file")
    xxe = doc("xxe_passwd.xml").replace(b"file:///etc/passwd", canary.as_uri().encode())
    quadratic = (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + b"a" * 50_000 + b'">\n]>\n'
        b"<rss version='2.0'><channel><item><title>" + b"&a;" * 50_000
        + b"</title></item></channel></rss>"
    )
    rss = doc("markets_rss20.xml")
    expected = {
        server.add("/good.xml", Route(rss)): ("ok", 5),
        server.add("/sloppy.xml", Route(doc("malformed_recoverable.xml"))): ("ok", 2),
        server.add("/cut.xml", Route(doc("truncated.xml"))): ("ok", 1),
        server.url("/missing.xml"): ("http_status", 0),
        server.add("/error.xml", Route(b"oops", status=500, content_type="text/plain")): (
            "http_status", 0),
        server.add("/stall.xml", Route(rss, stall_s=60)): ("timeout", 0),
        server.add("/drip.xml", Route(rss, drip_s=0.05)): ("timeout", 0),
        server.add("/huge.xml", Route(rss[:200], stream_bytes=20 * MiB, declare_length=False)): (
            "too_large", 0),
        server.add("/huge-declared.xml", Route(rss[:200], stream_bytes=20 * MiB)): (
            "too_large", 0),
        server.add("/gzip-bomb.xml", Route(gzip_bomb_bytes=20 * MiB)): ("too_large", 0),
        server.add("/page.html", Route(doc("not_a_feed.html"), content_type="text/html")): (
            "malformed", 0),
        server.add("/api.json", Route(b'{"items": []}', content_type="application/json")): (
            "malformed", 0),
        server.add("/xxe.xml", Route(xxe)): ("malformed", 0),
        server.add("/laughs.xml", Route(doc("billion_laughs.xml"))): ("malformed", 0),
        server.add("/quadratic.xml", Route(quadratic)): ("malformed", 0),
        server.add("/path.xml", Route(str(canary).encode(), content_type="text/plain")): (
            "malformed", 0),
    }
    c = connector(
        provisioned, kafka_bootstrap, producer, list(expected),
        max_bytes=1 * MiB, timeout_s=3.0, max_concurrency=len(expected),
    )
    with caplog.at_level(logging.WARNING, logger="connectors.rss"):
        out = poll(c)
    assert {u: (o.status, o.new) for u, o in out.items()} == expected
    for url, (status, _) in expected.items():
        if status != "ok":
            assert any(url in r.getMessage() for r in caplog.records), f"{url} not logged"
            assert c.counts[(url, status)] == 1
    assert any("/sloppy.xml" in r.getMessage() and "malformed" in r.getMessage()
               for r in caplog.records)  # recovered, but said so
    landed = news(provisioned, kafka_bootstrap)
    assert len(landed) == 8
    assert not any("CANARY" in n.title + n.summary for n in landed)
    assert max(len(n.title) for n in landed) < 200


def test_failed_publish_marks_nothing_seen_and_refetches(server: FeedServer) -> None:
    url = server.add("/markets.xml", Route(doc("markets_rss20.xml"), etag='"v1"'))
    sent: list[NewsItem] = []
    broken = True

    def publish(items: Sequence[NewsItem]) -> None:
        if broken:
            raise RuntimeError("broker down")
        sent.extend(items)

    c = RssConnector(RssConfig(feeds=(url,)), publish, set(), clock=lambda: FETCHED)
    assert poll(c)[url].status == "publish_failed" and c.seen == set()
    broken = False
    out = poll(c)[url]
    assert (out.status, out.new) == ("ok", 5)
    assert "If-None-Match" not in server.headers_of("/markets.xml")[1]  # no 304 hid the items
    assert len(sent) == 5 and c.seen == {i.id for i in sent}
    assert poll(c)[url].status == "not_modified"


def test_items_older_than_the_topic_retention_are_not_published(server: FeedServer) -> None:
    url = server.add("/markets.xml", Route(doc("markets_rss20.xml")))
    sent: list[NewsItem] = []
    late = FETCHED + timedelta(days=40)

    def publish(items: Sequence[NewsItem]) -> None:
        sent.extend(items)

    c = RssConnector(RssConfig(feeds=(url,)), publish, set(), clock=lambda: late)
    out = poll(c)[url]
    assert (out.new, out.stale) == (1, 5)  # only the undated item (its date is the fetch time)
    assert [i.published_estimated for i in sent] == [True]


def fresh_feed(n: int) -> bytes:
    now = datetime.now(UTC)
    items = "".join(
        f"<item><title>Nvidia headline {i}</title><guid>stage-{i}</guid>"
        f"<pubDate>{format_datetime(now - timedelta(minutes=i), usegmt=True)}</pubDate></item>"
        for i in range(n)
    )
    return f"<rss version='2.0'><channel><title>Live</title>{items}</channel></rss>".encode()


def wait_for_news(settings: Settings, bootstrap: str, count: int, deadline_s: float = 60) -> int:
    end = time.monotonic() + deadline_s
    got = 0
    while time.monotonic() < end:
        got = len(news(settings, bootstrap))
        if got >= count:
            return got
        time.sleep(0.5)
    return got


def test_the_rss_stage_polls_until_stopped(
    provisioned: Settings, kafka_bootstrap: str, server: FeedServer
) -> None:
    url = server.add("/live.xml", Route(fresh_feed(3), etag='"a"'))
    settings = provisioned.model_copy(update={"rss_feeds": (url,), "rss_poll_seconds": 0.2})
    endpoints = Endpoints(kafka_bootstrap, "", None, embedded=False)
    stop = threading.Event()
    worker = threading.Thread(target=run_rss, args=(settings, endpoints, stop), daemon=True)
    worker.start()
    try:
        assert wait_for_news(settings, kafka_bootstrap, 3) == 3
        hits = server.hits["/live.xml"]
        deadline = time.monotonic() + 30
        while server.hits["/live.xml"] < hits + 2 and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)  # it keeps polling (and gets 304s)
        assert server.hits["/live.xml"] >= hits + 2, "the stage stopped polling"
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert len(news(settings, kafka_bootstrap)) == 3


class CountingEvent(threading.Event):
    """A stop event that counts how often the stage waited on it or looked at it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = self.checks = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)

    def is_set(self) -> bool:
        self.checks += 1
        return super().is_set()


def test_the_rss_stage_idles_without_feeds(provisioned: Settings, kafka_bootstrap: str) -> None:
    """No feeds: one blocking wait on the stop event, not a loop of short ones."""
    stop = CountingEvent()
    worker = threading.Thread(
        target=run_rss,
        args=(provisioned, Endpoints(kafka_bootstrap, "", None, embedded=False), stop),
        daemon=True,
    )
    worker.start()
    deadline = time.monotonic() + 10
    while stop.waits == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # long enough for a spinning loop to wait or check thousands of times
    assert worker.is_alive(), "the stage returned without being stopped"
    assert (stop.waits, stop.checks) == (1, 0), f"{stop.waits} waits, {stop.checks} checks in 0.5 s"
    stop.set()
    worker.join(10)
    assert not worker.is_alive()


def test_ops_pipeline_run_only_rss(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, server: FeedServer,
    tmp_path: Path,
) -> None:
    url = server.add("/live.xml", Route(fresh_feed(2)))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": database_url,
        "PIPELINE_TOPIC_PREFIX": provisioned.pipeline_topic_prefix,
        "PIPELINE_DATA_DIR": str(tmp_path / "data"),
        "RSS_FEEDS": url,
        "RSS_POLL_SECONDS": "0.5",
    }
    env.pop("SCHEMA_REGISTRY_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--only", "rss"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        got = wait_for_news(provisioned, kafka_bootstrap, 2, deadline_s=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert got == 2, output.decode(errors="replace")[-3000:]
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
