"""report.html: self-contained (no asset from the network), summary cards with the benchmark, the
per-account tables, and a trades table capped with a note."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.report_html import TRADES_SHOWN, write_html
from schemas.records import GateResult
from trading.ledger import Ledger, Trade


def test_report_is_self_contained_and_holds_every_section(tmp_path: Path) -> None:
    start = datetime(2026, 3, 9, 14, 30, tzinfo=UTC)
    led = Ledger("acct", 1000.0)
    for i in range(5):
        led.curve.append((start + timedelta(minutes=i), 1000.0 + 10 * i))
    led.trades = [
        Trade("acct", "AAA", "long", 1, start, 10.0, start, 11.0, 1.0, "target", f"e{i}", f"x{i}")
        for i in range(TRADES_SHOWN + 3)
    ]
    closes = [(start + timedelta(minutes=i), "AAA", 10.0 + i) for i in range(5)]  # +40 %
    gates = [GateResult("cash", False, 1, 2, "")]
    skip = type("E", (), {"account": "acct", "status": "SKIPPED", "gates": gates})
    summary = {"account": "acct", "return": 0.04, "pnl": 40.0, "sharpe": 1.5, "max_drawdown": 0.0,
               "win_rate": 1.0, "trades": TRADES_SHOWN + 3, "exposure": 0.5}
    path = tmp_path / "report.html"
    write_html(path, "t", [summary], [led], ["a note"], executions=[skip()], closes=closes)
    doc = path.read_text()
    assert not re.search(r"""(src|href)=["']?https?:""", doc)
    assert "data:image/png;base64," in doc
    bench = "buy and hold (universe, equal weight)</h3><dl><dt>return</dt><dd><span class=\"pos\">+40.00%"
    assert bench in doc
    assert f"first {TRADES_SHOWN} of {TRADES_SHOWN + 3} trades" in doc
    assert doc.count("<td>AAA</td>") == TRADES_SHOWN + 1  # the capped trades and the P&L-by-symbol row
    assert "<td>cash</td><td>1</td>" in doc
