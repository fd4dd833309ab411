"""How each contract topic becomes rows: columns, row builders, merge rules and their SQL, pure; the
in-batch reduction and each upsert's WHERE state one rule, so a batch ends as if applied one by one.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from operator import itemgetter
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from schemas.records import (
    ACTIONS,
    ALERT_STATES,
    ASSET_CLASSES,
    CONTROL_ACTIONS,
    EXECUTION_STATUSES,
    ORIGINS,
    RECONCILE_KINDS,
    SENTIMENT_LABELS,
    SEVERITIES,
)
from schemas.topics import (
    ALERTS,
    BARS,
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
    CONTROL,
    EQUITY,
    EXECUTIONS,
    FEATURES,
    NEWS_RAW,
    NEWS_SCORED,
    OPTION_QUOTES,
    POSITIONS,
    RECONCILE,
    SIGNALS,
    WATCHLIST,
    TopicSpec,
)
from trading.options import parse_occ

Row = tuple[Any, ...]

# An execution's status only moves up this order, so its last state is the highest one seen,
# whatever order records arrive in. SUBMITTED -> FILLED/FAILED is the only real transition; the
# order among final states only makes a contradiction between duplicates deterministic.
EXECUTION_RANK: tuple[str, ...] = ("SUBMITTED", "SKIPPED", "SIMULATED", "FAILED", "FILLED")
# A recommendation's status is the furthest any of its accounts got towards a filled order
# (PENDING while no account has decided), recomputed from all of its executions.
RECOMMENDATION_RANK: tuple[str, ...] = (
    "PENDING", "SKIPPED", "SIMULATED", "FAILED", "SUBMITTED", "FILLED"
)
_EXEC_RANK = {s: i for i, s in enumerate(EXECUTION_RANK)}
_RANKS = {
    "exec_rank": sql.Literal(list(EXECUTION_RANK)),
    "rec_rank": sql.Literal(list(RECOMMENDATION_RANK)),
}
assert set(EXECUTION_RANK) == set(EXECUTION_STATUSES)
POSITION_STATUSES = frozenset({"OPEN", "CLOSED"})
OPTION_TYPES = frozenset({"call", "put"})


class InvalidRecord(ValueError):
    """A decoded record that breaks a rule of its table; it goes to the DLQ."""


@dataclass(frozen=True)
class TableSpec:
    """One contract topic's table. Columns are (name, staging type) in row order; `slot` names the
    spec's batch rows and staging table (the table's name unless two topics write one table)."""

    topic: TopicSpec
    table: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    build: Callable[[dict[str, Any]], Row]
    on_conflict: str  # the ON CONFLICT action, with {t} for the target table
    rank: Callable[[Row], Any] | None = None  # highest wins in a batch; ties and None: first seen
    after: tuple[str, ...] = ()  # statements run after the upsert, in the same transaction
    order_by_key: bool = False  # insert in key order: a fixed lock order between writers
    conflict: str = ""  # the ON CONFLICT target when it is not the key's columns (an index expression)
    slot: str = ""
    key_of: Callable[[Row], Any] = field(init=False)

    def __post_init__(self) -> None:
        names = [c for c, _ in self.columns]
        object.__setattr__(self, "key_of", itemgetter(*(names.index(k) for k in self.key)))
        if not self.slot:
            object.__setattr__(self, "slot", self.table)

    @property
    def stage(self) -> sql.Composed:
        return sql.SQL("pg_temp.{}").format(sql.Identifier(f"sink_stage_{self.slot}"))

    @property
    def stage_types(self) -> list[str]:
        return [t for _, t in self.columns]

    def create_stage_sql(self) -> sql.Composed:
        # Explicit types, not LIKE: binary COPY needs float8 for numeric targets and int8 for
        # every integer (psycopg's binary int4 dumper wraps silently; the cast in the upsert
        # raises instead, and the record goes to the DLQ).
        cols = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in self.columns
        )
        return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            self.stage, cols
        )

    def copy_sql(self) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(self.stage, self._cols())

    def clear_sql(self) -> sql.Composed:
        return sql.SQL("TRUNCATE {}").format(self.stage)

    def upsert_sql(self) -> sql.Composed:
        order = sql.SQL(" ORDER BY {}").format(self._cols(self.key)) if self.order_by_key else sql.SQL("")
        return sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM {stage}{order} ON CONFLICT ({key}) {act}"
        ).format(
            t=sql.Identifier(self.table),
            cols=self._cols(),
            stage=self.stage,
            order=order,
            key=sql.SQL(self.conflict) if self.conflict else self._cols(self.key),
            act=sql.SQL(self.on_conflict).format(t=sql.Identifier(self.table), **_RANKS),
        )

    def after_sql(self) -> list[sql.Composed]:
        return [sql.SQL(s).format(stage=self.stage, **_RANKS) for s in self.after]

    def reduce(self, rows: list[Row], msgs: list[Any]) -> tuple[list[Row], list[Any]]:
        """One row per key (ON CONFLICT cannot touch a row twice in one statement)."""
        key_of, rank = self.key_of, self.rank
        best: dict[Any, int] = {}
        for i, row in enumerate(rows):
            k = key_of(row)
            j = best.get(k)
            if j is None:
                best[k] = i
            elif rank is not None and rank(row) > rank(rows[j]):
                best[k] = i
        if len(best) == len(rows):
            return rows, msgs
        keep = sorted(best.values())
        return [rows[i] for i in keep], [msgs[i] for i in keep]

    def _cols(self, names: tuple[str, ...] | None = None) -> sql.Composed:
        names = names if names is not None else tuple(c for c, _ in self.columns)
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _update_all(columns: tuple[tuple[str, str], ...], key: tuple[str, ...], *extra: str) -> str:
    sets = [f"{c} = excluded.{c}" for c, _ in columns if c not in key]
    return "DO UPDATE SET " + ", ".join([*sets, *extra])


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidRecord(f"not a UUID: {value!r}") from exc


def _one_of(value: str, allowed: frozenset[str] | tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidRecord(f"{what} {value!r} is not one of {sorted(allowed)}")
    return value


def _finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise InvalidRecord(f"{what} is not a finite number: {value!r}")
    return value


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
    _update_all(_BAR_COLS, ("ticker", "ts"), "ingested_at = now()")
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
    _update_all(_FEATURE_COLS, ("ticker", "ts"), "computed_at = now()")
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
    label = _one_of(d["label"], SENTIMENT_LABELS, "label")
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
        _uuid(d["id"]), d["ts"], d["symbol"], _one_of(d["action"], ACTIONS, "action"),
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
    _update_all(_SIGNAL_COLS, ("recommendation_id",)) + " WHERE {t}.ts IS NULL",
    order_by_key=True,
)


# --- executions -> dispatch_executions, then the recommendation's status --------------------
def _execution(d: dict[str, Any]) -> Row:
    status = _one_of(d["status"], EXECUTION_STATUSES, "status")
    decided: datetime = d["decided_at"]
    bar_used: datetime = d["bar_used_ts"] or decided
    sim = {
        "bar_used": {"timestamp": bar_used.isoformat()},
        "price": d["price"],
        "qty": d["qty"],
        "mode": d["mode"],
    }
    return (
        _uuid(d["recommendation_id"]), d["account"], d["symbol"],
        _one_of(d["action"], ACTIONS, "action"), status, d["intent"], d["mode"], d["qty"],
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
    _update_all(_EXEC_COLS, ("recommendation_id", "account_name"), "updated_at = now()")
    + " WHERE array_position({exec_rank}::text[], excluded.status)"
    " > array_position({exec_rank}::text[], {t}.status)",
    rank=lambda row: _EXEC_RANK[row[4]],
    after=_RECOMMENDATION_FROM_EXECUTIONS,
    order_by_key=True,
)


# --- positions + broker.positions -> active_positions ----------------------------------------
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
    status = _one_of(d["status"], POSITION_STATUSES, "status")
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


def _expiration(value: str | None) -> date | None:
    try:
        return None if value is None else date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRecord(f"expiration {value!r} is not an ISO date") from exc


def _broker_position(d: dict[str, Any]) -> Row:
    if not d["symbol"]:
        raise InvalidRecord("empty symbol")
    qty = _finite(d["qty"], "qty")
    multiplier = _finite(d["multiplier"], "multiplier")
    if multiplier is None or multiplier <= 0:
        raise InvalidRecord(f"multiplier {multiplier!r} is not positive")
    option_type = d["option_type"]
    if option_type is not None:
        _one_of(option_type, OPTION_TYPES, "option_type")
    return (
        d["account"], d["symbol"], qty, _finite(d["avg_entry_price"], "avg_entry_price"),
        "CLOSED" if qty == 0 else "OPEN", d["as_of"], _one_of(d["origin"], ORIGINS, "origin"),
        _one_of(d["asset_class"], ASSET_CLASSES, "asset_class"), d["market_value"], d["cost_basis"],
        d["unrealized_pl"], d["unrealized_plpc"], d["current_price"], d["as_of"], d["underlying"],
        _expiration(d["expiration"]), option_type, d["strike"], multiplier,
    )


_BROKER_POSITION_COLS = (
    ("account_name", "text"), ("ticker", "text"), ("qty", "float8"), ("avg_price", "float8"),
    ("status", "text"), ("updated_at", "timestamptz"), ("origin", "text"), ("asset_class", "text"),
    ("market_value", "float8"), ("cost_basis", "float8"), ("unrealized_pl", "float8"),
    ("unrealized_plpc", "float8"), ("current_price", "float8"), ("broker_as_of", "timestamptz"),
    ("underlying", "text"), ("expiration", "date"), ("option_type", "text"), ("strike", "float8"),
    ("multiplier", "float8"),
)
BROKER_POSITIONS_ROWS = TableSpec(
    BROKER_POSITIONS, "active_positions", _BROKER_POSITION_COLS, ("account_name", "ticker"),
    _broker_position,
    _update_all(_BROKER_POSITION_COLS, ("account_name", "ticker", "updated_at"),
                "updated_at = greatest({t}.updated_at, excluded.updated_at)")
    + " WHERE {t}.broker_as_of IS NULL OR excluded.broker_as_of > {t}.broker_as_of",
    rank=itemgetter(13),
    slot="active_positions_broker",
)


# --- broker.accounts -> broker_accounts: one row per snapshot; a repeat changes nothing -------
def _json_default(value: Any) -> str:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default)


def _broker_account(d: dict[str, Any]) -> Row:
    for name in ("cash", "buying_power", "options_buying_power", "equity", "last_equity"):
        _finite(d[name], name)
    return (
        d["account"], d["as_of"], d["status"], d["currency"], d["cash"], d["buying_power"],
        d["options_buying_power"], d["equity"], d["last_equity"], d["long_market_value"],
        d["short_market_value"], d["options_approved_level"], d["trading_blocked"],
        Jsonb(d["open_orders"], dumps=_dumps), d["trigger"],
    )


BROKER_ACCOUNTS_HISTORY = TableSpec(
    BROKER_ACCOUNTS, "broker_accounts",
    (("account_name", "text"), ("as_of", "timestamptz"), ("status", "text"), ("currency", "text"),
     ("cash", "float8"), ("buying_power", "float8"), ("options_buying_power", "float8"),
     ("equity", "float8"), ("last_equity", "float8"), ("long_market_value", "float8"),
     ("short_market_value", "float8"), ("options_approved_level", "int8"),
     ("trading_blocked", "bool"), ("open_orders", "jsonb"), ("trigger", "text")),
    ("account_name", "as_of"), _broker_account, "DO NOTHING",
)


# --- options.quotes -> option_quotes: one row per (contract, as_of); the first one stays -------
def _option_quote(d: dict[str, Any]) -> Row:
    if parse_occ(d["contract"]) is None:
        raise InvalidRecord(f"contract {d['contract']!r} is not an OCC option symbol")
    for name in ("bid", "ask", "bid_size", "ask_size"):
        if d[name] is not None and not d[name] >= 0:  # NaN fails too
            raise InvalidRecord(f"{name} {d[name]!r} is negative or not a number")
    return (
        d["contract"], d["underlying"], d["as_of"], d["bid"], d["ask"], d["bid_size"], d["ask_size"],
        d["last"], d["iv"], d["delta"], d["gamma"], d["theta"], d["vega"], d["source"],
        d["fetched_at"],
    )


OPTION_QUOTES_ROWS = TableSpec(
    OPTION_QUOTES, "option_quotes",
    (("contract", "text"), ("underlying", "text"), ("as_of", "timestamptz"), ("bid", "float8"),
     ("ask", "float8"), ("bid_size", "float8"), ("ask_size", "float8"), ("last", "float8"),
     ("iv", "float8"), ("delta", "float8"), ("gamma", "float8"), ("theta", "float8"),
     ("vega", "float8"), ("source", "text"), ("fetched_at", "timestamptz")),
    ("contract", "as_of"), _option_quote, "DO NOTHING",
)


# --- equity -> account_equity: one point per (account, minute); the first one stays ------------
def _equity(d: dict[str, Any]) -> Row:
    if d["open_positions"] < 0:
        raise InvalidRecord(f"open_positions {d['open_positions']!r} is negative")
    return (
        d["account"], d["ts"], _finite(d["equity"], "equity"), _finite(d["cash"], "cash"),
        d["realized_pnl"], d["unrealized_pnl"], d["open_positions"], d["source"],
    )


ACCOUNT_EQUITY = TableSpec(
    EQUITY, "account_equity",
    (("account_name", "text"), ("ts", "timestamptz"), ("equity", "float8"), ("cash", "float8"),
     ("realized_pnl", "float8"), ("unrealized_pnl", "float8"), ("open_positions", "int8"),
     ("source", "text")),
    ("account_name", "ts"), _equity, "DO NOTHING",
)


# --- reconcile -> reconcile_events: one per (account, decided_at, kind, symbol) ever -----------
def _reconcile(d: dict[str, Any]) -> Row:
    return (
        d["account"], d["as_of"], d["decided_at"], _one_of(d["kind"], RECONCILE_KINDS, "kind"),
        d["symbol"] or None,  # '' and NULL are one key (the unique index coalesces)
        d["desk"], d["broker"], d["action"], d["detail"],
    )


RECONCILE_EVENTS = TableSpec(
    RECONCILE, "reconcile_events",
    (("account_name", "text"), ("as_of", "timestamptz"), ("decided_at", "timestamptz"),
     ("kind", "text"), ("symbol", "text"), ("desk", "text"), ("broker", "text"), ("action", "text"),
     ("detail", "text")),
    ("account_name", "decided_at", "kind", "symbol"), _reconcile, "DO NOTHING",
    conflict="account_name, decided_at, kind, (coalesce(symbol, ''))",
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

# --- alerts -> alerts: every firing and resolution; control -> control_events: every change ------
def _alert(d: dict[str, Any]) -> Row:
    return (
        d["rule"], d["subject"], _one_of(d["state"], ALERT_STATES, "state"),
        _one_of(d["severity"], SEVERITIES, "severity"), d["started_at"], d["at"], d["summary"],
        Jsonb(d["details"]),
    )


ALERTS_ROWS = TableSpec(
    ALERTS, "alerts",
    (("rule", "text"), ("subject", "text"), ("state", "text"), ("severity", "text"),
     ("started_at", "timestamptz"), ("at", "timestamptz"), ("summary", "text"), ("details", "jsonb")),
    ("rule", "subject", "started_at", "state"), _alert, "DO NOTHING",
)


def _control(d: dict[str, Any]) -> Row:
    return (
        d["id"], d["account"], _one_of(d["action"], CONTROL_ACTIONS, "action"), d["at"], d["reason"],
        Jsonb(d["settings"]), d["flatten"], d["operator"],
    )


CONTROL_EVENTS = TableSpec(
    CONTROL, "control_events",
    (("id", "text"), ("account_name", "text"), ("action", "text"), ("at", "timestamptz"),
     ("reason", "text"), ("settings", "jsonb"), ("flatten", "bool"), ("operator", "text")),
    ("id",), _control, "DO NOTHING",
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
)
BY_TOPIC: dict[str, TableSpec] = {t.topic.name: t for t in TABLES}
# every table the sink reads or writes, for the start-up check and the least-privilege role
SINK_TABLES: tuple[str, ...] = (*dict.fromkeys(t.table for t in TABLES), "dead_letters", "sink_offsets")
