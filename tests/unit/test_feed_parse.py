"""parse_feed on recorded-shape documents: RSS 2.0, RSS 1.0/RDF, Atom, and the hostile ones."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connectors.feeds import (
    MAX_SUMMARY_CHARS,
    FeedParseError,
    html_to_text,
    item_id,
    parse_document,
    parse_feed,
)
from schemas.records import NewsItem

FEEDS = Path(__file__).parent.parent / "data" / "feeds"
FETCHED = datetime(2025, 6, 10, 14, 0, tzinfo=UTC)


def load(name: str) -> bytes:
    return (FEEDS / name).read_bytes()


def by_title(items: list[NewsItem], title: str) -> NewsItem:
    return next(i for i in items if i.title == title)


def test_rss20_items_text_dates_and_links() -> None:
    items = parse_feed(load("markets_rss20.xml"), "markets", FETCHED)
    assert len(items) == 6  # the repeated guid is the connector's to drop, not the parser's
    apple = by_title(items, "Apple shares jump after record iPhone sales")
    assert apple.summary == (
        "Apple Inc. (NASDAQ: AAPL) rose 4% & hit a record after quarterly iPhone sales beat "
        "forecasts. Read more…"
    )  # tags and the script are gone, entities decoded
    assert apple.published == datetime(2025, 6, 10, 13, 30, tzinfo=UTC)
    assert apple.published.tzinfo is UTC and not apple.published_estimated
    assert apple.feed == "markets" and apple.fetched_at == FETCHED
    tesla = by_title(items, "Tesla recalls 120,000 vehicles over seat-belt warning")
    assert tesla.published == datetime(2025, 6, 10, 13, 15, tzinfo=UTC)  # -0400 -> UTC
    assert tesla.summary == "Regulators said the $TSLA recall affects Model S and Model X cars."
    undated = by_title(items, "Markets close mixed as investors await the Fed")
    assert undated.published == FETCHED and undated.published_estimated
    assert undated.link is None


def test_atom_entries() -> None:
    items = parse_feed(load("tech_atom.xml"), "tech", FETCHED)
    assert [i.title for i in items] == [
        "Alphabet's Google unveils new AI chips",  # type="html" title reduced to text
        "Amazon Web Services outage hits retailers",
        "Meta-analysis finds remote work boosts output",
    ]
    google, aws, _ = items
    assert google.summary == "The chips compete with Nvidia’s."
    assert google.published == datetime(2025, 6, 10, 6, 30, tzinfo=UTC)  # published, not updated
    assert aws.summary == "Sites relying on AWS were down for two hours."  # xhtml content
    assert aws.published == datetime(2025, 6, 9, 23, 59, 59, tzinfo=UTC)  # updated only
    assert google.link == "https://tech.example.org/2025/06/google-ai-chips"


def test_rdf_items_and_declared_encoding() -> None:
    items = parse_feed(load("wire_rdf.xml"), "wire", FETCHED)
    assert [i.title for i in items] == [
        "Microsoft to acquire a café software maker for $1.2bn",
        "Physicists build a record 45 tesla magnet",
    ]
    assert "Café owners" in items[0].summary  # a real ISO-8859-1 byte, decoded
    assert items[0].published == datetime(2025, 6, 10, 12, 0, tzinfo=UTC)  # dc:date -05:00


def test_an_external_dtd_reference_alone_is_fine() -> None:
    (item,) = parse_feed(load("netscape_rss091.xml"), "old", FETCHED)
    assert item.title == "Facebook parent Meta beats earnings estimates"
    assert item.published_estimated


def test_ids_are_stable_and_follow_guid_then_link_then_title() -> None:
    first = parse_feed(load("markets_rss20.xml"), "markets", FETCHED)
    later = parse_feed(load("markets_rss20.xml"), "markets", FETCHED + timedelta(hours=5))
    assert [i.id for i in first] == [i.id for i in later]  # undated item too: no fetch time
    ids = [i.id for i in first]
    assert ids[0] == ids[4]  # same guid, new title: the same item
    assert len(set(ids)) == 5
    # a bare guid is scoped by its feed; a URI guid and a link are global
    assert item_id("a", guid="1", link=None, title="t", date="") != item_id(
        "b", guid="1", link=None, title="t", date=""
    )
    for kw in ({"guid": "tag:x,2025:1", "link": None}, {"guid": None, "link": "https://x/1"}):
        assert item_id("a", title="t", date="", **kw) == item_id("b", title="u", date="", **kw)
    assert item_id("a", guid=None, link=None, title="t", date="d1") != item_id(
        "a", guid=None, link=None, title="t", date="d2"
    )


def test_malformed_feed_recovers_whole_items_and_says_so() -> None:
    doc = parse_document(load("malformed_recoverable.xml"), "sloppy", FETCHED)
    assert [i.title for i in doc.items] == [
        "Amazon raises prices & cuts shipping times",
        "Second item survives too",
    ]
    assert doc.warning is not None and "malformed" in doc.warning
    truncated = parse_document(load("truncated.xml"), "cut", FETCHED)
    assert [i.title for i in truncated.items] == ["Only the first item is whole"]
    assert truncated.skipped == ["entry 1: no title and no summary"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (load("not_a_feed.html"), "not a feed"),
        (b'{"items": [{"title": "json is not a feed"}]}', "not a feed"),
        (b"", "not a feed"),
        (b"\x00\xff\xfe garbage \x01", "not a feed"),
        (b"<rss version='2.0'><channel><title>x</ti", "malformed"),
        (load("xxe_passwd.xml"), "entities"),
        (load("billion_laughs.xml"), "entities"),
        (load("billion_laughs.xml").decode().encode("utf-16"), "entities"),
        (b"<!--" + b"<a> " * 50_000 + b"-->" + load("billion_laughs.xml").split(b"?>", 1)[1],
         "entities"),
    ],
    ids=["html", "json", "empty", "binary", "broken-no-items", "xxe", "laughs", "laughs-utf16",
         "laughs-after-padding"],
)
def test_unusable_documents_raise_feed_parse_error(body: bytes, reason: str) -> None:
    with pytest.raises(FeedParseError) as info:
        parse_feed(body, "bad", FETCHED)
    assert reason in info.value.reason and info.value.feed == "bad"


def test_a_body_that_names_a_local_file_is_data_not_a_path(tmp_path: Path) -> None:
    secret = tmp_path / "secret.xml"
    secret.write_text(
        "<rss version='2.0'><channel><item><title>LOCAL SECRET</title></item></channel></rss>"
    )
    # feedparser.parse(bytes) would open this path; parse_feed must not
    with pytest.raises(FeedParseError):
        parse_feed(str(secret).encode(), "path", FETCHED)


def test_entity_expansion_is_refused_without_parsing_it() -> None:
    # quadratic blowup: one 100 kB entity referenced 100k times (~10 GB if expanded)
    body = (
        b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + b"a" * 100_000 + b'">\n]>\n'
        b"<rss version='2.0'><channel><item><title>" + b"&a;" * 100_000 + b"</title>"
        b"<link>https://evil.example.com/q</link></item></channel></rss>"
    )
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(FeedParseError, match="entities"):
            parse_feed(body, "quadratic", FETCHED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(body)


def test_no_local_file_leaks_even_past_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with our entity guard off, feedparser + expat still expand nothing."""
    import connectors.feeds as feeds

    monkeypatch.setattr(feeds, "_refuse_entities", lambda data, feed: None)
    doc = parse_document(load("xxe_passwd.xml"), "evil", FETCHED)
    assert len(doc.items) == 1, f"the entry was not parsed ({doc.skipped}): nothing to check"
    (item,) = doc.items
    assert item.link == "https://evil.example.com/1" and item.title.startswith("Leak: ")
    assert "root:" not in item.title + item.summary and "/bin/" not in item.title + item.summary


def test_summaries_are_capped_and_dates_sane() -> None:
    huge = "word " * 5_000
    future = "Tue, 10 Jun 2031 13:30:00 GMT"
    body = (
        "<rss version='2.0'><channel><item><title>Long one</title>"
        f"<link>https://x.example.com/1</link><description>{huge}</description>"
        f"<pubDate>{future}</pubDate></item></channel></rss>"
    ).encode()
    (item,) = parse_feed(body, "long", FETCHED)
    assert len(item.summary) == MAX_SUMMARY_CHARS and item.summary.endswith("…")
    assert item.published == FETCHED and item.published_estimated  # a date years ahead is a bug


def test_non_http_links_are_dropped() -> None:
    body = (
        b"<rss version='2.0'><channel><item><title>x</title><link>javascript:alert(1)</link>"
        b"</item></channel></rss>"
    )
    (item,) = parse_feed(body, "js", FETCHED)
    assert item.link is None


def test_naive_fetch_time_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_feed(load("markets_rss20.xml"), "m", datetime(2025, 6, 10))  # noqa: DTZ001


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        ("<p>One</p><p>Two</p>", "One Two"),
        ("A &amp; B &lt;tag&gt; &#8212; &hellip;", "A & B <tag> — …"),
        ("<style>p{}</style><script>x()</script>Body", "Body"),
        ("line<br>break", "line break"),
        ("  spaced \n\t out  ", "spaced out"),
        ("<a href='x'>link</a> text", "link text"),
    ],
)
def test_html_to_text(markup: str, text: str) -> None:
    assert html_to_text(markup) == text


def test_rss_config_from_settings_picks_up_optional_fields() -> None:
    from types import SimpleNamespace

    from connectors.rss import RssConfig
    from opsinfra.settings import Settings

    base = Settings(_env_file=None, rss_feeds=("https://a.example.com/f.xml",),  # type: ignore[call-arg]
                    rss_poll_seconds=30)
    conf = RssConfig.from_settings(base)
    assert (conf.feeds, conf.poll_seconds, conf.max_bytes, conf.timeout_s) == (
        ("https://a.example.com/f.xml",), 30.0, 5 * 1024 * 1024, 20.0)
    extended = SimpleNamespace(rss_feeds=(), rss_poll_seconds=60.0, rss_max_bytes=1024,
                               rss_timeout_seconds=3.0)
    conf = RssConfig.from_settings(extended, max_concurrency=2)  # type: ignore[arg-type]
    assert (conf.max_bytes, conf.timeout_s, conf.max_concurrency) == (1024, 3.0, 2)
