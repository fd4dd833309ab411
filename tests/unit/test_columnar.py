"""The column-wise paths against the row-wise ones they replace, value for value and byte for byte:
the vectorised bar rules, the bar-file intake, the column decoder of topics, the table writer."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import bar_files
from connectors import replay as rp
from connectors.validation import RULE_KINDS, BarRejected, validate_bar, validate_columns
from pipeline.report import _float_cells, to_json, write_records
from schemas.codec import HeaderCodec, decode
from schemas.column_decoder import decode_columns
from schemas.records import Bar, Execution, Features, GateResult, Recommendation
from tests.samples import sample_records

T = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
PRICES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 99.5, 100.0, 101.0, -1.0, math.nan, math.inf, -math.inf]),
    st.floats(-10, 1000),
)


# -- the rules: validate_columns answers what validate_bar answers, row for row ----------------------


@st.composite
def bars(draw: st.DrawFn) -> Bar:
    return Bar(
        draw(st.sampled_from(["AAPL", "MSFT", "TSLA"])),
        T + draw(st.sampled_from([timedelta(0), timedelta(minutes=7), timedelta(seconds=30), US, 9 * HOUR])),
        draw(PRICES), draw(PRICES), draw(PRICES), draw(PRICES),
        draw(st.sampled_from([0, 10, -1, 2**40])),
        draw(st.sampled_from([None, 0, 5, -3])),
        draw(st.one_of(st.none(), PRICES)),
        "replay",
        draw(st.sampled_from([0, 1, -1])),
    )  # fmt: skip


def first_kind(bar: Bar, **rules: Any) -> str | None:
    try:
        validate_bar(bar, **rules)
    except BarRejected as exc:
        return exc.kind
    return None


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(bars(), min_size=1, max_size=40), now_at=st.sampled_from([None, 0, 8]))
def test_the_vectorised_rules_name_the_first_rule_validate_bar_names(
    rows: list[Bar], now_at: int | None
) -> None:
    now = None if now_at is None else T + timedelta(hours=now_at)
    subscribed = {"AAPL", "TSLA"}
    columns = {
        "open": np.array([b.open for b in rows]), "high": np.array([b.high for b in rows]),
        "low": np.array([b.low for b in rows]), "close": np.array([b.close for b in rows]),
        "vwap": np.array([0.0 if b.vwap is None else b.vwap for b in rows]),
        "vwap_null": np.array([b.vwap is None for b in rows]),
        "volume": np.array([b.volume for b in rows]),
        "trade_count": np.array([b.trade_count or 0 for b in rows]),
        "trade_count_null": np.array([b.trade_count is None for b in rows]),
        "ts": np.array([(b.ts - EPOCH) // US for b in rows]),
        "revision": np.array([b.revision for b in rows]),
    }  # fmt: skip
    codes = validate_columns(columns, now=now, subscribed=np.array([b.symbol in subscribed for b in rows]))
    assert [RULE_KINDS[c] for c in codes] == [first_kind(b, now=now, symbols=subscribed) for b in rows]


# -- the intake: load_bar_columns gives what prepare_rows(load_bar_file(path)) gives -------------------

TIMES = ["2026-11-20T14:30:00Z", "2026-11-20T09:31:00-05:00", "2026-11-20T14:30:00",
         " 2026-11-20T14:32:00+00:00 ", "2026-11-20T14:30:30Z", "2026-11-20", "20261120", "", "not-a-time",
         "2026-11-20T14:33:00.000000001Z",
         "2026-11-20T20:04:00+05:30"]  # fmt: skip
NUMBERS = ["1", "2", "1.5", "100.25", "-0", "-0.0", "0", "+3", " 4 ", "1e2", "1.0", "2.5e-1", "", "nan",
           "inf",
           "abc", "1_000", "-1", "9007199254740993", "12345678901234567890", ".5", "5.", '"7"']  # fmt: skip
COUNTS = ["10", "0", "-5", "", "10.0", "10.5", "1e3", "x", "+7", "99999999999999999999"]


@st.composite
def csv_files(draw: st.DrawFn) -> str:
    optional = draw(st.lists(st.sampled_from(["trade_count", "vwap", "revision", "note"]), unique=True))
    header = ["symbol", "ts", "open", "high", "low", "close", "volume", *optional]
    cells = {
        "symbol": st.sampled_from(["AAPL", "msft", " TSLA ", "", "a,b"]), "ts": st.sampled_from(TIMES),
        "open": st.sampled_from(NUMBERS), "high": st.sampled_from(["2", "3", "101", "1e9", "", "-0", "inf"]),
        "low": st.sampled_from(["0.5", "1", "-0.0", "0", "99"]), "close": st.sampled_from(NUMBERS),
        "volume": st.sampled_from(COUNTS), "trade_count": st.sampled_from(COUNTS),
        "vwap": st.sampled_from(NUMBERS), "revision": st.sampled_from(["0", "1", "", "2.0", "-1", "x"]),
        "note": st.sampled_from(["", "x", '"q,"']),
    }  # fmt: skip
    rows = draw(st.lists(st.tuples(*(cells[c] for c in header)), min_size=1, max_size=30))
    rows += draw(st.lists(st.sampled_from(rows), max_size=5))  # exact repeats
    return "\n".join([",".join(header), *(",".join(r) for r in rows)]) + "\n"


def plain(bar: Bar) -> str:
    """The bar's repr, a pandas Timestamp (the row path's time of a nanosecond Parquet column) as
    the datetime the column path makes of it."""
    ts = bar.ts.to_pydatetime() if hasattr(bar.ts, "to_pydatetime") else bar.ts
    return repr(replace(bar, ts=ts))


def assert_same_intake(path: Path) -> None:
    rows = rp.prepare_rows(rp.load_bar_file(path))
    columns = rp.load_bar_columns(path).prepared()
    assert [repr(b) for b in columns.bars] == [plain(b) for b in rows.bars]
    assert [(r.number, r.reason, r.kind, repr(r.row)) for r in columns.rejected] == [
        (r.number, r.reason, r.kind, repr(r.row)) for r in rows.rejected
    ]
    assert columns.repeats == rows.repeats


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=csv_files())
def test_a_csv_gives_the_rows_rules_reasons_and_order_of_the_row_path(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(text, "utf-8")
    assert_same_intake(path)


def test_the_usual_csv_is_read_column_wise_without_the_row_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "symbol,ts,open,high,low,close,volume,trade_count,vwap,revision\n"
        "AAPL,2026-11-20T14:30:00+00:00,1.5,2,1,1.75,100,3,1.6,0\n"
        "MSFT,2026-11-20T14:30:00+00:00,1.5,2,1,1.75,100,,,0\n",
        "utf-8",
    )
    monkeypatch.setattr(bar_files, "row_to_bar", None)  # any row left to the row path would fail here
    assert len(rp.load_bar_columns(path).prepared().bars) == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    unit=st.sampled_from(["s", "ms", "us", "ns"]),
    zone=st.sampled_from(["UTC", "America/New_York", None]),
    offsets=st.lists(st.sampled_from([0, 60, 61, 120, 3600, 10**-3, 10**-9]), min_size=1, max_size=12),
    kinds=st.sampled_from(["float64", "float32", "int64"]),
    volume=st.lists(st.one_of(st.none(), st.sampled_from([1.0, 2.5, -1.0, 7.0])), min_size=12, max_size=12),
    symbols=st.lists(st.one_of(st.none(), st.sampled_from(["AAPL", "", "msft"])), min_size=12, max_size=12),
)
def test_a_parquet_file_gives_what_the_row_path_gives(
    tmp_path: Path, unit: str, zone: str | None, offsets: list[float], kinds: str,
    volume: list[float | None], symbols: list[str | None],
) -> None:  # fmt: skip
    n = len(offsets)
    base = int(T.timestamp())
    scale = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    stamps = [int(round((base + o) * scale)) for o in offsets]
    prices = pa.array([1.0 + i for i in range(n)]).cast(kinds)
    table = pa.table({
        "symbol": pa.array(symbols[:n], pa.string()),
        "ts": pa.array(stamps, pa.timestamp(unit, tz=zone)),
        "open": prices, "high": pa.array([2.0 + i for i in range(n)]).cast(kinds), "low": prices,
        "close": prices,
        "volume": pa.array(volume[:n], pa.float64()),
        "revision": pa.array([i % 2 for i in range(n)], pa.int32()),
    })  # fmt: skip
    path = tmp_path / "bars.parquet"
    pq.write_table(table, path)
    assert_same_intake(path)


def test_a_short_row_is_rejected_rather_than_crashing(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("symbol,ts,open,high,low,close,volume\nAAPL,2026-11-20T14:30:00Z,1,1,1\n", "utf-8")
    (rejected,) = rp.prepare_rows(rp.load_bar_file(path)).rejected
    assert rejected.kind == "volume missing"  # parse_bar asks for the volume first
    assert_same_intake(path)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2]),
            st.sampled_from(["A", "B"]),
            st.sampled_from([0, 1]),
            st.sampled_from([1.0, 2.0, -0.0, 0.0]),
            st.sampled_from([None, 1]),
        ),
        max_size=30,
    )
)
def test_columns_order_and_drop_repeats_as_the_records_do(
    rows: list[tuple[int, str, int, float, int | None]],
) -> None:
    records = [
        Bar(s, T + timedelta(minutes=m), c, 2.0, -1.0, c, 5, n, None, "replay", r) for m, s, r, c, n in rows
    ]
    expected = rp.prepare_bars(records)
    ordered, repeats = rp.BarColumns.from_bars(records, range(len(records))).ordered()
    assert [repr(b) for b in ordered.bars()] == [
        repr(b) for b in expected.bars
    ] and repeats == expected.repeats


# -- the topic reader: decode_columns decodes what decode decodes -----------------------------------


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_decoded_columns_are_the_records_the_codec_decodes(data: st.DataObject) -> None:
    from tests.avro_values import avro_values

    codec = HeaderCodec()
    for record_type in (Bar, Features):
        schema = json.loads(codec.schemas.get(record_type.SCHEMA).text)
        values = data.draw(st.lists(avro_values(schema, nan=True), min_size=1, max_size=8))
        messages = [codec.encode("t", record_type(**v)) for v in values]
        spoiled = data.draw(st.sampled_from(["none", "cut", "extra", "no headers", "tombstone"]))
        if spoiled != "none":
            value, headers = messages[0]
            messages[0] = {"cut": (value[:-1], headers), "extra": (value + b"\0", headers),
                           "no headers": (value, []), "tombstone": (None, headers)}[spoiled]  # fmt: skip
        vals, hdrs = [m[0] for m in messages], [m[1] for m in messages]
        got = decode_columns(codec, record_type, "t", vals, hdrs)
        expected, errors = [], []
        for i, (v, h) in enumerate(messages):
            try:
                expected.append((i, decode(codec, record_type, v, h, topic="t").to_avro()))
            except Exception:  # noqa: BLE001 - which ones fail is what is compared
                errors.append(i)
        assert [i for i, _ in got.errors] == errors
        assert got.index.tolist() == [i for i, _ in expected]
        for row, (_, want) in enumerate(expected):
            assert repr(_row(got.columns, row)) == repr(want)


def _row(columns: dict[str, Any], row: int) -> dict[str, Any]:
    out = {}
    for name, c in columns.items():
        if c.nulls is not None and c.nulls[row]:
            out[name] = None
        elif c.kind == "string":
            out[name] = c.labels[c.values[row]]
        elif c.kind == "timestamp-micros":
            out[name] = EPOCH + timedelta(microseconds=int(c.values[row]))
        else:
            out[name] = c.values[row].item()
    return out


# -- the writer: CSV cells are what csv.writer wrote ------------------------------------------------


def test_float_cells_are_repr() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, 200_000) * 10.0 ** rng.integers(-12, 22, 200_000)
    specials = [0.0, -0.0, 1.0, 1e-4, 9.999e-5, 1e9, 999999999.9999999, 1e15, 1e16, 5e-324,
                1.7976931348623157e308,
                math.nan, math.inf, -math.inf, 0.1 + 0.2, 100.0, 123456789.0]  # fmt: skip
    values = [*x.tolist(), *np.round(x, 2).tolist(), *np.floor(x).tolist(), *specials]
    cells = _float_cells(pa.array([*values, None], pa.float64())).to_pylist()
    assert cells == [*map(repr, values), None]


def csv_module(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    """What the command wrote before: csv.DictWriter over each record's dict."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: v.isoformat() if isinstance(v, datetime) else to_json(v)
                         if isinstance(v, dict | list) else v for k, v in row.items()})  # fmt: skip
    return buf.getvalue().encode()


def test_tables_are_what_csv_writer_wrote(tmp_path: Path) -> None:
    samples = sample_records(T)
    feats = samples["features.1m"]
    odd = Features(*[getattr(feats, f) for f in Features.field_names()])  # an int and -0.0 where floats go
    object.__setattr__(odd, "sma_20", 190)
    object.__setattr__(odd, "rsi_14", -0.0)
    zoned = Features(*[getattr(feats, f) for f in Features.field_names()])
    object.__setattr__(zoned, "ts", T.astimezone(timezone(timedelta(hours=-5))))
    object.__setattr__(zoned, "symbol", 'A,"B"\nC')
    cases = {
        Features: [feats, odd, zoned, feats],
        Recommendation: [samples["signals"]] * 3,
        Execution: [samples["executions"], Execution(**{**samples["executions"].to_avro(), "gates": [
            GateResult("g", False, 0.1 + 0.2, "x,y", 'say "no"'), GateResult("h", True, None, 1, "")],
            "qty": None, "bar_used_ts": None})],
    }  # fmt: skip
    for record_type, records in cases.items():
        path = tmp_path / f"{record_type.SCHEMA}.csv"
        write_records(path, record_type, records, "csv")
        rows = [r.to_avro() for r in records]
        assert path.read_bytes() == csv_module(list(record_type.field_names()), rows), record_type
    write_records(tmp_path / "by_time.csv", Features, cases[Features], "csv", by_time=True)  # mixed zones
    ordered = sorted(cases[Features], key=lambda r: (r.ts, r.symbol))
    assert (tmp_path / "by_time.csv").read_bytes() == csv_module(
        list(Features.field_names()), [r.to_avro() for r in ordered]
    )


def test_by_time_orders_like_sorted_by_ts_and_symbol(tmp_path: Path) -> None:
    feats = sample_records(T)["features.1m"]
    records = []
    for minute, symbol in [(2, "B"), (1, "C"), (2, "A"), (1, "C"), (0, "Z")]:
        f = Features(*[getattr(feats, n) for n in Features.field_names()])
        object.__setattr__(f, "ts", T + timedelta(minutes=minute))
        object.__setattr__(f, "symbol", symbol)
        object.__setattr__(f, "bars_seen", len(records))
        records.append(f)
    path = tmp_path / "f.csv"
    write_records(path, Features, records, "csv", by_time=True)
    ordered = sorted(records, key=lambda r: (r.ts, r.symbol))
    assert path.read_bytes() == csv_module(list(Features.field_names()), [r.to_avro() for r in ordered])
    write_records(tmp_path / "f.parquet", Features, records, "parquet", by_time=True)
    table = pq.read_table(tmp_path / "f.parquet")
    assert table["bars_seen"].to_pylist() == [r.bars_seen for r in ordered]
    assert table["ts"].to_pylist() == [r.ts for r in ordered]
