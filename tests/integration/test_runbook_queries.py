"""The old runbook's queries against the real tables (issue 16): each as the old system wrote it,
what it returns now, and its replacement (db/migrations/0004_runbook_views.sql, README "Runbook"),
on decisions of two accounts written by the sink, with answers known in advance.

The old system had one account (one row per recommendation and decision), risk_gate_json keyed by
gate name and a `dispatcher_runs` table of scheduler runs. The query texts below are the README's,
verbatim (a test checks it), so what the README tells an operator is what was run here.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from db import migrate
from opsinfra.settings import Settings
from schemas.records import Execution, GateResult, Recommendation
from schemas.topics import EXECUTIONS, SIGNALS
from tests.integration.test_sink import Sent, produce, running_sink, wait_drained

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# -- the queries: old (as the old runbook wrote them) and their replacements ------------------------
OLD_Q3 = ("SELECT recommendation_id, COUNT(*) FROM dispatch_executions "
          "GROUP BY recommendation_id HAVING COUNT(*) > 1")
NEW_Q3 = ("SELECT recommendation_id, account_name, COUNT(*) FROM dispatch_executions "
          "GROUP BY recommendation_id, account_name HAVING COUNT(*) > 1")
OLD_Q4 = ("SELECT run_id, started_at, finished_at, status, recommendations_processed FROM dispatcher_runs "
          "WHERE started_at > NOW() - INTERVAL '10 minutes' ORDER BY started_at DESC")
NEW_Q4 = ("SELECT account_name, COUNT(*) AS runs, SUM(recommendations_processed), MAX(finished_at) "
          "FROM dispatcher_runs WHERE started_at > NOW() - INTERVAL '10 minutes' GROUP BY account_name")
OLD_SKIP = ("SELECT risk_gate_json->'confidence'->>'reason' AS reason, COUNT(*) "
            "FROM dispatch_recommendations WHERE status = 'SKIPPED' GROUP BY 1")
OLD_SKIP_ON_VIEW = ("SELECT risk_gate_json->'confidence'->>'reason' AS reason, COUNT(*) "
                    "FROM dispatch_recommendations_by_account WHERE status = 'SKIPPED' GROUP BY 1")
NEW_SKIP = ("SELECT account_name, gate, reason, COUNT(*) FROM dispatch_skip_reasons "
            "GROUP BY 1, 2, 3 ORDER BY 4 DESC")
OLD_Q5 = ("SELECT COUNT(*) FROM dispatch_executions "
          "WHERE status = 'SKIPPED' AND simulated_ts::date = CURRENT_DATE")
NEW_Q5 = ("SELECT account_name, COUNT(*) FROM dispatch_executions "
          "WHERE status = 'SKIPPED' AND simulated_ts::date = CURRENT_DATE GROUP BY account_name")
NEW_Q5_ALL = ("SELECT COUNT(*) FROM dispatch_recommendations "
              "WHERE status = 'SKIPPED' AND processed_at::date = CURRENT_DATE")
OLD_STUCK = ("SELECT recommendation_id, ticker, processed_at FROM dispatch_recommendations "
             "WHERE status = 'PROCESSING' AND processed_at < NOW() - INTERVAL '5 minutes'")
NEW_STUCK = ("SELECT recommendation_id, account_name, ticker, simulated_ts, client_order_id "
             "FROM dispatch_executions "
             "WHERE status = 'SUBMITTED' AND simulated_ts < NOW() - INTERVAL '5 minutes'")
QUERIES = {name: q for name, q in dict(globals()).items() if name.startswith(("OLD_", "NEW_"))}
VIEWS = ("dispatch_recommendations_by_account", "dispatch_skip_reasons", "dispatcher_runs")

A, B = "acct-a", "acct-b"


def rid(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ops-pipeline-runbook-test/{i}"))


def gates(*, confidence: bool = True, session: bool = True, held: bool = True,
          symbol: str = "X") -> list[GateResult]:
    """The first three gates of a decision, in their fixed order (the rest are left out)."""
    return [
        GateResult("confidence", confidence, 0.8 if confidence else 0.5, 0.7,
                   "confidence >= minimum" if confidence else "confidence below minimum"),
        GateResult("session", session, "2026-11-20 10:00:00 ET", "09:35-15:45 ET",
                   "inside the entry window" if session else "outside the entry window"),
        GateResult("already_held", held, "flat" if held else "10 held", "one entry per symbol",
                   "ok" if held else f"{symbol} already held"),
    ]


def decision(i: int, account: str, status: str, symbol: str, at: datetime,
             gs: list[GateResult] | None = None, failure: str | None = None) -> Execution:
    gs = gs if gs is not None else gates(symbol=symbol)
    first = next((g for g in gs if not g.passed), None)
    if status == "SKIPPED":
        assert first is not None
        failure = f"{first.name}: {first.reason}"
    live = status in ("SUBMITTED", "FILLED", "FAILED")
    return Execution(rid(i), account, symbol, "BUY", status, gs, failure, 10.0, 100.0,
                     at - timedelta(seconds=30), f"broker-{i}" if status == "FILLED" else None,
                     f"coid-{account}-{i}" if live else None, "alpaca-paper" if live else "simulate", at)


def signal(i: int, symbol: str, ts: datetime, confidence: float = 0.8) -> Recommendation:
    return Recommendation(rid(i), symbol, ts, "BUY", confidence, 1.0, confidence, 0.2, "trend up",
                          {"close": 100.0}, "test-1")


def scenario(base: datetime) -> Sent:
    """Decisions of two accounts in three minutes of their clock, `base` the first (7 minutes ago):

    minute 0: rec 1 AAPL  a SIMULATED,                 b SKIPPED (confidence below minimum)
              rec 2 MSFT  a SKIPPED (outside session), b SKIPPED (confidence below minimum)
    minute 1: rec 3 NVDA  a SUBMITTED then FILLED,     b SKIPPED (NVDA already held)
              rec 4 TSLA  a SUBMITTED, nothing since,  b FAILED (rejected by broker)
    minute 5: rec 5 GOOGL a SUBMITTED (2 to 3 min ago)
              rec 6 AMZN                               b SIMULATED
    rec 7 META: a signal no account has decided yet.
    """
    def at(m: int, s: int) -> datetime:
        return base + timedelta(minutes=m, seconds=s)

    low = gates(confidence=False)
    out: Sent = [(SIGNALS, signal(i, sym, base - timedelta(minutes=1)))
                 for i, sym in ((1, "AAPL"), (2, "MSFT"), (3, "NVDA"), (4, "TSLA"), (5, "GOOGL"),
                                (6, "AMZN"), (7, "META"))]
    out += [
        (EXECUTIONS, decision(1, A, "SIMULATED", "AAPL", at(0, 1))),
        (EXECUTIONS, decision(1, B, "SKIPPED", "AAPL", at(0, 2), low)),
        (EXECUTIONS, decision(2, A, "SKIPPED", "MSFT", at(0, 3), gates(session=False))),
        (EXECUTIONS, decision(2, B, "SKIPPED", "MSFT", at(0, 4), low)),
        (EXECUTIONS, decision(3, A, "SUBMITTED", "NVDA", at(1, 1))),
        (EXECUTIONS, decision(3, A, "FILLED", "NVDA", at(1, 1))),  # a later status keeps decided_at
        (EXECUTIONS, decision(3, B, "SKIPPED", "NVDA", at(1, 2), gates(held=False, symbol="NVDA"))),
        (EXECUTIONS, decision(4, A, "SUBMITTED", "TSLA", at(1, 5))),
        (EXECUTIONS, decision(4, B, "FAILED", "TSLA", at(1, 9), failure="rejected by broker")),
        (EXECUTIONS, decision(5, A, "SUBMITTED", "GOOGL", at(5, 1))),
        (EXECUTIONS, decision(6, B, "SIMULATED", "AMZN", at(5, 3))),
    ]
    return out


def rows(conn: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    return [tuple(str(v) if isinstance(v, uuid.UUID) else v for v in r) for r in conn.execute(query)]


def noon_here(conn: psycopg.Connection[Any], now: datetime) -> None:
    """A session time zone in which it is about noon now, so every row of the last minutes is
    `CURRENT_DATE` whatever the hour the test runs at (UTC+12 at 00:xx UTC ... UTC-11 at 23:xx;
    the Etc/GMT names count west positive)."""
    conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(f"Etc/GMT{now.hour - 12:+d}")))


# -- tests --------------------------------------------------------------------------------------
def test_every_query_answers_what_it_was_written_for(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    now = datetime.now(UTC)
    base = now.replace(second=0, microsecond=0) - timedelta(minutes=7)  # 2 min of margin below
    produced = produce(provisioned, kafka_bootstrap, scenario(base))
    with running_sink(provisioned, kafka_bootstrap, database_url) as running:
        wait_drained(database_url, produced, running=running)

    with psycopg.connect(database_url, autocommit=True) as conn:
        noon_here(conn, now)

        # Query 3: every recommendation both accounts decided is flagged; none is a duplicate
        assert sorted(rows(conn, OLD_Q3)) == sorted((rid(i), 2) for i in (1, 2, 3, 4))
        assert rows(conn, NEW_Q3) == []

        # Query 4: one run per (account, minute) of decisions, with its counts
        runs = rows(conn, "SELECT account_name, run_minute, run_id, started_at, finished_at, status, "
                          "recommendations_processed, executed, submitted, skipped, failed, exits "
                          "FROM dispatcher_runs ORDER BY run_minute, account_name")
        m = [base + timedelta(minutes=k) for k in (0, 1, 5)]

        def run(acct: str, k: int, first_s: int, last_s: int, status: str, *counts: int) -> tuple[Any, ...]:
            return (acct, m[k], f"{acct}:{m[k]:%Y-%m-%dT%H:%MZ}", m[k] + timedelta(seconds=first_s),
                    m[k] + timedelta(seconds=last_s), status, *counts)

        # counts: recommendations_processed, executed, submitted, skipped, failed, exits
        assert runs == [
            run(A, 0, 1, 3, "COMPLETED", 2, 1, 0, 1, 0, 0),
            run(B, 0, 2, 4, "COMPLETED", 2, 0, 0, 2, 0, 0),
            run(A, 1, 1, 5, "RUNNING", 2, 1, 1, 0, 0, 0),
            run(B, 1, 2, 9, "COMPLETED_WITH_FAILURES", 2, 0, 0, 1, 1, 0),
            run(A, 2, 1, 1, "RUNNING", 1, 0, 1, 0, 0, 0),
            run(B, 2, 3, 3, "COMPLETED", 1, 1, 0, 0, 0, 0),
        ]
        old_q4 = rows(conn, OLD_Q4)  # every run of the last 10 minutes, latest first
        assert [(r[0], r[4]) for r in old_q4] == [
            (f"{B}:{m[2]:%Y-%m-%dT%H:%MZ}", 1), (f"{A}:{m[2]:%Y-%m-%dT%H:%MZ}", 1),
            (f"{B}:{m[1]:%Y-%m-%dT%H:%MZ}", 2), (f"{A}:{m[1]:%Y-%m-%dT%H:%MZ}", 2),
            (f"{B}:{m[0]:%Y-%m-%dT%H:%MZ}", 2), (f"{A}:{m[0]:%Y-%m-%dT%H:%MZ}", 2),
        ]
        assert sorted(rows(conn, NEW_Q4)) == [(A, 3, 5, m[2] + timedelta(seconds=1)),
                                              (B, 3, 5, m[2] + timedelta(seconds=3))]

        # the skip reasons: the old key is absent (risk_gate_json is keyed by account), and only the
        # recommendation every account skipped is SKIPPED there
        assert rows(conn, OLD_SKIP) == [(None, 1)]
        assert sorted(rows(conn, OLD_SKIP_ON_VIEW)) == [("confidence >= minimum", 2),
                                                        ("confidence below minimum", 2)]
        reasons = rows(conn, NEW_SKIP)
        assert reasons[0] == (B, "confidence", "confidence below minimum", 2)
        assert sorted(reasons[1:]) == [(A, "session", "outside the entry window", 1),
                                       (B, "already_held", "NVDA already held", 1)]
        detail = rows(conn, "SELECT recommendation_id, account_name, gate, gate_value, gate_limit, "
                            "failure_reason FROM dispatch_skip_reasons ORDER BY 1, 2")
        assert sorted(detail) == sorted([
            (rid(1), B, "confidence", "0.5", "0.7", "confidence: confidence below minimum"),
            (rid(2), A, "session", "2026-11-20 10:00:00 ET", "09:35-15:45 ET",
             "session: outside the entry window"),
            (rid(2), B, "confidence", "0.5", "0.7", "confidence: confidence below minimum"),
            (rid(3), B, "already_held", "10 held", "one entry per symbol",
             "already_held: NVDA already held"),
        ])

        # the old shape, one row per decision: gates by name, the account's own status
        by_account = {(r[0], r[1]): r[2:] for r in rows(
            conn, "SELECT recommendation_id, account_name, status, risk_gate_json->'session'->>'passed', "
                  "failure_reason, ticker FROM dispatch_recommendations_by_account")}
        assert len(by_account) == 11  # 10 decisions of recs 1-6, and rec 7 undecided
        assert by_account[(rid(2), A)] == ("SKIPPED", "false", "session: outside the entry window", "MSFT")
        assert by_account[(rid(3), A)] == ("FILLED", "true", None, "NVDA")
        assert by_account[(rid(7), None)] == ("PENDING", None, None, "META")

        # Query 5: the skips of both accounts together; per account; recommendations none took
        assert rows(conn, OLD_Q5) == [(4,)]
        assert sorted(rows(conn, NEW_Q5)) == [(A, 1), (B, 3)]
        assert rows(conn, NEW_Q5_ALL) == [(1,)]  # rec 2 only

        # stuck rows: nothing can be PROCESSING; an order with no outcome after 5 minutes is
        assert rows(conn, OLD_STUCK) == []
        assert [r[:3] + r[4:] for r in rows(conn, NEW_STUCK)] == [(rid(4), A, "TSLA", f"coid-{A}-4")]

        # a true duplicate, which the key forbids: drop the key (this test's own schema) and copy
        # one decision; the replacement finds exactly it, the old query finds it among the others
        conn.execute("ALTER TABLE dispatch_executions DROP CONSTRAINT dispatch_executions_pkey")
        conn.execute("INSERT INTO dispatch_executions SELECT * FROM dispatch_executions "
                     "WHERE recommendation_id = %s AND account_name = %s", (rid(6), B))
        assert rows(conn, NEW_Q3) == [(rid(6), B, 2)]
        assert sorted(rows(conn, OLD_Q3)) == sorted((rid(i), 2) for i in (1, 2, 3, 4, 6))


def test_query_4_fails_before_the_views_and_works_after(database_url: str) -> None:
    old = [m for m in migrate.available() if m.version < 4]
    with psycopg.connect(database_url) as conn:  # a database migrated before 0004 existed
        migrate._ensure_history(conn)
        for mig in old:
            conn.execute(mig.sql.encode())
            conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                         (mig.version, mig.name, mig.checksum))
        conn.commit()
        with pytest.raises(psycopg.errors.UndefinedTable, match="dispatcher_runs"):
            conn.execute(OLD_Q4)
    applied = [m.name for m in migrate.apply(database_url)]
    assert applied[0] == "runbook_views"  # then the later ones, in order
    assert applied == [m.name for m in migrate.available() if m.version >= 4]
    with psycopg.connect(database_url) as conn:
        for query in QUERIES.values():  # every query runs on empty tables
            conn.execute(query).fetchall()


def test_the_readme_gives_every_query_verbatim() -> None:
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    for name, query in QUERIES.items():
        assert query in readme, name


def test_the_role_of_db_roles_sql_may_read_the_views(
    database_url: str, pg_server_url: str
) -> None:
    migrate.apply(database_url)
    role = f"runbook_test_{uuid.uuid4().hex[:8]}"
    script = (ROOT / "db" / "roles.sql").read_text().replace("ops_pipeline_sink", role)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(script.encode())
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            for view in VIEWS:
                conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(view))).fetchall()
                writes = conn.execute("SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE')",
                                      (view,)).fetchone()
                assert writes == (False,), view  # a reader of them only
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            for stmt in ("DROP OWNED BY {}", "DROP ROLE {}"):
                conn.execute(sql.SQL(stmt).format(sql.Identifier(role)))
