"""`ops-pipeline status`: is the pipeline healthy, and if not, why; read-only over topics, consumer
groups, bar ages and missing minutes, news age, table counts and each account's broker truth.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql

from connectors.credentials import CredentialSource
from connectors.gaps import chunks
from opsinfra.endpoints import Endpoints
from opsinfra.errors import ConfigError, DecodeError
from opsinfra.kafka_config import admin_config, consumer_config
from opsinfra.kafka_io import read_tail, true_end_offsets
from opsinfra.settings import Settings
from pipeline.status_accounts import AccountStatus, account_statuses, broker_problems, control_changes
from pipeline.status_accounts import HeldPosition as HeldPosition
from pipeline.status_accounts import ReconcileOutcome as ReconcileOutcome
from pipeline.status_accounts import account_tables as account_tables
from schemas.codec import decode, make_codec
from schemas.records import Bar, NewsItem
from schemas.topics import BARS, CONTRACT, NEWS_RAW
from trading.accounts import accounts_from_settings
from trading.calendar import TradingCalendar
from trading.clock import MINUTE

if TYPE_CHECKING:
    from connectors.alpaca_rest import BarHistory, RawBars

TABLES = (
    "lane_telemetry",
    "lane_features",
    "inbound_events_raw",
    "inbound_events_classified",
    "dispatch_recommendations",
    "dispatch_executions",
    "active_positions",
    "lane_watchlist_state",
    "broker_accounts",
    "option_quotes",
    "account_equity",
    "reconcile_events",
    "dead_letters",
)


@dataclass(frozen=True)
class Thresholds:
    stale_bar_s: float = 120.0  # market open and no bar for this long: unhealthy
    max_lag: int = 1000
    max_wait_s: float = 120.0  # a record waiting this long behind a group's commit: not committing
    rest_timeout_s: float = 10.0  # asking Alpaca REST which missing minutes it has bars for


@dataclass
class TopicStatus:
    topic: str
    end_offset: int
    last_hour: int | None


@dataclass
class GroupStatus:
    group: str
    lag: int
    partitions_behind: int
    oldest_wait_s: float | None


@dataclass
class SymbolStatus:
    symbol: str
    last_bar: str | None
    age_s: float | None
    missing_minutes: int  # session minutes not on the topic: candidates (IEX has no bar without trades)
    missing_sample: list[str] = field(default_factory=list)
    missing_confirmed: int | None = None  # of those, minutes REST has a bar for; None: not asked


@dataclass
class Report:
    now: str
    market_open: bool
    topics: list[TopicStatus]
    groups: list[GroupStatus]
    symbols: list[SymbolStatus]
    news_age_s: float | None
    tables: dict[str, int | None]
    problems: list[str]
    accounts: list[AccountStatus] = field(default_factory=list)
    control: list[dict[str, Any]] = field(default_factory=list)  # halts in force, then recent changes
    # how missing_confirmed was found: "rest", "nothing missing", or "candidates (why REST was not
    # asked or did not answer)"
    missing_check: str = "candidates"

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


def _consumer(settings: Settings, bootstrap: str) -> Consumer:
    return Consumer(
        consumer_config(
            settings,
            bootstrap,
            group_id=f"ops-pipeline-status-{time.monotonic_ns()}",
            **{"fetch.queue.backoff.ms": 10, "fetch.wait.max.ms": 10},
        )
    )


class _Prober:
    """Reads the broker timestamp of the message at an offset, with one consumer for many probes."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.consumer = _consumer(settings, bootstrap)

    def at(self, topic: str, partition: int, offset: int, timeout: float = 5.0) -> int | None:
        self.consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is not None and msg.error() is None and msg.partition() == partition:
                return msg.timestamp()[1]
        return None

    def close(self) -> None:
        self.consumer.close()


def _last_hour(prober: _Prober, ends: dict[tuple[str, int], int], since_ms: int) -> int:
    """Messages at or after since_ms, by binary search on message timestamps (not offsets_for_times,
    which some brokers answer wrongly)."""
    total = 0
    for (topic, part), end in ends.items():
        lo, hi = 0, end
        while lo < hi:  # first offset whose timestamp >= since_ms
            mid = (lo + hi) // 2
            ts = prober.at(topic, part, mid)
            if ts is None or ts >= since_ms:
                hi = mid
            else:
                lo = mid + 1
        total += end - lo
    return total


def _groups(
    settings: Settings,
    bootstrap: str,
    prober: _Prober,
    topics: set[str],
    ends: dict[tuple[str, int], int],
    now_ms: int,
) -> list[GroupStatus]:
    admin = AdminClient(admin_config(settings, bootstrap))
    listed = admin.list_consumer_groups(request_timeout=15).result()
    out = []
    for g in sorted(listed.valid, key=lambda g: g.group_id):
        fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g.group_id)])[g.group_id]
        committed = [tp for tp in fut.result().topic_partitions if tp.topic in topics and tp.offset >= 0]
        if not committed:
            continue
        lag, behind = 0, 0
        waits: list[float] = []
        for tp in committed:
            end = max(ends.get((tp.topic, tp.partition), 0), tp.offset)
            if end > tp.offset:
                lag += end - tp.offset
                behind += 1
                ts = prober.at(tp.topic, tp.partition, tp.offset)
                if ts is not None:
                    waits.append((now_ms - ts) / 1000)
        out.append(GroupStatus(g.group_id, lag, behind, max(waits, default=None)))
    return out


def collect(
    settings: Settings,
    endpoints: Endpoints,
    *,
    now: datetime | None = None,
    thresholds: Thresholds | None = None,
    calendar: Any = None,
) -> Report:

    now = now or datetime.now(UTC)
    th = thresholds or Thresholds()
    cal = calendar or TradingCalendar.xnys()
    bootstrap = endpoints.kafka_bootstrap_servers
    codec = make_codec(endpoints.schema_registry_url)
    problems: list[str] = []
    now_ms = int(now.timestamp() * 1000)

    names = [settings.topic(t.name) for t in CONTRACT]
    ends = true_end_offsets(settings, bootstrap, names)
    topics = []
    prober = _Prober(settings, bootstrap)
    try:
        for name in names:
            mine = {k: v for k, v in ends.items() if k[0] == name}
            total = sum(mine.values())
            recent = _last_hour(prober, mine, now_ms - 3_600_000) if total else 0
            topics.append(TopicStatus(name, total, recent))
        groups = _groups(settings, bootstrap, prober, set(names), ends, now_ms)
    finally:
        prober.close()
    missing_topics = [n for n in names if not any(k[0] == n for k in ends)]
    problems += [f"topic {n} does not exist (run `ops-pipeline topics create`)" for n in missing_topics]

    for g in groups:
        if g.lag > th.max_lag:
            problems.append(f"consumer group {g.group} lags by {g.lag} records")
        if g.oldest_wait_s is not None and g.oldest_wait_s > th.max_wait_s:
            problems.append(
                f"consumer group {g.group} is not committing: a record has waited {g.oldest_wait_s:.0f}s"
            )

    per_part = 420 * max(1, -(-len(settings.pipeline_symbols) // BARS.partitions)) + 100
    last: dict[str, datetime] = {}
    closes: dict[str, float] = {}  # the latest bar's close: marks the desk's positions
    seen: set[tuple[str, datetime]] = set()
    bars_topic = settings.topic(BARS.name)
    for m in read_tail(settings, bootstrap, bars_topic, per_partition=per_part) if ends else []:
        try:
            bar = decode(
                codec, Bar, m.value, m.headers, topic=bars_topic, partition=m.partition, offset=m.offset
            )
        except DecodeError:
            continue
        seen.add((bar.symbol, bar.ts))
        if bar.symbol not in last or bar.ts >= last[bar.symbol]:
            last[bar.symbol] = bar.ts
            closes[bar.symbol] = bar.close
    market_open = cal.is_open(now)
    session = _current_or_last_session(cal, now)
    symbols = []
    missing_by_symbol: dict[str, list[datetime]] = {}
    for sym in settings.pipeline_symbols:
        ts = last.get(sym)
        age = (now - ts - MINUTE).total_seconds() if ts else None
        missing: list[datetime] = []
        if session is not None:
            end = min(session.close, now - MINUTE)
            missing = [m for m in cal.minutes(session.open, end) if (sym, m) not in seen]
        missing_by_symbol[sym] = missing
        symbols.append(
            SymbolStatus(
                sym, ts.isoformat() if ts else None, age, len(missing), [m.isoformat() for m in missing[:5]]
            )
        )
        if market_open and (age is None or age > th.stale_bar_s):
            problems.append(
                f"{sym}: no bar for {'ever' if age is None else f'{age:.0f}s'} while the market is open"
            )

    confirmed, missing_check = confirm_missing(
        missing_by_symbol, lambda: _rest_history(settings), timeout_s=th.rest_timeout_s
    )
    if confirmed is not None:
        for ss in symbols:
            ss.missing_confirmed = confirmed.get(ss.symbol, 0)

    news_topic = settings.topic(NEWS_RAW.name)
    news_last: datetime | None = None
    for m in read_tail(settings, bootstrap, news_topic, per_partition=20) if ends else []:
        try:
            item = decode(
                codec, NewsItem, m.value, m.headers, topic=news_topic, partition=m.partition, offset=m.offset
            )
        except DecodeError:
            continue
        news_last = max(news_last or item.fetched_at, item.fetched_at)
    news_age = (now - news_last).total_seconds() if news_last else None

    report = Report(
        now.isoformat(),
        market_open,
        topics,
        groups,
        symbols,
        news_age,
        _table_counts(endpoints.database_url, problems),
        problems,
    )
    report.accounts = account_statuses(settings, bootstrap, codec, now, closes) if ends else []
    report.problems += broker_problems(report.accounts, accounts_from_settings(settings), market_open)
    report.missing_check = missing_check
    report.control = control_changes(settings, bootstrap) if ends else []
    halted = {c["account"]: c for c in report.control if c.get("halted")}
    report.problems += [f"account {a}: HALTED by the operator since {c['at']}: {c['reason']}"
                        for a, c in sorted(halted.items())]
    return report



def _rest_history(settings: Settings) -> BarHistory:
    """Alpaca REST with the stage's keys and feed; CredentialsUnavailable (a ConfigError) if none."""
    from connectors.alpaca_rest import AlpacaBarHistory  # alpaca-py (and pandas), only with keys

    creds = CredentialSource.from_settings(settings).load(reason="status")
    return AlpacaBarHistory(creds, feed=settings.alpaca_feed, url=settings.alpaca_data_url)


def confirm_missing(
    missing: Mapping[str, Sequence[datetime]],
    history: Callable[[], BarHistory],
    *,
    timeout_s: float,
) -> tuple[dict[str, int] | None, str]:
    """How many of each symbol's missing minutes Alpaca REST has a bar for: real gaps, which a
    backfill fills, as opposed to minutes without trades (IEX has no bar for them). `history` is
    called only when something is missing. Without credentials, or when REST fails or takes over
    `timeout_s`, the answer is (None, "candidates (why)"): the counts stay candidates."""

    if not any(missing.values()):
        return dict.fromkeys(missing, 0), "nothing missing"
    try:
        rest = history()
    except ConfigError as exc:
        return None, f"candidates ({exc})"
    found = dict.fromkeys(missing, 0)
    deadline = time.monotonic() + timeout_s
    for chunk in chunks(missing):
        answer = _within(partial(rest.fetch, chunk.symbols, chunk.start, chunk.end), deadline)
        if isinstance(answer, str):
            why = f"timed out after {timeout_s:g}s" if answer == "timed out" else answer
            return None, f"candidates (Alpaca REST {why})"
        for sym, bars in answer.items():
            asked = set(chunk.asked.get(sym, ()))
            found[sym] = found.get(sym, 0) + sum(1 for b in bars if _bar_start(b) in asked)
    return found, "rest"


def _within(call: Callable[[], RawBars], deadline: float) -> RawBars | str:
    """call() in a daemon thread, as alpaca-py's requests have no timeout: its answer, or why not."""
    out: list[RawBars | str] = []

    def target() -> None:
        try:
            out.append(call())
        except Exception as exc:  # whatever REST raises, status falls back to the candidates
            out.append(f"failed: {type(exc).__name__}")

    worker = threading.Thread(target=target, name="status-rest", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    return out[0] if out else "timed out"


def _bar_start(raw: Mapping[str, Any]) -> datetime | None:
    t = raw.get("t")
    try:
        return datetime.fromisoformat(t).astimezone(UTC) if isinstance(t, str) else None
    except ValueError:
        return None



def _current_or_last_session(cal: Any, now: datetime) -> Any:
    for back in range(0, 10):
        s = cal.session((now - timedelta(days=back)).date())
        if s is not None and s.open <= now:
            return s
    return None


def _table_counts(database_url: str, problems: list[str]) -> dict[str, int | None]:

    counts: dict[str, int | None] = {}
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            conn.execute("SET statement_timeout = '10s'")
            for t in TABLES:
                try:
                    row = conn.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
                    ).fetchone()
                    counts[t] = int(row[0]) if row else None
                except psycopg.errors.UndefinedTable:
                    conn.rollback()
                    counts[t] = None
                    problems.append(f"table {t} is missing (run `ops-pipeline migrate`)")
    except psycopg.OperationalError as exc:
        problems.append(f"database unreachable: {type(exc).__name__}")
    return counts
