"""Feed documents (RSS 2.0, RSS 1.0/RDF, Atom) to NewsItems: pure, from bytes only (never a URL or
path feedparser could open), refusing documents that declare entities (XXE, billion laughs).
"""

from __future__ import annotations

import calendar
import hashlib
import html
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import feedparser

from opsinfra.errors import ConnectorError
from schemas.records import NewsItem

MAX_TITLE_CHARS = 1_000
MAX_SUMMARY_CHARS = 5_000  # a record stays far below the broker's 1 MB message limit
FUTURE_SLACK = timedelta(days=1)  # a date further ahead than this is a feed bug, not news
_ENTITY_DECLS = tuple("<!ENTITY".encode(enc) for enc in ("utf-8", "utf-16-le", "utf-16-be"))


class FeedError(ConnectorError):
    """One feed could not be fetched or read; the connector logs it and goes on."""

    kind = "error"

    def __init__(self, feed: str, reason: str) -> None:
        self.feed = feed
        self.reason = reason
        super().__init__(f"feed {feed}: {reason}")


class FeedParseError(FeedError):
    """The body is not a usable feed: not XML, malformed with nothing recoverable, unsafe."""

    kind = "malformed"


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    items: list[NewsItem]
    skipped: list[str] = field(default_factory=list)  # why each dropped entry was unusable
    warning: str | None = None  # feedparser's complaint when it recovered items anyway
    version: str = ""


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "head", "title", "noscript", "template"})
    _BREAK = frozenset(
        "p br div li ul ol tr td th h1 h2 h3 h4 h5 h6 blockquote pre section article".split()
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BREAK:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


_WS = re.compile(r"\s+")


def html_to_text(markup: str) -> str:
    """Visible text of an HTML fragment, entities decoded, whitespace collapsed."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return _WS.sub(" ", "".join(parser.parts)).strip()


def _text(detail: Mapping[str, Any] | None, value: str) -> str:
    kind = str((detail or {}).get("type") or "text/plain")
    if "html" in kind:
        return html_to_text(value)
    return _WS.sub(" ", html.unescape(value) if "&" in value else value).strip()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _absolute_uri(value: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S", value) is not None


def item_id(feed: str, *, guid: str | None, link: str | None, title: str, date: str) -> str:
    """A stable id: the guid, else the link, else title + the feed's own date string.

    A guid that is an absolute URI (Atom ids, permalink guids, tag:/urn:) is global, so the
    same story syndicated by two feeds is one item; a bare guid ("12345") is only unique
    within its feed and is scoped by the feed. Links are global. The fallback never uses the
    fetch time, so an undated item keeps its id across polls.
    """
    if guid:
        basis = f"guid\0{guid}" if _absolute_uri(guid) else f"guid\0{feed}\0{guid}"
    elif link:
        basis = f"link\0{link}"
    else:
        basis = f"title\0{feed}\0{title}\0{date}"
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:32]


def _published(entry: dict[str, Any], fetched_at: datetime) -> tuple[datetime | None, str]:
    for key in ("published", "updated", "created"):
        # plain dict lookups: FeedParserDict aliases updated<->published with a warning
        parsed = dict.get(entry, f"{key}_parsed")
        if parsed:
            try:
                when = datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
            except (OverflowError, ValueError, OSError):
                continue
            if when > fetched_at + FUTURE_SLACK:
                continue
            return when, when.isoformat()
    return None, str(dict.get(entry, "published") or dict.get(entry, "updated") or "")


def _refuse_entities(data: bytes, feed: str) -> None:
    # The whole body, not only the prolog: comments and padding before a DOCTYPE are cheap for
    # an attacker. The cost is a feed quoting "<!ENTITY" in CDATA being refused, with a log.
    if any(decl in data for decl in _ENTITY_DECLS):
        raise FeedParseError(feed, "document declares XML entities (XXE / entity expansion); refused")


def parse_document(
    data: bytes,
    feed_name: str,
    fetched_at: datetime,
    *,
    content_type: str | None = None,
    base_url: str | None = None,
) -> ParsedFeed:
    """Every usable entry of one feed document, or FeedParseError when there is no feed."""
    if fetched_at.tzinfo is None:
        raise ValueError("fetched_at must be timezone-aware")
    fetched_at = fetched_at.astimezone(UTC)
    _refuse_entities(data, feed_name)
    # without a Content-Type, feedparser flags even a clean document; XML's own rules then apply
    headers = {"content-location": base_url or "", "content-type": content_type or "application/xml"}
    doc = feedparser.parse(io.BytesIO(data), response_headers=headers, sanitize_html=True)
    problem = doc.get("bozo_exception") if doc.get("bozo") else None
    version = str(doc.get("version") or "")
    if not version and not doc.entries:
        reason = f"not a feed ({problem})" if problem else "not a feed (no RSS/RDF/Atom root)"
        raise FeedParseError(feed_name, reason)
    if problem is not None and not doc.entries:
        raise FeedParseError(feed_name, f"malformed: {problem}")
    items: list[NewsItem] = []
    skipped: list[str] = []
    for n, entry in enumerate(doc.entries):
        title = _clip(_text(entry.get("title_detail"), entry.get("title", "")), MAX_TITLE_CHARS)
        raw_summary = entry.get("summary", "")
        detail = entry.get("summary_detail")
        if entry.get("content") and (detail is None or not raw_summary):
            # feedparser copies an Atom <content> into `summary` without its type
            detail = entry["content"][0]
            raw_summary = raw_summary or detail.get("value", "")
        summary = _clip(_text(detail, raw_summary), MAX_SUMMARY_CHARS)
        link = str(entry.get("link") or "").strip() or None
        if link is not None and urlsplit(link).scheme not in ("http", "https"):
            link = None
        guid = str(entry.get("id") or "").strip() or None
        if not (title or summary):
            skipped.append(f"entry {n}: no title and no summary")
            continue
        published, date_text = _published(entry, fetched_at)
        items.append(
            NewsItem(
                id=item_id(feed_name, guid=guid, link=link, title=title, date=date_text),
                feed=feed_name,
                title=title,
                summary=summary,
                link=link,
                published=published or fetched_at,
                fetched_at=fetched_at,
                published_estimated=published is None,
            )
        )
    warning = f"recovered {len(items)} item(s) from a malformed feed: {problem}" if problem else None
    return ParsedFeed(items, skipped, warning, version)


def parse_feed(data: bytes, feed_name: str, fetched_at: datetime) -> list[NewsItem]:
    """The NewsItems of one feed document (see `parse_document` for skips and warnings)."""
    return parse_document(data, feed_name, fetched_at).items
