"""report.html for a backtest or a demo session: equity and drawdown per account, the summary."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

from trading.ledger import Ledger, drawdown


def _png(ledger: Ledger) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=(3, 1))
    if ledger.curve:
        ts, eq = zip(*ledger.curve, strict=True)
        dd = [d for _, d in drawdown(ledger.curve)]
        ax1.plot(ts, eq, color="#1f77b4", linewidth=1.2)
        ax2.fill_between(ts, dd, 0, color="#d62728", alpha=0.4)
    ax1.set_title(f"{ledger.account}: equity")
    ax1.set_ylabel("USD")
    ax2.set_ylabel("drawdown")
    ax2.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def write_html(
    path: Any, title: str, summaries: list[dict[str, Any]], ledgers: list[Ledger], notes: Sequence[str] = ()
) -> None:
    cols = list(summaries[0]) if summaries else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(s[c]))}</td>" for c in cols) + "</tr>" for s in summaries
    )
    figures = "".join(
        f'<h2>{html.escape(led.account)}</h2><img alt="equity and drawdown of {html.escape(led.account)}" '
        f'src="data:image/png;base64,{_png(led)}">'
        for led in ledgers
    )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}</style></head>
<body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{rows}</table><ul>{note_html}</ul>{figures}
</body></html>"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)
