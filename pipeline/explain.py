"""`ops-pipeline explain <recommendation_id>`: the bar, features, news and every account's gate
outcomes behind a recommendation, read from the sink's tables (never the broker).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import psycopg
import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from opsinfra.endpoints import resolve
from opsinfra.errors import InputError, PipelineError
from trading.calendar import NEW_YORK
from trading.clock import MINUTE

_FEATURE_COLS = ("close", "sma_20", "sma_50", "rsi_14", "macd", "macd_signal", "macd_hist",
                 "volume_current", "volume_avg_20", "volume_ratio", "volume_surge", "bb_upper",
                 "bb_middle", "bb_lower", "bars_seen", "revision")


@dataclass
class Explanation:
    recommendation_id: str
    recommendation: dict[str, Any] | None
    bar_ts: datetime | None
    symbol: str | None
    bar: dict[str, Any] | None = None
    features: dict[str, Any] | None = None
    news: list[dict[str, Any]] = field(default_factory=list)
    executions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.recommendation is not None or bool(self.executions)

    def to_json(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            if isinstance(v, uuid.UUID):
                return str(v)
            return v if v is None or isinstance(v, str | int | float | bool) else str(v)

        return plain({
            "recommendation_id": self.recommendation_id, "symbol": self.symbol, "bar_ts": self.bar_ts,
            "recommendation": self.recommendation, "bar": self.bar, "features": self.features,
            "news": self.news, "executions": self.executions,
        })


def _rows(conn: Any, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return list(cur.fetchall())


def load(conn: Any, recommendation_id: str, *, news_window: timedelta = timedelta(minutes=240)
         ) -> Explanation:
    """Everything the tables hold about one recommendation (and any exit that carries its id)."""
    rid = str(uuid.UUID(recommendation_id))
    recs = _rows(conn, "SELECT * FROM dispatch_recommendations WHERE recommendation_id = %s", (rid,))
    rec = recs[0] if recs else None
    executions = _rows(
        conn, "SELECT * FROM dispatch_executions WHERE recommendation_id = %s ORDER BY account_name", (rid,)
    )
    symbol = (rec or {}).get("ticker") or (executions[0]["ticker"] if executions else None)
    bar_ts: datetime | None = (rec or {}).get("ts")
    if bar_ts is None:
        for e in executions:  # an exit, or a recommendation the sink has not written yet
            stamp = ((e.get("sim_json") or {}).get("bar_used") or {}).get("timestamp")
            if stamp:
                bar_ts = datetime.fromisoformat(stamp)
                break
    out = Explanation(rid, rec, bar_ts, symbol, executions=executions)
    if symbol is None or bar_ts is None:
        return out
    bars = _rows(conn, "SELECT * FROM lane_telemetry WHERE ticker = %s AND ts = %s", (symbol, bar_ts))
    out.bar = bars[0] if bars else None
    feats = _rows(conn, "SELECT * FROM lane_features WHERE ticker = %s AND ts = %s", (symbol, bar_ts))
    out.features = feats[0] if feats else None
    seen_at = bar_ts + MINUTE  # the rule sees news published up to the bar's end
    out.news = _rows(
        conn,
        "SELECT event_id, published, sentiment, score, model, tickers FROM inbound_events_classified "
        "WHERE ticker = %s AND published > %s AND published <= %s ORDER BY published DESC, event_id",
        (symbol, seen_at - news_window, seen_at),
    )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, datetime):
        return v.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M:%S ET")
    return str(v)


def render(ex: Explanation, console: Console) -> None:
    rec = ex.recommendation or {}
    title = f"recommendation {ex.recommendation_id}"
    if ex.symbol:
        title += f": {rec.get('action') or ''} {ex.symbol}"
    console.print(f"[bold]{title}[/bold]")
    if ex.bar_ts is not None:
        console.print(f"bar {_fmt(ex.bar_ts)} ({ex.bar_ts.isoformat()})")
    if rec.get("ts") is not None:
        console.print(
            f"confidence {_fmt(rec.get('confidence'))} = base {_fmt(rec.get('base_confidence'))}"
            f" x volume multiplier {_fmt(rec.get('volume_multiplier'))};"
            f" sentiment {_fmt(rec.get('sentiment'))}; strategy {rec.get('strategy_version')}"
        )
        console.print(f"reason: {rec.get('reason')}")
        console.print(f"status: {rec.get('status')}"
                      + (f" ({rec['failure_reason']})" if rec.get("failure_reason") else ""))
    elif ex.executions:
        console.print("(no signal row: an exit decided by an account's position rules, or a "
                      "recommendation the sink has not stored yet)")

    bar = Table(title="bar (lane_telemetry)")
    for col in ("open", "high", "low", "close", "volume"):
        bar.add_column(col)
    if ex.bar:
        bar.add_row(*(_fmt(ex.bar.get(c)) for c in ("open", "high", "low", "close", "volume")))
    console.print(bar if ex.bar else "bar: not in lane_telemetry")

    if ex.features:
        feats = Table(title="features (lane_features)")
        feats.add_column("feature")
        feats.add_column("value")
        for c in _FEATURE_COLS:
            if c in ex.features:
                feats.add_row(c, _fmt(ex.features[c]))
        console.print(feats)
    else:
        snap = rec.get("features")
        console.print("features: not in lane_features" + (f"; snapshot {json.dumps(snap)}" if snap else ""))

    news = Table(title=f"news for {ex.symbol} up to the bar's end (inbound_events_classified)")
    for col in ("published", "sentiment", "score", "model", "event"):
        news.add_column(col)
    for n in ex.news:
        news.add_row(_fmt(n["published"]), n["sentiment"], _fmt(n["score"]), n["model"], n["event_id"])
    console.print(news if ex.news else "news: none in the window")

    if not ex.executions:
        console.print("no account has decided on it yet (dispatch_executions)")
    for e in ex.executions:
        head = (f"[bold]{e['account_name']}[/bold]: {e['status']} ({e['intent']}, {e['mode']})"
                f" {e['action']} qty {_fmt(e['qty'])} @ {_fmt(e['price'])};"
                f" decided {_fmt(e['simulated_ts'])}")
        if e.get("broker_order_id"):
            head += f"; order {e['broker_order_id']}"
        console.print(head)
        gates = Table()
        for col in ("gate", "passed", "value", "limit", "reason"):
            gates.add_column(col)
        for g in e.get("risk_gate_json") or []:
            gates.add_row(g.get("name", "?"), _fmt(g.get("passed")), _fmt(g.get("value")),
                          _fmt(g.get("limit")), g.get("reason", ""))
        console.print(gates)
        if e.get("failure_reason"):
            console.print(f"  failed gate: {e['failure_reason']}")


def explain_command(
    ctx: typer.Context,
    recommendation_id: Annotated[str, typer.Argument(help="A recommendation (or exit) id.")],
    news_minutes: Annotated[float, typer.Option(help="How far back news is shown.")] = 240.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Why a recommendation was made and what every account did with it, from the database."""
    console = Console()
    try:
        uuid.UUID(recommendation_id)
    except ValueError:
        raise InputError(f"not a recommendation id: {recommendation_id!r}",
                         hint="give the id of a signal or an exit, a UUID") from None
    endpoints = resolve(ctx.obj, need_kafka=False)
    with psycopg.connect(endpoints.database_url) as conn:
        ex = load(conn, recommendation_id, news_window=timedelta(minutes=news_minutes))
    if as_json:
        print(json.dumps(ex.to_json(), indent=2, sort_keys=True))  # noqa: T201 - the command's output
    else:
        render(ex, console)
    if not ex.found:
        raise PipelineError(f"recommendation {recommendation_id} not found",
                            hint="is the sink writing to this database? see `ops-pipeline status`")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_command)
