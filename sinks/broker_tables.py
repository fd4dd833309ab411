"""The tables of the broker's truth (positions, account snapshots, option quotes, equity,
reconcile differences) and of operations (the watchdog's alerts, the operator's control changes).
"""

from __future__ import annotations

import json
from datetime import date
from operator import itemgetter
from typing import Any

from psycopg.types.json import Jsonb

from schemas.records import ALERT_STATES, ASSET_CLASSES, CONTROL_ACTIONS, ORIGINS, RECONCILE_KINDS, SEVERITIES
from schemas.topics import (
    ALERTS,
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
    CONTROL,
    EQUITY,
    OPTION_QUOTES,
    RECONCILE,
)
from sinks.table_spec import InvalidRecord, Row, TableSpec, finite, one_of, update_all
from trading.options import parse_occ

OPTION_TYPES = frozenset({"call", "put"})


# --- broker.positions -> active_positions: the broker's columns of the row the desk shares ------
# (who owns which column, and why: the comment above ACTIVE_POSITIONS in sinks/tables.py)
def _expiration(value: str | None) -> date | None:
    try:
        return None if value is None else date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRecord(f"expiration {value!r} is not an ISO date") from exc


def _broker_position(d: dict[str, Any]) -> Row:
    if not d["symbol"]:
        raise InvalidRecord("empty symbol")
    qty = finite(d["qty"], "qty")
    multiplier = finite(d["multiplier"], "multiplier")
    if multiplier is None or multiplier <= 0:
        raise InvalidRecord(f"multiplier {multiplier!r} is not positive")
    option_type = d["option_type"]
    if option_type is not None:
        one_of(option_type, OPTION_TYPES, "option_type")
    return (
        d["account"], d["symbol"], qty, finite(d["avg_entry_price"], "avg_entry_price"),
        "CLOSED" if qty == 0 else "OPEN", d["as_of"], one_of(d["origin"], ORIGINS, "origin"),
        one_of(d["asset_class"], ASSET_CLASSES, "asset_class"), d["market_value"], d["cost_basis"],
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
    update_all(_BROKER_POSITION_COLS, ("account_name", "ticker", "updated_at"),
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
        finite(d[name], name)
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
    option_type = d["option_type"]
    if option_type is not None and option_type not in OPTION_TYPES:
        raise InvalidRecord(f"option_type {option_type!r} is not call or put")
    open_interest = d["open_interest"]
    if open_interest is not None and open_interest < 0:
        raise InvalidRecord(f"open_interest {open_interest!r} is negative")
    return (
        d["contract"], d["underlying"], d["as_of"], d["bid"], d["ask"], d["bid_size"], d["ask_size"],
        d["last"], d["iv"], d["delta"], d["gamma"], d["theta"], d["vega"], d["source"],
        d["fetched_at"], _expiration(d["expiration"]), finite(d["strike"], "strike"), option_type,
        open_interest, d["penny_program"], finite(d["underlying_price"], "underlying_price"),
        d["chain_id"], d["chain_as_of"], d["modelled"],
    )


OPTION_QUOTES_ROWS = TableSpec(
    OPTION_QUOTES, "option_quotes",
    (("contract", "text"), ("underlying", "text"), ("as_of", "timestamptz"), ("bid", "float8"),
     ("ask", "float8"), ("bid_size", "float8"), ("ask_size", "float8"), ("last", "float8"),
     ("iv", "float8"), ("delta", "float8"), ("gamma", "float8"), ("theta", "float8"),
     ("vega", "float8"), ("source", "text"), ("fetched_at", "timestamptz"), ("expiration", "date"),
     ("strike", "float8"), ("option_type", "text"), ("open_interest", "int8"), ("penny_program", "bool"),
     ("underlying_price", "float8"), ("chain_id", "text"), ("chain_as_of", "timestamptz"),
     ("modelled", "bool")),
    ("contract", "as_of"), _option_quote, "DO NOTHING",
)


# --- equity -> account_equity: one point per (account, minute); the first one stays ------------
def _equity(d: dict[str, Any]) -> Row:
    if d["open_positions"] < 0:
        raise InvalidRecord(f"open_positions {d['open_positions']!r} is negative")
    return (
        d["account"], d["ts"], finite(d["equity"], "equity"), finite(d["cash"], "cash"),
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
        d["account"], d["as_of"], d["decided_at"], one_of(d["kind"], RECONCILE_KINDS, "kind"),
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


# --- alerts -> alerts: every firing and resolution; control -> control_events: every change ------
def _alert(d: dict[str, Any]) -> Row:
    return (
        d["rule"], d["subject"], one_of(d["state"], ALERT_STATES, "state"),
        one_of(d["severity"], SEVERITIES, "severity"), d["started_at"], d["at"], d["summary"],
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
        d["id"], d["account"], one_of(d["action"], CONTROL_ACTIONS, "action"), d["at"], d["reason"],
        Jsonb(d["settings"]), d["flatten"], d["operator"],
    )


CONTROL_EVENTS = TableSpec(
    CONTROL, "control_events",
    (("id", "text"), ("account_name", "text"), ("action", "text"), ("at", "timestamptz"),
     ("reason", "text"), ("settings", "jsonb"), ("flatten", "bool"), ("operator", "text")),
    ("id",), _control, "DO NOTHING",
)
