"""How each contract topic becomes rows: columns, row builders, merge rules and their SQL, pure; the
in-batch reduction and each upsert's WHERE state one rule, so a batch ends as if applied one by one.
"""

from __future__ import annotations

from datetime import datetime
from operator import itemgetter
from typing import Any

from psycopg.types.json import Jsonb

from schemas.records import ACTIONS, EXECUTION_STATUSES, MINUTE_STAGES, SENTIMENT_LABELS
from schemas.topics import (
    BARS,
    CLOCK,
    EXECUTIONS,
    FEATURES,
    NEWS_RAW,
    NEWS_SCORED,
    POSITIONS,
    SIGNALS,
    WATCHLIST,
)
from sinks.broker_tables import (
    ACCOUNT_EQUITY,
    ALERTS_ROWS,
    BROKER_ACCOUNTS_HISTORY,
    BROKER_POSITIONS_ROWS,
    CONTROL_EVENTS,
    OPTION_QUOTES_ROWS,
    RECONCILE_EVENTS,
)
from sinks.table_spec import EXEC_RANK, Row, TableSpec, as_uuid, one_of, update_all
from sinks.table_spec import EXECUTION_RANK as EXECUTION_RANK
from sinks.table_spec import RECOMMENDATION_RANK as RECOMMENDATION_RANK
from sinks.table_spec import InvalidRecord as InvalidRecord
from trading.options import parse_occ

POSITION_STATUSES = frozenset({"OPEN", "CLOSED"})


# --- market.bars.1m -> lane_telemetry: the highest revision of a minute wins ---------------
_BAR_COLS = (
    ("ticker", "text"), ("ts", "timestamptz"), ("open", "float8"), ("high", "float8"),
    ("low", "float8"), ("close", "float8"), ("volume", "int8"), ("trade_count", "int8"),
    ("vwap", "float8"), ("source", "text"), ("revision", "int8"),
)
_bar = itemgetter("symbol", "ts", "open", "high", "low", "close", "volume", "trade_count", "vwap",
                  "source", "revision")
LANE_TELEMETRY = TableSpec(
    BARS, "lane_telemetry", _BAR_COLS, ("ticker", "ts"), _bar,
    update_all(_BAR_COLS, ("ticker", "ts"), "ingested_at = now()")
    + " WHERE excluded.revision > {t}.revision",
    rank=itemgetter(10),
)

# --- features.1m -> lane_features: same rule ------------------------------------------------
_FEATURE_COLS = (
    ("ticker", "text"), ("ts", "timestamptz"), ("close", "float8"), ("sma_20", "float8"),
    ("sma_50", "float8"), ("volume_current", "int8"), ("volume_avg_20", "float8"),
    ("volume_ratio", "float8"), ("volume_surge", "bool"), ("rsi_14", "float8"), ("macd", "float8"),
    ("macd_signal", "float8"), ("macd_hist", "float8"), ("bb_upper", "float8"),
    ("bb_middle", "float8"), ("bb_lower", "float8"), ("bars_seen", "int8"), ("revision", "int8"),
)
_features = itemgetter("symbol", "ts", "close", "sma_20", "sma_50", "volume_current",
                       "volume_avg_20", "volume_ratio", "volume_surge", "rsi_14", "macd",
                       "macd_signal", "macd_hist", "bb_upper", "bb_middle", "bb_lower",
                       "bars_seen", "revision")
LANE_FEATURES = TableSpec(
    FEATURES, "lane_features", _FEATURE_COLS, ("ticker", "ts"), _features,
    update_all(_FEATURE_COLS, ("ticker", "ts"), "computed_at = now()")
    + " WHERE excluded.revision > {t}.revision",
    rank=itemgetter(17),
)

# --- news.raw / news.scored: one record per item (per ticker) ever; the first one stays -----
INBOUND_RAW = TableSpec(
    NEWS_RAW, "inbound_events_raw",
    (("event_id", "text"), ("feed", "text"), ("title", "text"), ("summary", "text"),
     ("link", "text"), ("published", "timestamptz"), ("published_estimated", "bool"),
     ("fetched_at", "timestamptz")),
    ("event_id",),
    itemgetter("id", "feed", "title", "summary", "link", "published", "published_estimated",
               "fetched_at"),
    "DO NOTHING",
)


def _scored(d: dict[str, Any]) -> Row:
    label = one_of(d["label"], SENTIMENT_LABELS, "label")
    return (d["id"], d["ticker"], d["tickers"], label, d["score"], d["model"], d["published"])


INBOUND_CLASSIFIED = TableSpec(
    NEWS_SCORED, "inbound_events_classified",
    (("event_id", "text"), ("ticker", "text"), ("tickers", "text[]"), ("sentiment", "text"),
     ("score", "float8"), ("model", "text"), ("published", "timestamptz")),
    ("event_id", "ticker"), _scored, "DO NOTHING",
)


# --- signals -> dispatch_recommendations: fills the signal's columns, never the status ------
def _signal(d: dict[str, Any]) -> Row:
    return (
        as_uuid(d["id"]), d["ts"], d["symbol"], one_of(d["action"], ACTIONS, "action"),
        d["base_confidence"], d["volume_multiplier"], d["confidence"], d["sentiment"],
        d["reason"], Jsonb(d["features"]), d["strategy_version"],
    )


_SIGNAL_COLS = (
    ("recommendation_id", "uuid"), ("ts", "timestamptz"), ("ticker", "text"), ("action", "text"),
    ("base_confidence", "float8"), ("volume_multiplier", "float8"), ("confidence", "float8"),
    ("sentiment", "float8"), ("reason", "text"), ("features", "jsonb"),
    ("strategy_version", "text"),
)
# An execution seen first created the row with NULL signal columns; `ts` is NULL exactly then.
RECOMMENDATIONS = TableSpec(
    SIGNALS, "dispatch_recommendations", _SIGNAL_COLS, ("recommendation_id",), _signal,
    update_all(_SIGNAL_COLS, ("recommendation_id",)) + " WHERE {t}.ts IS NULL",
    order_by_key=True,
)


# --- executions -> dispatch_executions, then the recommendation's status --------------------
def _execution(d: dict[str, Any]) -> Row:
    status = one_of(d["status"], EXECUTION_STATUSES, "status")
    decided: datetime = d["decided_at"]
    bar_used: datetime = d["bar_used_ts"] or decided
    sim = {
        "bar_used": {"timestamp": bar_used.isoformat()},
        "price": d["price"],
        "qty": d["qty"],
        "mode": d["mode"],
    }
    return (
        as_uuid(d["recommendation_id"]), d["account"], d["symbol"],
        one_of(d["action"], ACTIONS, "action"), status, d["intent"], d["mode"], d["qty"],
        d["price"], d["failure_reason"], d["broker_order_id"], d["client_order_id"], decided,
        Jsonb(sim), Jsonb(d["gates"]),
    )


_EXEC_COLS = (
    ("recommendation_id", "uuid"), ("account_name", "text"), ("ticker", "text"),
    ("action", "text"), ("status", "text"), ("intent", "text"), ("mode", "text"),
    ("qty", "float8"), ("price", "float8"), ("failure_reason", "text"),
    ("broker_order_id", "text"), ("client_order_id", "text"), ("simulated_ts", "timestamptz"),
    ("sim_json", "jsonb"), ("risk_gate_json", "jsonb"),
)
_RECOMMENDATION_FROM_EXECUTIONS = (
    # a recommendation row exists for every execution, whichever topic the sink read first
    "INSERT INTO dispatch_recommendations (recommendation_id, ticker, action) "
    "SELECT DISTINCT ON (recommendation_id) recommendation_id, ticker, action FROM {stage} "
    "ORDER BY recommendation_id ON CONFLICT (recommendation_id) DO NOTHING",
    # lock first, in key order: the recomputation below then sees every committed execution
    "SELECT 1 FROM dispatch_recommendations WHERE recommendation_id IN "
    "(SELECT recommendation_id FROM {stage}) ORDER BY recommendation_id FOR UPDATE",
    "UPDATE dispatch_recommendations r SET status = a.status, risk_gate_json = a.gates, "
    "failure_reason = a.failure_reason, processed_at = a.processed_at FROM ("
    " SELECT recommendation_id,"
    "  ({rec_rank}::text[])[max(array_position({rec_rank}::text[], status))] AS status,"
    "  jsonb_object_agg(account_name, risk_gate_json ORDER BY account_name) AS gates,"
    "  (array_agg(failure_reason ORDER BY account_name)"
    "   FILTER (WHERE failure_reason IS NOT NULL))[1] AS failure_reason,"
    "  max(simulated_ts) AS processed_at"
    " FROM dispatch_executions WHERE recommendation_id IN (SELECT recommendation_id FROM {stage})"
    " GROUP BY recommendation_id) a "
    "WHERE r.recommendation_id = a.recommendation_id AND "
    "(r.status, r.risk_gate_json, r.failure_reason, r.processed_at) IS DISTINCT FROM "
    "(a.status, a.gates, a.failure_reason, a.processed_at)",
)
DISPATCH_EXECUTIONS = TableSpec(
    EXECUTIONS, "dispatch_executions", _EXEC_COLS, ("recommendation_id", "account_name"),
    _execution,
    update_all(_EXEC_COLS, ("recommendation_id", "account_name"), "updated_at = now()")
    + " WHERE array_position({exec_rank}::text[], excluded.status)"
    " > array_position({exec_rank}::text[], {t}.status)",
    rank=lambda row: EXEC_RANK[row[4]],
    after=_RECOMMENDATION_FROM_EXECUTIONS,
    order_by_key=True,
)


# --- positions + broker.positions -> active_positions ----------------------------------------
# (the broker.positions spec is BROKER_POSITIONS_ROWS, in sinks/broker_tables.py)
# Two writers share a row per (account, ticker), each owning its columns, so neither erases the
# other's and the result does not depend on which topic the sink reads first:
#   - the desk (positions) owns opened_at, stop, target, realized_pnl, exit_reason, versioned by
#     (desk_updated_at, desk_status = 'CLOSED'): its later record wins, at one instant CLOSED wins;
#   - the broker (broker.positions) owns origin, asset_class, market_value, cost_basis,
#     unrealized_*, current_price, the option columns, versioned by broker_as_of (later wins, an
#     exact tie keeps the first);
#   - qty, avg_price and status are the broker's once it has reported the position (broker_as_of
#     set: the broker wins, as in reconciliation), the desk's before that (simulate accounts). A
#     broker record with qty 0 closes the row (status CLOSED), never deletes it.
#   updated_at is the time of the latest record of either side; origin and asset_class of a row
#   only the desk wrote are 'pipeline' and what its symbol says, until the broker says otherwise.
def _asset_class(symbol: str) -> str:
    return "us_option" if parse_occ(symbol) is not None else "us_equity"


def _position(d: dict[str, Any]) -> Row:
    status = one_of(d["status"], POSITION_STATUSES, "status")
    return (
        d["account"], d["symbol"], d["qty"], d["avg_price"], d["opened_at"], d["stop"],
        d["target"], status, d["realized_pnl"], d["exit_reason"], d["updated_at"],
        d["updated_at"], status, "pipeline", _asset_class(d["symbol"]),
    )


_POSITION_COLS = (
    ("account_name", "text"), ("ticker", "text"), ("qty", "float8"), ("avg_price", "float8"),
    ("opened_at", "timestamptz"), ("stop", "float8"), ("target", "float8"), ("status", "text"),
    ("realized_pnl", "float8"), ("exit_reason", "text"), ("updated_at", "timestamptz"),
    ("desk_updated_at", "timestamptz"), ("desk_status", "text"), ("origin", "text"),
    ("asset_class", "text"),
)
_BROKER_OWNS = "{t}.broker_as_of IS NOT NULL"
ACTIVE_POSITIONS = TableSpec(
    POSITIONS, "active_positions", _POSITION_COLS, ("account_name", "ticker"), _position,
    "DO UPDATE SET opened_at = excluded.opened_at, stop = excluded.stop, target = excluded.target, "
    "realized_pnl = excluded.realized_pnl, exit_reason = excluded.exit_reason, "
    "desk_updated_at = excluded.desk_updated_at, desk_status = excluded.desk_status, "
    + ", ".join(f"{c} = CASE WHEN {_BROKER_OWNS} THEN {{t}}.{c} ELSE excluded.{c} END"
                for c in ("qty", "avg_price", "status"))
    + ", updated_at = greatest({t}.updated_at, excluded.updated_at), "
    "origin = coalesce({t}.origin, excluded.origin), "
    "asset_class = coalesce({t}.asset_class, excluded.asset_class) "
    "WHERE {t}.desk_updated_at IS NULL OR (excluded.desk_updated_at, excluded.desk_status = 'CLOSED')"
    " > ({t}.desk_updated_at, {t}.desk_status = 'CLOSED')",
    rank=lambda row: (row[10], row[7] == "CLOSED"),
)

# --- watchlist -> lane_watchlist_state: one entry per (ticker, ts); the first one stays -----
WATCHLIST_STATE = TableSpec(
    WATCHLIST, "lane_watchlist_state",
    (("ticker", "text"), ("ts", "timestamptz"), ("score", "float8"), ("rank", "int8"),
     ("volume_ratio", "float8"), ("momentum", "float8"), ("sentiment", "float8"),
     ("reasons", "text[]")),
    ("ticker", "ts"),
    itemgetter("symbol", "ts", "score", "rank", "volume_ratio", "momentum", "sentiment", "reasons"),
    "DO NOTHING",
)

# --- clock.minutes -> clock_minutes: the first closure of (stage, partition, minute) stays ---
def _closed(d: dict[str, Any]) -> Row:
    return (one_of(d["stage"], MINUTE_STAGES, "stage"), d["partition"], d["minute"], d["reason"],
            d["upto_offset"], d["input_upto"], d["at"])


CLOCK_MINUTES = TableSpec(
    CLOCK, "clock_minutes",
    (("stage", "text"), ("partition", "int4"), ("minute", "timestamptz"), ("reason", "text"),
     ("upto_offset", "int8"), ("input_upto", "int8"), ("at", "timestamptz")),
    ("stage", "partition", "minute"), _closed, "DO NOTHING",
)

# Write order inside a transaction: signals before executions, so a recommendation row made
# from an execution in the same batch is already filled by its signal.
TABLES: tuple[TableSpec, ...] = (
    LANE_TELEMETRY,
    LANE_FEATURES,
    INBOUND_RAW,
    INBOUND_CLASSIFIED,
    RECOMMENDATIONS,
    DISPATCH_EXECUTIONS,
    ACTIVE_POSITIONS,
    BROKER_POSITIONS_ROWS,
    WATCHLIST_STATE,
    BROKER_ACCOUNTS_HISTORY,
    OPTION_QUOTES_ROWS,
    ACCOUNT_EQUITY,
    RECONCILE_EVENTS,
    ALERTS_ROWS,
    CONTROL_EVENTS,
    CLOCK_MINUTES,
)
BY_TOPIC: dict[str, TableSpec] = {t.topic.name: t for t in TABLES}
# every table the sink reads or writes, for the start-up check and the least-privilege role
SINK_TABLES: tuple[str, ...] = (*dict.fromkeys(t.table for t in TABLES), "dead_letters", "sink_offsets")
