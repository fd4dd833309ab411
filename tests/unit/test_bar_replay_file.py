"""Replay preparation and pacing: (ts, revision) order, stable ties, repeats skipped, bad rows out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors import replay as rp
from connectors.intake import BarIntake
from schemas.records import Bar
from tests.fakes import ListSink

T = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)
M = timedelta(minutes=1)
CSV = """symbol,ts,open,high,low,close,volume,trade_count,vwap,revision
AAPL,2026-11-20T09:31:00-05:00,100,101,99,100.5,1200,12,100.2,0
MSFT,2026-11-20T14:30:00Z,300,301,299,300.5,800,,,
AAPL,2026-11-20T14:30:00,100,101,99,100.7,1300,13,100.3,1
AAPL,2026-11-20T14:30:00+00:00,100,101,99,100.5,1200,12,100.2,0
AAPL,2026-11-20T14:30:00+00:00,100,101,99,100.5,1200,12,100.2,0
NVDA,2026-11-20T14:30:00Z,100,99,101,100,10,,,0
TSLA,not-a-time,1,1,1,1,1,,,
"""


def test_parse_speed() -> None:
    assert rp.parse_speed("max") is None
    assert rp.parse_speed("1x") == 1.0
    assert rp.parse_speed("60X") == 60.0
    for bad in ("fast", "0x", "-2x"):
        with pytest.raises(ValueError):
            rp.parse_speed(bad)


def test_a_csv_is_ordered_by_ts_then_revision_and_repeats_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(CSV, "utf-8")
    prep = rp.prepare_rows(rp.load_bar_file(path))
    got = [(b.symbol, b.ts, b.revision, b.close) for b in prep.bars]
    assert got == [
        ("MSFT", T, 0, 300.5),  # ties keep file order: MSFT came before the AAPL rows of 14:30
        ("AAPL", T, 0, 100.5),
        ("AAPL", T, 1, 100.7),
        ("AAPL", T + M, 0, 100.5),  # 09:31 EST
    ]
    assert prep.repeats == 1
    assert {b.source for b in prep.bars} == {"replay"}
    assert prep.bars[0].trade_count is None and prep.bars[0].vwap is None
    reasons = sorted(r.reason for r in prep.rejected)
    assert len(reasons) == 2 and "high 99.0 < low 101.0" in reasons[0] and "unparseable" in reasons[1]


def test_the_column_path_gives_what_the_row_path_gives(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(CSV, "utf-8")
    rows, columns = rp.prepare_rows(rp.load_bar_file(path)), rp.prepare_file(path)
    assert columns.bars == rows.bars and columns.repeats == rows.repeats == 1
    seen = [(r.number, r.reason, r.row) for r in columns.rejected]
    assert seen == [(r.number, r.reason, r.row) for r in rows.rejected]
    selected = rp.load_bar_columns(path).columns.select(T, T + M, {"AAPL"}).bars()
    assert [(b.symbol, b.ts, b.revision) for b in selected] == [("AAPL", T, 0), ("AAPL", T, 1)]


def test_parquet_with_aware_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "bars.parquet"
    table = pa.table({
        "symbol": ["AAPL", "AAPL"],
        "ts": pa.array([T + M, T], type=pa.timestamp("us", tz="UTC")),
        "open": [1.0, 1.0], "high": [2.0, 2.0], "low": [0.5, 0.5], "close": [1.5, 1.5],
        "volume": [10, 20],
    })
    pq.write_table(table, path)
    prep = rp.prepare_rows(rp.load_bar_file(path))
    assert [(b.ts, b.volume, b.revision) for b in prep.bars] == [(T, 20, 0), (T + M, 10, 0)]
    assert rp.prepare_file(path).bars == prep.bars


def test_a_file_without_the_required_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("symbol,ts,close\nAAPL,2026-11-20T14:30:00Z,1\n", "utf-8")
    with pytest.raises(ValueError, match="open, high, low, volume"):
        rp.load_bar_file(path)
    with pytest.raises(ValueError, match="csv or .parquet"):
        rp.load_bar_file(tmp_path / "bars.json")


def bars(n: int, step: timedelta = M) -> list[Bar]:
    return [Bar("AAPL", T + i * step, 1, 1, 1, 1, 1, None, None, "replay", 0) for i in range(n)]


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_publish_paces_by_bar_time() -> None:
    clock, sink = FakeTime(), ListSink()
    progress: list[int] = []
    report = rp.publish(rp.Prepared(bars(4)), BarIntake(sink, symbols=None), origin="t", speed=60.0,
                        sleep=clock.sleep, monotonic=clock.monotonic, on_progress=progress.append)
    assert clock.sleeps == pytest.approx([1.0, 1.0, 1.0])  # one bar-minute = one second at 60x
    assert report.published == 4 and len(sink.bars) == 4 and sum(progress) == 4
    assert sink.flushes == 1


def test_publish_at_max_speed_never_sleeps_and_dead_letters_rejects() -> None:
    clock, sink = FakeTime(), ListSink()
    prep = rp.Prepared(bars(3), rejected=[rp.Rejected("bad row", {"symbol": "AAPL", "ts": "x"})])
    report = rp.publish(prep, BarIntake(sink, symbols=None), origin="replay:bars.csv", speed=None,
                        sleep=clock.sleep, monotonic=clock.monotonic)
    assert clock.sleeps == [] and report.published == 3 and report.rejected == 1
    (letter,) = sink.dlq
    assert letter.topic == "replay:bars.csv" and letter.error == "bad row"
    assert letter.value == b'{"symbol": "AAPL", "ts": "x"}' and letter.original_key == b"AAPL"
