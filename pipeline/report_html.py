"""report.html of a backtest or a demo session: the accounts' summary table and, per account, a
figure of equity and drawdown (matplotlib, imported when a report is written)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

from trading.ledger import Ledger, drawdown


def _png(ledger: Ledger) -> str:
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window; a Figure of its own, not pyplot's global state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=(9, 5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    if ledger.curve:
        times, equity = zip(*ledger.curve, strict=True)
        dd = [d for _, d in drawdown(ledger.curve)]
        keep = envelope(equity, dd)  # what the figure's pixels can show
        ts, eq, dd = ([series[i] for i in keep] for series in (times, equity, dd))
        ax1.plot(ts, eq, color="#1f77b4", linewidth=1.2)
        ax2.fill_between(ts, dd, 0, color="#d62728", alpha=0.4)
    ax1.set_title(f"{ledger.account}: equity")
    ax1.set_ylabel("USD")
    ax2.set_ylabel("drawdown")
    ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.autofmt_xdate()
    fig.subplots_adjust(left=0.11, right=0.98, top=0.93, bottom=0.16, hspace=0.1)  # tight_layout's, fixed
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode()


PLOT_POINTS = 1000  # buckets across a figure 810 pixels wide (9 in at 90 dpi)


def envelope(*series: Sequence[float], buckets: int = PLOT_POINTS) -> list[int]:
    """The indices of the points to plot of equally long series: each series' first, last, lowest
    and highest point of each of `buckets` runs of points (all of them when few), in order, so the
    plotted line has the shape and the extremes of the whole."""
    import numpy as np

    n = len(series[0]) if series else 0
    if n <= 4 * buckets:
        return list(range(n))
    edges = np.arange(buckets + 1, dtype=np.int64) * n // buckets
    starts, ends = edges[:-1], edges[1:] - 1
    keep = [starts, ends]
    for values in series:
        v = np.asarray(values, dtype=np.float64)
        for pick in (np.argmin, np.argmax):
            keep.append(starts + np.array([pick(v[a: b + 1]) for a, b in zip(starts, ends, strict=True)]))
    return list(np.unique(np.concatenate(keep)).tolist())


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
