"""Migrations against a real PostgreSQL: from empty, twice; keys and runbook columns exist."""

from __future__ import annotations

import threading

import psycopg
import pytest

from db import migrate

pytestmark = pytest.mark.integration

UNIQUE_KEYS = {
    "lane_telemetry": ("ticker", "ts"),
    "lane_features": ("ticker", "ts"),
    "inbound_events_raw": ("event_id",),
    "inbound_events_classified": ("event_id", "ticker"),
    "dispatch_recommendations": ("recommendation_id",),
    "dispatch_executions": ("recommendation_id", "account_name"),
    "active_positions": ("account_name", "ticker"),
    "lane_watchlist_state": ("ticker", "ts"),
    "broker_accounts": ("account_name", "as_of"),
    "option_quotes": ("contract", "as_of"),
    "account_equity": ("account_name", "ts"),
    "dead_letters": ("topic", "partition", "offset"),
    "sink_offsets": ("sink", "topic", "partition"),
}

RUNBOOK_COLUMNS = {
    "lane_telemetry": {
        "ticker": "text",
        "ts": "timestamp with time zone",
        "open": None,
        "high": None,
        "low": None,
        "close": None,
        "volume": "bigint",
    },
    "lane_features": {
        "volume_current": "bigint",
        "volume_avg_20": "numeric(20,2)",
        "volume_ratio": "numeric(10,4)",
        "volume_surge": "boolean",
        "sma_20": None,
        "sma_50": None,
    },
    "inbound_events_classified": {"sentiment": None, "score": None, "tickers": "text[]"},
    "dispatch_recommendations": {
        "ts": None,
        "ticker": None,
        "action": None,
        "confidence": None,
        "status": None,
        "risk_gate_json": "jsonb",
        "failure_reason": None,
        "processed_at": None,
    },
    "dispatch_executions": {"simulated_ts": None, "sim_json": "jsonb", "status": None},
    "lane_watchlist_state": {"score": None, "rank": None},
    # 0002: every position held at Alpaca, with its origin, asset class and unrealized P&L
    "active_positions": {
        "qty": None, "avg_price": None, "status": None, "stop": None, "target": None,
        "origin": "text", "asset_class": "text", "market_value": "double precision",
        "unrealized_pl": "double precision", "unrealized_plpc": "double precision",
        "current_price": "double precision", "broker_as_of": "timestamp with time zone",
        "expiration": "date", "option_type": "text", "strike": "double precision",
        "multiplier": "double precision",
    },
    "broker_accounts": {"cash": None, "buying_power": None, "options_buying_power": None,
                        "equity": None, "trading_blocked": "boolean", "open_orders": "jsonb"},
    "account_equity": {"equity": None, "cash": None, "unrealized_pnl": None},
    "reconcile_events": {"kind": None, "symbol": None, "action": None, "decided_at": None},
    # 0004: views with the old runbook's names and meanings (one account per row, gates by name)
    "dispatcher_runs": {"run_id": "text", "started_at": "timestamp with time zone",
                        "finished_at": "timestamp with time zone", "status": "text",
                        "recommendations_processed": "bigint", "executed": "bigint", "skipped": "bigint",
                        "failed": "bigint"},
    "dispatch_recommendations_by_account": {"account_name": None, "status": None, "confidence": None,
                                            "risk_gate_json": "jsonb", "failure_reason": None},
    "dispatch_skip_reasons": {"account_name": None, "gate": "text", "reason": "text",
                              "risk_gate_json": "jsonb"},
}


def test_from_empty_twice(database_url: str) -> None:
    first = migrate.apply(database_url)
    assert [m.version for m in first] == [m.version for m in migrate.available()]
    assert first, "there is at least one migration"
    assert migrate.apply(database_url) == []
    assert all(done for _, done in migrate.status(database_url))


def test_unique_keys(database_url: str) -> None:
    migrate.apply(database_url)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """SELECT c.relname, array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum))
                 FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
                WHERE i.indisunique
                GROUP BY c.relname, i.indexrelid"""
        ).fetchall()
    keys: dict[str, set[tuple[str, ...]]] = {}
    for table, cols in rows:
        keys.setdefault(table, set()).add(tuple(cols))
    for table, key in UNIQUE_KEYS.items():
        assert key in keys.get(table, set()), table


def test_runbook_columns_and_types(database_url: str) -> None:
    migrate.apply(database_url)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
                WHERE a.attnum > 0 AND NOT a.attisdropped"""
        ).fetchall()
    types = {(t, col): typ for t, col, typ in rows}
    for table, cols in RUNBOOK_COLUMNS.items():
        for col, typ in cols.items():
            assert (table, col) in types, f"{table}.{col}"
            if typ:
                assert types[(table, col)] == typ, f"{table}.{col}"


def test_processing_is_not_a_status(database_url: str) -> None:
    migrate.apply(database_url)
    with psycopg.connect(database_url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO dispatch_recommendations (recommendation_id, status) "
            "VALUES (gen_random_uuid(), 'PROCESSING')"
        )


def test_concurrent_migrate_applies_each_once(database_url: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(len(migrate.apply(database_url)))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # each applied once, in order; the work may be split (one runner takes the lock between two
    # migrations of another: seen as [0, 2, 2] with four migrations)
    assert sum(results) == len(migrate.available())
    assert migrate.apply(database_url) == []


def test_an_edited_applied_migration_is_refused(database_url: str) -> None:
    migrate.apply(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'different' WHERE version = 1")
    with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
        migrate.apply(database_url)


def test_reconcile_events_key_treats_a_missing_symbol_as_one_value(database_url: str) -> None:
    migrate.apply(database_url)
    insert = ("INSERT INTO reconcile_events (account_name, as_of, decided_at, kind, symbol, desk, "
              "broker, action, detail) "
              "VALUES ('a', now(), '2026-11-20T15:00Z', 'cash_drift', %s, '', '', 'none', '')")
    with psycopg.connect(database_url) as conn:
        conn.execute(insert, (None,))
        conn.execute(insert, ("AAPL",))  # another symbol: another event
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, (None,))


def test_0002_keeps_the_positions_written_before_it(database_url: str) -> None:
    first, *_ = migrate.available()
    with psycopg.connect(database_url) as conn:  # a database migrated before 0002 existed
        migrate._ensure_history(conn)
        conn.execute(first.sql.encode())
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                     (first.version, first.name, first.checksum))
        conn.execute("INSERT INTO active_positions (account_name, ticker, qty, avg_price, opened_at, "
                     "status, updated_at) VALUES ('a', 'AAPL', 10, 100, '2026-11-20T14:31Z', 'CLOSED', "
                     "'2026-11-20T15:00Z')")
    assert [m.version for m in migrate.apply(database_url)] == [m.version for m in migrate.available()[1:]]
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT desk_updated_at = updated_at, desk_status, origin, asset_class, "
                           "broker_as_of FROM active_positions").fetchone()
    assert row == (True, "CLOSED", "pipeline", "us_equity", None)  # the desk's row, versioned as such
