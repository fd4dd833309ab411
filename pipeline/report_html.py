"""report.html of a backtest or a demo session: the accounts' summary table and, per account, a
figure of equity and drawdown (matplotlib, imported when a report is written)."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from trading.ledger import MINUTES_PER_YEAR, Ledger, drawdown
from trading.report_metrics import (
    benchmark,
    daily_returns,
    day_starts,
    max_drawdown,
    pnl_by_symbol,
    skips_by_gate,
)


def _png(ledger: Ledger, bench: Sequence[float] = ()) -> str:
    """Equity (and the benchmark) over drawdown on trading time: x is the index of the curve's
    minutes, so nights and weekends take no room; each day's first minute is marked with its date."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window; a Figure of its own, not pyplot's global state
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=(9, 4.2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    if ledger.curve:
        times, equity = zip(*ledger.curve, strict=True)
        dd = [d for _, d in drawdown(ledger.curve)]
        series: list[Sequence[float]] = [equity, dd] + ([bench] if len(bench) == len(equity) else [])
        keep = envelope(*series)  # what the figure's pixels can show
        eq, dd_kept = [equity[i] for i in keep], [dd[i] for i in keep]
        ax1.plot(keep, eq, color="#1f77b4", linewidth=1.2, label="account")
        if len(series) == 3:
            b = [bench[i] for i in keep]
            ax1.plot(keep, b, color="#7f7f7f", linewidth=1.0, label="buy and hold (universe)")
            ax1.legend(loc="upper left", fontsize=8, frameon=False)
        ax2.fill_between(keep, dd_kept, 0, color="#d62728", alpha=0.4)
        starts = day_starts(times)
        step = max(1, len(starts) // 12)  # at most ~12 labelled days
        for ax in (ax1, ax2):  # one collection per axis: a line per day is slow over years
            ax.vlines([i for i, _ in starts[1:]], 0, 1, transform=ax.get_xaxis_transform(),
                      colors="#dddddd", linewidth=0.6, zorder=0)
        ax2.set_xticks([i for i, _ in starts[::step]], [d.strftime("%m-%d") for _, d in starts[::step]])
        ax2.set_xlim(0, max(len(equity) - 1, 1))
    ax1.set_title(f"{ledger.account}: equity on trading time")
    ax1.set_ylabel("USD")
    ax2.set_ylabel("drawdown")
    ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.subplots_adjust(left=0.11, right=0.98, top=0.92, bottom=0.1, hspace=0.1)
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


TRADES_SHOWN = 200
TRADE_HEAD = ("entry", "exit", "symbol", "side", "qty", "entry price", "exit price", "P&L", "exit reason")

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em}
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;
min-width:13em}.card h3{margin:0 0 .4em}.card dl{display:grid;grid-template-columns:auto auto;gap:.1em 1em;
margin:0;font-size:.9em}.card dd{margin:0;text-align:right;font-variant-numeric:tabular-nums}
.bench{background:#f7f7f7}table{border-collapse:collapse;font-size:.85em}
td,th{border:1px solid #ddd;padding:2px 7px;text-align:right}th{background:#f4f4f4}
.scroll{max-height:24em;overflow:auto;display:inline-block}.row{display:flex;flex-wrap:wrap;gap:1.5em}
.pos{color:#1a7f37}.neg{color:#c62828}img{max-width:100%}"""


def sortino(equity: Sequence[float]) -> float | None:
    """Sortino of per-minute equity returns, annualised as the ledger's Sharpe (sqrt(252 x 390)), by
    empyrical's convention (downside deviation: root mean square of min(r, 0) over all minutes);
    tests/unit/test_report_library.py checks it against empyrical, whose import (scipy) costs ~2 s."""
    import numpy as np

    eq = np.asarray(equity, dtype=np.float64)
    if len(eq) < 3 or (eq[:-1] <= 0).any():
        return None
    rets = eq[1:] / eq[:-1] - 1
    down = float(np.sqrt(np.mean(np.minimum(rets, 0.0) ** 2)))
    return float(np.mean(rets)) / down * MINUTES_PER_YEAR**0.5 if down > 0 else None


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:+.2%}"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,.2f}"


def _signed(v: float, text: str) -> str:
    return f'<span class="{"pos" if v > 0 else "neg" if v < 0 else ""}">{html.escape(text)}</span>'


def _card(title: str, items: Sequence[tuple[str, str]], cls: str = "card") -> str:
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f'<div class="{cls}"><h3>{html.escape(title)}</h3><dl>{body}</dl></div>'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def write_html(
    path: Any,
    title: str,
    summaries: list[dict[str, Any]],
    ledgers: list[Ledger],
    notes: Sequence[str] = (),
    *,
    executions: Sequence[Any] = (),
    closes: Iterable[tuple[datetime, str, float]] = (),
) -> None:
    """The report: summary cards (per account and the benchmark), then per account equity and
    drawdown on trading time with the buy-and-hold benchmark, daily returns, P&L by symbol, skips by
    gate and the trades. `closes`: (ts, symbol, close) in time order, for the benchmark."""
    times = sorted({ts for led in ledgers for ts, _ in led.curve})
    unit = benchmark(closes, times, 1.0)  # buy and hold of 1 USD; each account's cash scales it
    at = dict(zip(times, unit, strict=True))
    has_bench = bool(unit) and any(v != 1.0 for v in unit)
    skips = skips_by_gate(executions)
    by_acc = {s["account"]: s for s in summaries}
    cards = []
    for led in ledgers:
        s = by_acc.get(led.account, {})
        equity = [v for _, v in led.curve]
        cards.append(_card(led.account, [
            ("return", _signed(s.get("return") or 0, _pct(s.get("return")))),
            ("P&L", _signed(s.get("pnl") or 0, _num(s.get("pnl")))),
            ("Sharpe", _num(s.get("sharpe"))),
            ("Sortino", _num(sortino(equity))),
            ("max drawdown", _pct(-(s.get("max_drawdown") or 0))),
            ("win rate", "-" if s.get("win_rate") is None else f"{s['win_rate']:.0%}"),
            ("trades", str(s.get("trades", len(led.trades)))),
            ("exposure", "-" if s.get("exposure") is None else f"{s['exposure']:.0%}"),
        ]))
    if has_bench:
        cards.append(_card("buy and hold (universe, equal weight)", [
            ("return", _signed(unit[-1] - 1, _pct(unit[-1] - 1))),
            ("max drawdown", _pct(-max_drawdown(unit))),
        ], "card bench"))
    sections = []
    for led in ledgers:
        name = html.escape(led.account)
        bench = [at[ts] * led.starting_cash for ts, _ in led.curve] if has_bench else []
        daily = _table(["day", "return"], [
            [html.escape(str(d)), _signed(r, _pct(r))] for d, r in daily_returns(led.curve, led.starting_cash)
        ])
        per_sym = _table(["symbol", "P&L", "trades"], [
            [html.escape(sym), _signed(p, _num(p)), str(n)] for sym, p, n in pnl_by_symbol(led.trades)
        ])
        gates = _table(["first failing gate", "skips"], [
            [html.escape(g), str(n)] for g, n in skips.get(led.account, Counter()).most_common()
        ])
        shown = led.trades[:TRADES_SHOWN]
        trades = _table(TRADE_HEAD, [
            [f"{t.entry_ts:%Y-%m-%d %H:%M}", f"{t.exit_ts:%Y-%m-%d %H:%M}", html.escape(t.symbol), t.side,
             f"{t.qty:g}", _num(t.entry_price), _num(t.exit_price), _signed(t.pnl, _num(t.pnl)),
             html.escape(t.exit_reason or "-")] for t in shown
        ])
        n_trades = len(led.trades)
        capped = f"<p>first {len(shown)} of {n_trades} trades</p>" if n_trades > len(shown) else ""
        sections.append(
            f'<h2>{name}</h2><img alt="equity and drawdown of {name}" '
            f'src="data:image/png;base64,{_png(led, bench)}">'
            f'<div class="row"><div><h3>daily returns</h3><div class="scroll">{daily}</div></div>'
            f'<div><h3>P&amp;L by symbol</h3><div class="scroll">{per_sym}</div></div>'
            f'<div><h3>skips by gate</h3>{gates}</div></div>'
            f'<h3>trades</h3>{capped}<div class="scroll">{trades}</div>'
        )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body><h1>{html.escape(title)}</h1><div class="cards">{"".join(cards)}</div><ul>{note_html}</ul>
{"".join(sections)}
</body></html>"""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc)
