"""Topics and tables as pandas DataFrames for notebooks: `read_topic` is a bounded read filtered on the
records' own time (never offsets_for_times); `read_table` reaches history beyond retention.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from opsinfra.endpoints import resolve
from opsinfra.errors import DecodeError
from opsinfra.settings import Settings
from schemas.codec import make_codec
from schemas.topic_io import read_decoded
from schemas.topics import spec as topic_spec

if TYPE_CHECKING:
    import pandas as pd

# the record field that holds each record type's time, and the one that holds its symbol
_TIME_FIELD = {
    "bar": "ts",
    "features": "ts",
    "recommendation": "ts",
    "watchlist_entry": "ts",
    "news_item": "published",
    "scored_news": "published",
    "execution": "decided_at",
    "position": "updated_at",
    "dead_letter": "failed_at",
}
_SYMBOL_FIELD = {
    "bar": "symbol",
    "features": "symbol",
    "recommendation": "symbol",
    "watchlist_entry": "symbol",
    "scored_news": "ticker",
    "execution": "symbol",
    "position": "symbol",
}
_TABLE_TIME = {
    "lane_telemetry": "ts",
    "lane_features": "ts",
    "inbound_events_raw": "published",
    "inbound_events_classified": "published",
    "dispatch_recommendations": "ts",
    "dispatch_executions": "simulated_ts",
    "active_positions": "updated_at",
    "lane_watchlist_state": "ts",
    "dead_letters": "failed_at",
}
_TABLE_SYMBOL = {
    "lane_telemetry": "ticker",
    "lane_features": "ticker",
    "inbound_events_classified": "ticker",
    "dispatch_recommendations": "ticker",
    "dispatch_executions": "ticker",
    "active_positions": "ticker",
    "lane_watchlist_state": "ticker",
}


def _as_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    import pandas as pd

    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def read_topic(
    topic: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    symbols: list[str] | str | None = None,
    limit: int | None = None,
    *,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Decoded records of one contract topic as a DataFrame, with `_partition`, `_offset`,
    `_timestamp` (broker time) and `_key` columns; `start` inclusive, `end` exclusive, on the
    record's own time (bar ts, news published, ...). Undecodable records are skipped and counted
    in `df.attrs["undecodable"]`."""
    import pandas as pd

    settings = settings or Settings()
    endpoints = resolve(settings, need_db=False)
    spec = topic_spec(topic, settings.pipeline_topic_prefix)
    physical = settings.topic(spec.name)
    codec = make_codec(endpoints.schema_registry_url)
    lo, hi = _as_utc(start), _as_utc(end)
    wanted = {symbols.upper()} if isinstance(symbols, str) else {s.upper() for s in symbols or ()}
    time_field = _TIME_FIELD.get(spec.record.SCHEMA)
    symbol_field = _SYMBOL_FIELD.get(spec.record.SCHEMA)

    rows: list[dict[str, Any]] = []
    bad = 0
    messages = read_decoded(
        settings, endpoints.kafka_bootstrap_servers, codec, spec.record, physical,
        quiet_s=0.5, until_ms=int(time.time() * 1000),
    )  # fmt: skip
    for msg, rec in messages:
        if isinstance(rec, DecodeError):
            bad += 1
            continue
        row = rec.to_avro()
        if time_field is not None:
            when = row[time_field]
            if (lo is not None and when < lo) or (hi is not None and when >= hi):
                continue
        if wanted and symbol_field is not None and str(row[symbol_field]).upper() not in wanted:
            continue
        row.update(
            _partition=msg.partition,
            _offset=msg.offset,
            _timestamp=msg.timestamp,
            _key=msg.key.decode("utf-8", "replace") if msg.key is not None else None,
        )
        rows.append(row)
    if time_field is not None:
        rows.sort(key=lambda r: (r[time_field], r["_partition"], r["_offset"]))
    if limit is not None:
        rows = rows[:limit]
    columns = [*spec.record.field_names(), "_partition", "_offset", "_timestamp", "_key"]
    df = pd.DataFrame(rows, columns=columns)
    df.attrs["topic"] = physical
    df.attrs["undecodable"] = bad
    return df


def read_table(
    name: str,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    symbols: list[str] | str | None = None,
    limit: int | None = None,
    *,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Rows of one sink table as a DataFrame, filtered on its time and ticker columns."""
    import pandas as pd
    if name not in _TABLE_TIME:
        raise KeyError(f"{name!r} is not a sink table (known: {', '.join(sorted(_TABLE_TIME))})")
    settings = settings or Settings()
    endpoints = resolve(settings, need_kafka=False)
    where: list[sql.Composable] = []
    params: list[Any] = []
    tcol = sql.Identifier(_TABLE_TIME[name])
    if start is not None:
        where.append(sql.SQL("{} >= %s").format(tcol))
        params.append(_as_utc(start))
    if end is not None:
        where.append(sql.SQL("{} < %s").format(tcol))
        params.append(_as_utc(end))
    if symbols:
        if name not in _TABLE_SYMBOL:
            raise ValueError(f"{name} has no ticker column to filter on")
        wanted = [symbols.upper()] if isinstance(symbols, str) else [s.upper() for s in symbols]
        where.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(_TABLE_SYMBOL[name])))
        params.append(wanted)
    query = sql.SQL("SELECT * FROM {}").format(sql.Identifier(name))
    if where:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
    query += sql.SQL(" ORDER BY {} NULLS LAST").format(tcol)
    if limit is not None:
        query += sql.SQL(" LIMIT %s")
        params.append(int(limit))
    with psycopg.connect(endpoints.database_url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        cols = [d.name for d in cur.description or ()]
        return pd.DataFrame(cur.fetchall(), columns=cols)
