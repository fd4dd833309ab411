"""Topics and tables as pandas DataFrames for notebooks: `read_topic` is a bounded read filtered on the
records' own time (never offsets_for_times); `read_table` reaches history beyond retention.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from connectors.replay import gc_paused
from opsinfra.endpoints import resolve
from opsinfra.errors import DecodeError
from opsinfra.kafka_io import Consumed, read_to_end
from opsinfra.settings import Settings
from schemas.avro_columns import Column, Unsupported
from schemas.codec import Codec, decode, make_codec
from schemas.records import Record
from schemas.topic_columns import TopicColumns, read_columns
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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
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
    settings = settings or Settings()
    endpoints = resolve(settings, need_db=False)
    spec = topic_spec(topic, settings.pipeline_topic_prefix)
    physical = settings.topic(spec.name)
    codec = make_codec(endpoints.schema_registry_url)
    query = _Query(
        lo=_as_utc(start), hi=_as_utc(end),
        wanted={symbols.upper()} if isinstance(symbols, str) else {s.upper() for s in symbols or ()},
        time_field=_TIME_FIELD.get(spec.record.SCHEMA), symbol_field=_SYMBOL_FIELD.get(spec.record.SCHEMA),
        limit=limit, columns=[*spec.record.field_names(), "_partition", "_offset", "_timestamp", "_key"],
    )  # fmt: skip
    # 0.2 s: on a broker whose end offsets are lower bounds (Tansu: its last batch's base offset + 1),
    # reaching them means that batch came whole; the quiet period only covers stragglers
    read = {"quiet_s": 0.2, "until_ms": int(time.time() * 1000)}
    with gc_paused():
        try:
            topic_columns = read_columns(settings, endpoints.kafka_bootstrap_servers, codec, spec.record,
                                         physical, positions=True, **read)  # fmt: skip
        except Unsupported:  # a record with nested fields: record by record
            batch = _Batch()
            for m in read_to_end(settings, endpoints.kafka_bootstrap_servers, physical, **read):  # type: ignore[arg-type]
                batch.add(m)
            df, bad = _frame_of_records(codec, spec.record, physical, batch, query)
        else:
            df, bad = _frame_of_columns(topic_columns, query), len(topic_columns.decoded.errors)
    df.attrs["topic"] = physical
    df.attrs["undecodable"] = bad
    return df


@dataclass
class _Query:
    lo: datetime | None
    hi: datetime | None
    wanted: set[str]
    time_field: str | None
    symbol_field: str | None
    limit: int | None
    columns: list[str]


@dataclass
class _Batch:
    """The messages read, as columns of their parts."""

    values: list[bytes | None] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)

    def add(self, m: Consumed) -> None:
        self.values.append(m.value)
        self.headers.append(m.headers)
        self.partitions.append(m.partition)
        self.offsets.append(m.offset)
        self.timestamps.append(m.timestamp_ms)
        self.keys.append(m.key)


def _frame_of_columns(read: TopicColumns, q: _Query) -> pd.DataFrame:
    """The DataFrame pandas would build from the decoded records' dicts, built from columns."""
    import numpy as np
    import pandas as pd

    cols, at = read.decoded.columns, read.decoded.index
    partition = read.partitions[at]
    offset = read.offsets[at]
    keep = np.ones(len(at), bool)
    if q.time_field is not None:
        when = cols[q.time_field].values
        if q.lo is not None:
            keep &= when >= (q.lo - _EPOCH) // _US
        if q.hi is not None:
            keep &= when < (q.hi - _EPOCH) // _US
    if q.wanted and q.symbol_field is not None:
        sym = cols[q.symbol_field]
        keep &= np.isin(sym.values, [i for i, s in enumerate(sym.labels or ()) if str(s).upper() in q.wanted])
    rows = np.flatnonzero(keep)
    if q.time_field is not None:
        rows = rows[_time_order(cols[q.time_field].values[rows], partition[rows])]
    if q.limit is not None:
        rows = rows[: q.limit]
    if not len(rows):
        return pd.DataFrame([], columns=q.columns)
    data = {name: _series(c, rows) for name, c in cols.items()}
    data["_partition"] = partition[rows]
    data["_offset"] = offset[rows]
    stamps = read.timestamps_ms[at[rows]] * 1000
    data["_timestamp"] = pd.Series(stamps.astype("datetime64[us]")).dt.tz_localize("UTC")
    assert read.keys is not None
    data["_key"] = _keys(read.keys, at[rows])
    return pd.DataFrame({name: data[name] for name in q.columns}, copy=False)


def _time_order(when: Any, partition: Any) -> Any:
    """The order of rows by (time, partition, offset), for rows in the order they were read (each
    partition's in offset order): two stable sorts, by partition (a radix sort of small numbers),
    then by time (a merge of each partition's runs, mostly in time order already)."""
    import numpy as np

    small = partition.astype(np.int16) if len(partition) and partition.max() < 2**15 else partition
    by_partition = np.argsort(small, kind="stable")
    return by_partition[np.argsort(when[by_partition], kind="stable")]


def _series(c: Column, rows: Any) -> Any:
    """One column as pandas infers it from Python values: strings as str, a time as
    datetime64[us, UTC], a nullable int as float64 (NaN), a nullable bool and all None as object."""
    import numpy as np
    import pandas as pd

    values = c.values[rows]
    nulls = None if c.nulls is None else c.nulls[rows]
    if nulls is not None and nulls.all():  # nothing but None: pandas keeps objects
        return np.full(len(rows), None, object)
    if c.kind == "string":
        return _texts(c.labels or [], values, nulls)
    if c.kind == "timestamp-micros":
        series = pd.Series(values.astype("datetime64[us]")).dt.tz_localize("UTC")
        return series.where(~nulls) if nulls is not None and nulls.any() else series
    if nulls is None or not nulls.any():
        return values
    if c.kind == "boolean":
        out = values.astype(object)
        out[nulls] = None
        return out
    return np.where(nulls, np.nan, values.astype(np.float64))


def _texts(labels: Sequence[str], codes: Any, nulls: Any) -> Any:
    """Text as pandas infers it from str values (and None): built by Arrow from the labels, with no
    Python object per row when pandas stores text in Arrow (its default since 3.0)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    dtype = pd.Series(["text"]).dtype
    if not isinstance(dtype, pd.StringDtype):  # text as Python objects (future.infer_string off)
        table = np.array([*labels, None], object)
        return pd.Series(table[np.where(nulls, len(labels), codes) if nulls is not None else codes])
    taken = pa.array(labels, pa.string()).take(pa.array(codes, pa.int32(), mask=nulls))
    return pd.Series(taken, dtype=dtype)


def _keys(keys: list[bytes | None], rows: Any) -> Any:
    """The `rows` of the message keys as text (decoded once per distinct key)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(pa.array(keys, pa.binary()))
    labels = [k.decode("utf-8", "replace") for k in encoded.dictionary.to_pylist()]
    codes = encoded.indices.fill_null(0).to_numpy()[rows]
    nulls = encoded.indices.is_null().to_numpy(zero_copy_only=False)[rows] if encoded.null_count else None
    if nulls is not None and nulls.all():  # nothing but None: pandas keeps objects
        return np.full(len(rows), None, object)
    return _texts(labels, codes, nulls)


def _frame_of_records(
    codec: Codec, record: type[Record], topic: str, batch: _Batch, q: _Query
) -> tuple[pd.DataFrame, int]:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    bad = 0
    for i, value in enumerate(batch.values):
        try:
            rec = decode(codec, record, value, batch.headers[i], topic=topic,
                         partition=batch.partitions[i], offset=batch.offsets[i])  # fmt: skip
        except DecodeError:
            bad += 1
            continue
        row = rec.to_avro()
        if q.time_field is not None:
            when = row[q.time_field]
            if (q.lo is not None and when < q.lo) or (q.hi is not None and when >= q.hi):
                continue
        if q.wanted and q.symbol_field is not None and str(row[q.symbol_field]).upper() not in q.wanted:
            continue
        key = batch.keys[i]
        row.update(
            _partition=batch.partitions[i],
            _offset=batch.offsets[i],
            _timestamp=datetime.fromtimestamp(batch.timestamps[i] / 1000, tz=UTC),
            _key=key.decode("utf-8", "replace") if key is not None else None,
        )
        rows.append(row)
    if (time_field := q.time_field) is not None:
        rows.sort(key=lambda r: (r[time_field], r["_partition"], r["_offset"]))
    if q.limit is not None:
        rows = rows[: q.limit]
    return pd.DataFrame(rows, columns=q.columns), bad


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
    import psycopg
    from psycopg import sql

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
