"""The Postgres sink against the real broker and PostgreSQL: tables, merge rules, replays.

The helpers here (records, a sink on a thread, drain and checksum queries) serve the sink's
other integration and fault tests too.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import (
    Bar,
    BrokerAccount,
    BrokerPosition,
    EquityPoint,
    Execution,
    Features,
    GateResult,
    NewsItem,
    OptionQuote,
    Position,
    Recommendation,
    ReconcileEvent,
    Record,
    ScoredNews,
    WatchlistEntry,
)
from schemas.topic_io import RecordProducer
from schemas.topics import (
    BARS,
    CONTRACT,
    EXECUTIONS,
    FEATURES,
    NEWS_RAW,
    NEWS_SCORED,
    POSITIONS,
    SIGNALS,
    WATCHLIST,
    TopicSpec,
)
from sinks.postgres import PostgresSink, SinkConfig, SinkStats
from tests.samples import sample_records

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
KEYS = {  # natural key of every sink table, as the old runbook reads it
    "lane_telemetry": "ticker, ts",
    "lane_features": "ticker, ts",
    "inbound_events_raw": "event_id",
    "inbound_events_classified": "event_id, ticker",
    "dispatch_recommendations": "recommendation_id",
    "dispatch_executions": "recommendation_id, account_name",
    "active_positions": "account_name, ticker",
    "lane_watchlist_state": "ticker, ts",
    "broker_accounts": "account_name, as_of",
    "option_quotes": "contract, as_of",
    "account_equity": "account_name, ts",
    "reconcile_events": "account_name, decided_at, kind, coalesce(symbol, '')",
}
Sent = list[tuple[TopicSpec, Record]]


# -- records ----------------------------------------------------------------------------------
def minute(m: int) -> datetime:
    return T0 + timedelta(minutes=m)


def rec_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ops-pipeline-test/{i}"))


def bar(sym: str, m: int, rev: int = 0) -> Bar:
    return Bar(sym, minute(m), 100.0, 101.0, 99.0, 100.0 + rev, 1000 + m, 10, 100.2, "live", rev)


def feat(sym: str, m: int, rev: int = 0) -> Features:
    return Features(sym, minute(m), 100.0 + rev, 99.5, 98.0, 1000 + m, 950.25, 1.0526, False, 55.0,
                    0.1, 0.2, -0.1, 101.0, 100.0, 99.0, 60 + m, rev)


def signal(i: int, sym: str = "AAPL") -> Recommendation:
    return Recommendation(rec_id(i), sym, minute(i), "BUY", 0.8, 1.0, 0.8, 0.3, "test",
                          {"close": 100.0, "sma_20": None}, "test-1")


def execution(i: int, account: str, status: str, sym: str = "AAPL") -> Execution:
    gates = [GateResult("confidence", status != "SKIPPED", 0.8, 0.7, "ok")]
    failure = "confidence below limit" if status == "SKIPPED" else (
        "rejected by broker" if status == "FAILED" else None)
    return Execution(rec_id(i), account, sym, "BUY", status, gates, failure, 10.0, 100.0,
                     minute(i) if i % 2 else None, None, None,
                     "simulate" if status in ("SIMULATED", "SKIPPED") else "alpaca-paper",
                     minute(i) + timedelta(seconds=5 + len(status)))


def position(account: str, sym: str, m: int, status: str = "OPEN") -> Position:
    return Position(account, sym, 10.0 + m, 100.0, minute(0), 95.0, 110.0, status, 0.0, minute(m),
                    "target" if status == "CLOSED" else None)


def news(i: int) -> NewsItem:
    return NewsItem(f"n-{i}", "test", f"headline {i}", "summary", None, minute(i), minute(i))


def scored(i: int, ticker: str) -> ScoredNews:
    return ScoredNews(f"n-{i}", ticker, [ticker], "positive", 0.9, "test", minute(i))


def watch(sym: str, m: int) -> WatchlistEntry:
    return WatchlistEntry(sym, minute(m), 0.5 + m / 100, 1, 1.2, 0.01, None, ["volume"])


def workload(start: int, count: int) -> Sent:
    """Every kind of record, with repeats and later revisions, for keys derived from `start`."""
    out: Sent = []
    accounts = ("acct-a", "acct-b")
    for i in range(start, start + count):
        sym = ("AAPL", "MSFT", "NVDA", "TSLA")[i % 4]
        out += [(BARS, bar(sym, i)), (FEATURES, feat(sym, i)), (NEWS_RAW, news(i)),
                (NEWS_SCORED, scored(i, sym)), (WATCHLIST, watch(sym, i))]
        if i % 3 == 0:  # an updated bar, and a repeat of an item the feed sent again
            out += [(BARS, bar(sym, i, rev=1)), (NEWS_RAW, news(i)), (FEATURES, feat(sym, i, 1))]
        if i % 5 == 0:  # a recommendation decided by two accounts, one order fills later
            out += [(SIGNALS, signal(i, sym)), (EXECUTIONS, execution(i, accounts[0], "SIMULATED", sym)),
                    (EXECUTIONS, execution(i, accounts[1], "SUBMITTED", sym))]
            if i % 10 == 0:
                out.append((EXECUTIONS, execution(i, accounts[1], "FILLED", sym)))
        if i % 7 == 0:
            out += [(POSITIONS, position(accounts[i % 2], sym, i)),
                    (POSITIONS, position(accounts[i % 2], sym, i + 1, "CLOSED"))]
    return out


def expected_keys(sent: Sent) -> dict[str, set[tuple[str, ...]]]:
    """The distinct natural keys per table, as text, that `sent` must leave."""
    keys: dict[str, set[tuple[str, ...]]] = {t: set() for t in KEYS}
    for _, r in sent:
        if isinstance(r, Bar):
            keys["lane_telemetry"].add((r.symbol, r.ts.isoformat()))
        elif isinstance(r, Features):
            keys["lane_features"].add((r.symbol, r.ts.isoformat()))
        elif isinstance(r, NewsItem):
            keys["inbound_events_raw"].add((r.id,))
        elif isinstance(r, ScoredNews):
            keys["inbound_events_classified"].add((r.id, r.ticker))
        elif isinstance(r, Recommendation):
            keys["dispatch_recommendations"].add((r.id,))
        elif isinstance(r, Execution):
            keys["dispatch_executions"].add((r.recommendation_id, r.account))
            keys["dispatch_recommendations"].add((r.recommendation_id,))
        elif isinstance(r, Position | BrokerPosition):
            keys["active_positions"].add((r.account, r.symbol))
        elif isinstance(r, WatchlistEntry):
            keys["lane_watchlist_state"].add((r.symbol, r.ts.isoformat()))
        elif isinstance(r, BrokerAccount):
            keys["broker_accounts"].add((r.account, r.as_of.isoformat()))
        elif isinstance(r, OptionQuote):
            keys["option_quotes"].add((r.contract, r.as_of.isoformat()))
        elif isinstance(r, EquityPoint):
            keys["account_equity"].add((r.account, r.ts.isoformat()))
        elif isinstance(r, ReconcileEvent):
            keys["reconcile_events"].add((r.account, r.decided_at.isoformat(), r.kind, r.symbol or ""))
    return keys


# -- running the sink -------------------------------------------------------------------------
def produce(settings: Settings, bootstrap: str, sent: Sent) -> Counter[str]:
    """Sends the records; returns how many went to each physical topic."""
    counts: Counter[str] = Counter()
    with RecordProducer(settings, bootstrap, HeaderCodec()) as producer:
        for spec, record in sent:
            producer.send(spec, record)
            counts[settings.topic(spec.name)] += 1
    return counts


@dataclass
class RunningSink:
    sink: PostgresSink
    thread: threading.Thread

    @property
    def stats(self) -> SinkStats:
        return self.sink.stats


@contextlib.contextmanager
def running_sink(
    settings: Settings, bootstrap: str, database_url: str, **config: Any
) -> Iterator[RunningSink]:
    """A sink on a thread, stopped on exit; re-raises whatever the sink raised."""
    config.setdefault("max_latency_s", 0.2)
    sink = PostgresSink(settings, Endpoints(bootstrap, database_url, None, False), SinkConfig(**config))
    stop, failures = threading.Event(), []

    def target() -> None:
        try:
            sink.run(stop)
        except BaseException as exc:
            failures.append(exc)
            traceback.print_exc()

    worker = threading.Thread(target=target, name="sink", daemon=True)
    worker.start()
    try:
        yield RunningSink(sink, worker)
    finally:
        stop.set()
        worker.join(60)
    assert not worker.is_alive(), "the sink did not stop"
    if failures:
        raise failures[0]


def stored_offsets(database_url: str, sink: str = "postgres") -> Counter[str]:
    """Records the sink has committed per topic (offsets start at 0 on fresh topics)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT topic, sum(next_offset) FROM sink_offsets WHERE sink = %s GROUP BY topic", (sink,)
        ).fetchall()
    return Counter({t: int(n) for t, n in rows})


def wait_drained(database_url: str, produced: Counter[str], *, sink: str = "postgres",
                 timeout: float = 90.0, running: RunningSink | None = None) -> None:
    """Until the stored offsets cover every produced record (a deadline, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        assert running is None or running.thread.is_alive(), "the sink stopped (see its traceback)"
        got = stored_offsets(database_url, sink)
        if all(got[t] >= n for t, n in produced.items()):
            assert all(got[t] == n for t, n in produced.items()), (got, produced)
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"sink not drained after {timeout}s: stored {dict(got)}, produced {dict(produced)}"
            )
        time.sleep(0.1)


def table_keys(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, ...]]:
    rows = conn.execute(f"SELECT {KEYS[table]} FROM {table}").fetchall()
    return [tuple(v.astimezone(UTC).isoformat() if isinstance(v, datetime) else str(v) for v in r)
            for r in rows]


def checksums(conn: psycopg.Connection[Any], tables: Sequence[str] = tuple(KEYS)) -> dict[str, str]:
    out = {}
    for t in tables:
        row = conn.execute(
            f"SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
        ).fetchone()
        assert row is not None
        out[t] = row[0]
    return out


EXECUTION_RANK = ("SUBMITTED", "SKIPPED", "SIMULATED", "FAILED", "FILLED")  # the later one wins


def assert_runbook_queries_hold(conn: psycopg.Connection[Any], executions: Iterable[Execution]) -> None:
    """What the old runbook reads of dispatch_executions, row by row against the records sent: the
    bar each decision used (sim_json.bar_used.timestamp: the record's bar_used_ts, its decided_at
    when it names none), its quantity and price, all from the record that won the merge. (Counting
    PROCESSING rows or NULL bars checked nothing: the schema and the sink rule both out.)"""
    won: dict[tuple[str, str], Execution] = {}
    for e in executions:
        k = (e.recommendation_id, e.account)
        if k not in won or EXECUTION_RANK.index(e.status) > EXECUTION_RANK.index(won[k].status):
            won[k] = e
    rows = conn.execute(
        "SELECT recommendation_id, account_name, status, sim_json->'bar_used'->>'timestamp', "
        "(sim_json->>'qty')::float8, (sim_json->>'price')::float8 FROM dispatch_executions"
    ).fetchall()
    got = {(str(i), a): tuple(rest) for i, a, *rest in rows}
    assert got == {
        k: (e.status, (e.bar_used_ts or e.decided_at).isoformat(), e.qty, e.price) for k, e in won.items()
    }


def assert_tables_match(conn: psycopg.Connection[Any], sent: Sent) -> None:
    """Exactly the distinct keys produced (none twice: each is a unique key); the latest revision and
    status won."""
    for table, keys in expected_keys(sent).items():
        found = table_keys(conn, table)
        missing, extra = sorted(keys - set(found))[:5], sorted(set(found) - keys)[:5]
        assert set(found) == keys, f"{table}: missing {missing}, extra {extra}"
    revisions: dict[tuple[str, datetime], int] = {}
    for _, r in sent:
        if isinstance(r, Bar):
            revisions[(r.symbol, r.ts)] = max(r.revision, revisions.get((r.symbol, r.ts), -1))
    got = {(t, ts): rev for t, ts, rev in conn.execute("SELECT ticker, ts, revision FROM lane_telemetry")}
    assert got == revisions
    statuses: dict[tuple[str, str], str] = {}
    rank = ("SUBMITTED", "SKIPPED", "SIMULATED", "FAILED", "FILLED")
    for _, r in sent:
        if isinstance(r, Execution):
            k = (r.recommendation_id, r.account)
            if k not in statuses or rank.index(r.status) > rank.index(statuses[k]):
                statuses[k] = r.status
    got_status = {(str(i), a): s for i, a, s in conn.execute(
        "SELECT recommendation_id, account_name, status FROM dispatch_executions")}
    assert got_status == statuses
    assert_runbook_queries_hold(conn, [r for _, r in sent if isinstance(r, Execution)])


# -- tests ------------------------------------------------------------------------------------
def test_every_contract_topic_lands_in_its_table(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    samples = sample_records(T0)
    sent = [(spec, samples[spec.name]) for spec in CONTRACT]
    produced = produce(provisioned, kafka_bootstrap, sent)
    with running_sink(provisioned, kafka_bootstrap, database_url) as running:
        wait_drained(database_url, produced, running=running)
    with psycopg.connect(database_url) as conn:
        assert_tables_match(conn, sent)
        rec = conn.execute(
            "SELECT ts, ticker, action, confidence, status, risk_gate_json, failure_reason, processed_at "
            "FROM dispatch_recommendations").fetchone()
        assert rec == (T0, "AAPL", "BUY", 0.8, "SIMULATED",
                       {"large-100k": [{"name": "confidence", "passed": True, "value": 0.8, "limit": 0.7,
                                        "reason": "ok"}]}, None, T0)
        ex = conn.execute("SELECT simulated_ts, sim_json, status FROM dispatch_executions").fetchone()
        assert ex == (T0, {"bar_used": {"timestamp": T0.isoformat()}, "price": 190.12, "qty": 10.0,
                           "mode": "simulate"}, "SIMULATED")
        lf = conn.execute("SELECT volume_current, volume_avg_20, volume_ratio, volume_surge, sma_20, sma_50 "
                          "FROM lane_features").fetchone()
        assert lf is not None and lf[0] == 12000 and str(lf[1]) == "8000.00" and str(lf[2]) == "1.5000"
        topics = {t for (t,) in conn.execute("SELECT DISTINCT topic FROM sink_offsets")}
        assert topics == {provisioned.topic(s.name) for s in CONTRACT}  # physical names
        # positions (AAPL, the desk's) and broker.positions (an external QCOM call) share a table
        pos = conn.execute(
            "SELECT ticker, qty, avg_price, status, origin, asset_class, market_value, unrealized_pl, "
            "stop, expiration::text, option_type, strike, multiplier FROM active_positions ORDER BY ticker"
        ).fetchall()
        assert pos == [("AAPL", 10.0, 190.12, "OPEN", "pipeline", "us_equity", None, None, 186.3, None,
                        None, None, None),
                       ("QCOM260206C00150000", 2.0, 3.1, "OPEN", "external", "us_option", 840.0, 220.0,
                        None, "2026-02-06", "call", 150.0, 100.0)]
        acct = conn.execute(
            "SELECT cash, buying_power, options_buying_power, equity, trading_blocked, trigger, "
            "open_orders->0->>'symbol', open_orders->0->>'submitted_at' FROM broker_accounts").fetchone()
        assert acct == (95_000.0, 190_000.0, 95_000.0, 121_000.0, False, "poll", "QCOM260206C00150000",
                        T0.isoformat())
        assert conn.execute("SELECT bid, ask, iv, delta, source FROM option_quotes").fetchone() == (
            4.1, 4.3, 0.31, 0.52, "snapshot")
        assert conn.execute("SELECT equity, cash, unrealized_pnl, open_positions, source "
                            "FROM account_equity").fetchone() == (121_000.0, 95_000.0, 220.0, 1, "broker")
        assert conn.execute("SELECT kind, symbol, desk, broker, action FROM reconcile_events").fetchone() == (
            "closed_at_broker", "AAPL", "OPEN 10 @ 190.12", "flat", "adopted")


def test_replaying_a_range_changes_no_checksum(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    sent = workload(0, 60)
    produced = produce(provisioned, kafka_bootstrap, sent)
    with running_sink(provisioned, kafka_bootstrap, database_url):
        wait_drained(database_url, produced)
        with psycopg.connect(database_url) as conn:
            assert_tables_match(conn, sent)
            before = checksums(conn)
        produced += produce(provisioned, kafka_bootstrap, sent)  # the same records, delivered again
        wait_drained(database_url, produced)
    with psycopg.connect(database_url) as conn:
        assert checksums(conn) == before
        conn.execute("DELETE FROM sink_offsets")  # and the same offsets read again from the start
    with running_sink(provisioned, kafka_bootstrap, database_url):
        wait_drained(database_url, produced)
    with psycopg.connect(database_url) as conn:
        assert checksums(conn) == before
        assert_tables_match(conn, sent)


def test_merge_rules_do_not_depend_on_arrival_order(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    one = [signal(1), execution(1, "a", "SUBMITTED"), execution(1, "b", "SKIPPED"),
           execution(1, "a", "FILLED"), bar("AAPL", 1, 0), bar("AAPL", 1, 2), bar("AAPL", 1, 1),
           position("a", "AAPL", 3, "OPEN"), position("a", "AAPL", 5, "CLOSED")]
    # the same facts for other keys, in the reverse order: executions before their signal, the
    # fill before the submission, older revisions and position updates last
    two = [execution(2, "a", "FILLED"), execution(2, "b", "SKIPPED"), execution(2, "a", "SUBMITTED"),
           signal(2), bar("MSFT", 1, 2), bar("MSFT", 1, 1), bar("MSFT", 1, 0),
           position("a", "MSFT", 5, "CLOSED"), position("a", "MSFT", 3, "OPEN")]
    specs = {Recommendation: SIGNALS, Execution: EXECUTIONS, Bar: BARS, Position: POSITIONS}
    with running_sink(provisioned, kafka_bootstrap, database_url):
        produced = produce(provisioned, kafka_bootstrap, [(specs[type(r)], r) for r in one])
        for r in two:  # one record per batch: every step crosses a transaction
            produced += produce(provisioned, kafka_bootstrap, [(specs[type(r)], r)])
            wait_drained(database_url, produced)
        wait_drained(database_url, produced)
    with psycopg.connect(database_url) as conn:
        recs = conn.execute(
            "SELECT ticker, action, confidence, status, risk_gate_json, failure_reason, processed_at "
            "FROM dispatch_recommendations ORDER BY ts").fetchall()
        assert recs[0][3] == "FILLED" and recs[0][5] == "confidence below limit"
        assert set(recs[0][4]) == {"a", "b"}
        assert recs[0][:3] == recs[1][:3] and recs[0][3:6] == recs[1][3:6]
        execs = conn.execute(
            "SELECT ticker, account_name, status, sim_json->'bar_used' FROM dispatch_executions "
            "ORDER BY recommendation_id, account_name").fetchall()
        assert [e[2] for e in execs] == ["FILLED", "SKIPPED", "FILLED", "SKIPPED"]
        bars = conn.execute("SELECT ticker, revision, close FROM lane_telemetry ORDER BY ticker")
        assert bars.fetchall() == [("AAPL", 2, 102.0), ("MSFT", 2, 102.0)]
        positions = conn.execute("SELECT ticker, status, qty FROM active_positions ORDER BY ticker")
        assert positions.fetchall() == [("AAPL", "CLOSED", 15.0), ("MSFT", "CLOSED", 15.0)]
        assert_runbook_queries_hold(conn, [r for r in one + two if isinstance(r, Execution)])
