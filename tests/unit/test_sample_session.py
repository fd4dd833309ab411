"""The bundled sample session: regenerable, and realistic in the ways the demo relies on."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from pipeline import sample_session

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "sample_session"


@pytest.fixture(scope="module")
def generated() -> tuple[list[dict[str, object]], list[dict[str, object]], dict[str, object]]:
    return sample_session.generate()


def test_bundled_files_are_the_generators_output(tmp_path: Path) -> None:
    sample_session.write(tmp_path)
    for name in ("bars.csv", "news.jsonl", "README.json"):
        assert (tmp_path / name).read_bytes() == (BUNDLED / name).read_bytes(), name


def test_says_it_is_synthetic(generated: tuple) -> None:
    assert generated[2]["synthetic"] is True


def test_volume_is_u_shaped_and_iex_sized(generated: tuple) -> None:
    bars = [b for b in generated[0] if b["revision"] == 0]
    by_minute: dict[int, list[int]] = defaultdict(list)
    daily: dict[str, int] = defaultdict(int)
    for b in bars:
        minute = int(str(b["ts"])[11:13]) * 60 + int(str(b["ts"])[14:16]) - (14 * 60 + 30)
        by_minute[minute].append(int(b["volume"]))  # type: ignore[arg-type]
        daily[str(b["symbol"])] += int(b["volume"])  # type: ignore[arg-type]

    def mean(ms: range) -> float:
        vals = [v for m in ms for v in by_minute[m]]
        return sum(vals) / len(vals)

    midday = mean(range(150, 240))
    assert mean(range(0, 20)) > 2 * midday
    assert mean(range(370, 390)) > 1.5 * midday
    assert 0.5e6 < daily["AAPL"] < 2e6  # IEX scale, not consolidated (~52M)


def test_gap_no_trade_minutes_and_updated_bar(generated: tuple) -> None:
    bars, _news, notes = generated
    have = {(b["symbol"], b["ts"], b["revision"]) for b in bars}
    gap = notes["gap"]
    assert (gap["symbol"], gap["start"], 0) not in have
    for sym, minutes in notes["no_trade_minutes"].items():
        for ts in minutes:
            assert (sym, ts, 0) not in have
    upd = notes["updated_bar"]
    assert (upd["symbol"], upd["ts"], 0) in have and (upd["symbol"], upd["ts"], 1) in have
    assert all(
        b["low"] <= min(b["open"], b["close"]) <= max(b["open"], b["close"]) <= b["high"] for b in bars
    )


def test_news_mentions_the_universe_and_has_market_items(generated: tuple) -> None:
    news = generated[1]
    text = " ".join(f"{n['title']} {n['summary']}" for n in news)
    for sym, (company, *_rest) in sample_session.UNIVERSE.items():
        assert company in text or f"${sym}" in text
    assert any("meta-analysis" in str(n["title"]) for n in news)
    assert len({n["id"] for n in news}) == len(news)


def test_bundled_csv_has_the_contract_columns() -> None:
    with open(BUNDLED / "bars.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:7] == ["symbol", "ts", "open", "high", "low", "close", "volume"]
    assert json.loads((BUNDLED / "README.json").read_text())["session"] == "2026-11-20"
