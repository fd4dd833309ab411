"""`ops-pipeline backtest`: bars (a file or a topic) and news through the live objects, to files
(features, signals, executions, trades, rejected rows, summary, report) that a user can open.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

# the modules of a topic (Kafka, Avro) are imported by the runs that read one
from connectors.bar_columns import BarColumns, gc_paused
from connectors.bar_files import load_bar_columns
from connectors.bar_rows import FILE_COLUMNS, Rejected, counts_text
from opsinfra.errors import InputError, PipelineError
from opsinfra.settings import Settings
from pipeline.report import FORMATS, json_default, write_records, write_rows
from pipeline.report_html import _fmt, write_html
from schemas.records import Bar, Execution, Features, NewsItem, Recommendation, Record, ScoredNews
from trading.accounts import AccountConfig, accounts_from_settings, load_accounts
from trading.backtest import Backtester, BacktestResult
from trading.calendar import TradingCalendar
from trading.signals import strategy_from_settings

console = Console()


def _time(text: str | None) -> datetime | None:
    from pipeline.notebook import _as_utc

    return _as_utc(text)


def _must_time(text: str) -> datetime:
    ts = _time(text)
    if ts is None:
        raise ValueError("a time is required")
    return ts


def _option_time(option: str, text: str | None) -> datetime | None:
    try:
        return _time(text)
    except ValueError:  # pandas' DateParseError is one
        raise InputError(f"{option}: not a date or time: {text!r}",
                         hint="ISO-8601, e.g. 2025-11-20 or 2025-11-20T14:30:00Z") from None


def checked_accounts(value: str | Path, source: str, error: type[PipelineError]) -> tuple[AccountConfig, ...]:
    """Accounts from inline JSON or a .json/.toml file, or `error` saying what is wrong with `source`."""

    try:
        return load_accounts(value)
    except json.JSONDecodeError as exc:
        detail = f"not valid JSON: {exc}"
    except OSError as exc:
        detail = f"cannot read {exc.filename or value}: {exc.strerror or exc}"
    except (ValueError, TypeError, KeyError) as exc:  # tomllib's errors are ValueErrors
        detail = str(exc)
    raise error(f"{source}: {detail}",
                hint="inline JSON (a list of accounts) or the path of a .json or .toml file; see README")


PHASES = ("load", "decode", "engine", "write")


@dataclass
class Phases:
    """Seconds per phase of a run, for its summary: reading the input (file or topic), decoding it
    into Bar records, the engine, writing the files; wall clock, and the process's CPU time (the
    steadier figure on a busy machine)."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


def load_columns(
    settings: Settings,
    *,
    bars_file: Path | None,
    topic: str | None,
    start: datetime | None,
    end: datetime | None,
    symbols: set[str] | None,
    phases: Phases,
) -> tuple[BarColumns, list[Rejected]]:
    """The bars in replay order ((ts, revision), stable, exact repeats dropped) as columns, and the
    rows rejected: read and judged column-wise, then selected."""
    rejected: list[Rejected] = []
    if bars_file is not None:
        with phases.timed("load"):
            prep = load_bar_columns(bars_file)
        columns, rejected = prep.columns, prep.rejected
    else:
        assert topic is not None
        columns = _topic_bars(settings, topic, phases)
    with phases.timed("decode"):
        return columns.select(start, end, symbols), rejected


def _topic_bars(settings: Settings, topic: str, phases: Phases) -> BarColumns:
    """A topic's bars as columns in replay order (as `prepare_bars` orders records read back)."""
    from opsinfra.endpoints import resolve
    from schemas.codec import make_codec
    from schemas.topic_columns import read_columns

    physical = _physical(settings, topic)
    endpoints = resolve(settings, need_db=False)
    with phases.timed("load"), gc_paused():  # decoded column-wise as the batches arrive
        decoded = read_columns(settings, endpoints.kafka_bootstrap_servers,
                               make_codec(endpoints.schema_registry_url), Bar, physical,
                               quiet_s=0.5, until_ms=int(time.time() * 1000)).decoded  # fmt: skip
    with phases.timed("decode"):
        columns, _ = BarColumns.from_decoded(decoded.columns, decoded.index).ordered()
    return columns


def _physical(settings: Settings, topic: str) -> str:
    return topic if topic.startswith(settings.pipeline_topic_prefix) else settings.topic(topic)


def _read_topic(settings: Settings, topic: str, record_type: type[Record]) -> list[Record]:
    from opsinfra.endpoints import resolve
    from schemas.codec import make_codec
    from schemas.topic_io import read_decoded

    endpoints = resolve(settings, need_db=False)
    codec = make_codec(endpoints.schema_registry_url)
    physical = _physical(settings, topic)
    messages = read_decoded(
        settings, endpoints.kafka_bootstrap_servers, codec, record_type, physical,
        quiet_s=0.5, until_ms=int(time.time() * 1000),
    )  # fmt: skip
    return [rec for _, rec in messages if isinstance(rec, Record)]


def load_news(settings: Settings, *, news_file: Path | None, topic: str | None) -> list[ScoredNews]:
    """Scored news from news.scored, or from a JSONL file of scored items or of raw items (scored here
    with the same classifier the live agent builds: SENTIMENT_MODEL, else the VADER lexicon)."""
    if topic is not None:
        return [r for r in _read_topic(settings, topic, ScoredNews) if isinstance(r, ScoredNews)]
    if news_file is None:
        return []
    out: list[ScoredNews] = []
    items: list[NewsItem] = []
    for number, line in enumerate(news_file.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "label" in row:
                out.append(_scored(row))
            else:
                items.append(_news_item(row))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise InputError(f"{news_file}:{number}: {what}",
                             hint="one JSON object a line: a scored item (with label) or a raw one") from exc
    if items:
        from streams.classifier import ClassifierConfig, build_classifier
        from trading.news import score_items

        classifier = build_classifier(ClassifierConfig.from_settings(settings))
        out += score_items(items, classifier, settings.pipeline_symbols)
    return out


def _scored(r: dict[str, Any]) -> ScoredNews:
    return ScoredNews(
        id=r["id"],
        ticker=r["ticker"],
        tickers=list(r.get("tickers") or [r["ticker"]]),
        label=r["label"],
        score=float(r["score"]),
        model=r.get("model", "file"),
        published=_must_time(r["published"]),
    )


def _news_item(r: dict[str, Any]) -> NewsItem:
    return NewsItem(
        id=r["id"],
        feed=r.get("feed", "file"),
        title=r.get("title", ""),
        summary=_text(r.get("summary", "")),
        link=r.get("link"),
        published=_must_time(r["published"]),
        fetched_at=_must_time(r.get("fetched_at") or r["published"]),
    )


def _text(html_or_text: str) -> str:
    from connectors.feeds import html_to_text  # news files only: not loaded for every backtest

    return html_to_text(html_or_text)


def write_rejected(path: Path, rejected: Sequence[Rejected]) -> int:
    """rejected.csv: the row's number in the file, the kind of reason, the reason, the raw row."""

    raw = list(dict.fromkeys([*FILE_COLUMNS, *(k for r in rejected for k in r.row)]))
    rows = ({"row": r.number, "kind": r.label, "reason": r.reason, **r.row} for r in rejected)
    return write_rows(path, ["row", "kind", "reason", *raw], rows)


TRADE_COLUMNS = ["account", "symbol", "side", "qty", "entry_ts", "entry_price", "exit_ts", "exit_price",
                 "pnl", "exit_reason", "entry_id", "exit_id"]


def write_outputs(
    out: Path,
    result: BacktestResult,
    title: str,
    rejected: Sequence[Rejected] | None = None,
    fmt: str = "csv",
) -> dict[str, Any]:
    """The result files (`fmt`: csv or parquet tables); with `rejected` (rows of a bar file),
    rejected.csv and counts by reason too."""

    out.mkdir(parents=True, exist_ok=True)
    # by (bar time, symbol), stably: symbols of one minute come in whatever order the input interleaved
    # them (a topic's partitions are read at uneven paces), one symbol's records in their own order
    write_records(out / f"features.{fmt}", Features, result.features, fmt, by_time=True)
    write_records(out / f"signals.{fmt}", Recommendation, result.signals, fmt, by_time=True)
    write_records(out / f"executions.{fmt}", Execution, result.executions, fmt)
    trades = [t for led in result.ledgers.values() for t in led.trades]
    trade_cols = list(trades[0].to_row()) if trades else TRADE_COLUMNS
    write_rows(out / f"trades.{fmt}", trade_cols, (t.to_row() for t in trades), fmt)
    accounts = result.summaries()
    summary: dict[str, Any] = {
        "accounts": accounts,
        "bars_processed": result.bars,
        "bars_rejected": result.skipped_bars,
        "bars_per_s": result.bars_per_s,
        "signals": len(result.signals),
        "executions": len(result.executions),
    }
    if rejected is not None:
        write_rejected(out / "rejected.csv", rejected)
        by_reason = Counter(r.label for r in rejected)
        if result.skipped_bars > len(rejected):  # out of order for the feature engine
            by_reason["out of order or invalid for the features"] += result.skipped_bars - len(rejected)
        summary["rejected_by_reason"] = dict(by_reason.most_common())
    write_html(
        out / "report.html",
        title,
        accounts,
        list(result.ledgers.values()),
        [
            f"{result.bars} bars, {len(result.signals)} signals, {len(result.executions)} executions",
            "Sharpe on per-minute equity returns, annualised with sqrt(252 x 390).",
        ],
        executions=result.executions,
        closes=((f.ts, f.symbol, f.close) for f in result.features),
    )
    write_summary(out, summary)
    return summary


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=json_default) + "\n")


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="backtest summary")
    cols = ("account", "pnl", "return", "sharpe", "max_drawdown", "win_rate", "trades", "exposure")
    for col in cols:
        table.add_column(col)
    for acc in summary["accounts"]:
        table.add_row(*[_fmt(acc[c]) for c in cols])
    console.print(table)
    console.print(
        f"{summary['bars_processed']} bars ({summary['bars_per_s'] or 0:,.0f} bars/s), "
        f"{summary['signals']} signals, {summary['executions']} executions"
    )
    if summary.get("rejected_by_reason"):
        console.print(f"{summary['bars_rejected']} row(s) rejected (see rejected.csv): "
                      f"{counts_text(summary['rejected_by_reason'])}", soft_wrap=True)
    phases, cpu = summary.get("phases_s"), summary.get("phases_cpu_s", {})
    if phases:
        total = sum(phases.values())
        console.print("phases (wall / CPU): " + ", ".join(f"{name} {s:.2f}/{cpu.get(name, 0):.2f}s"
                                                      for name, s in phases.items())
                      + f"; total {total:.2f}/{sum(cpu.values()):.2f}s, "
                      f"{summary['bars_processed'] / total if total else 0:,.0f} bars/s", soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command()
    def backtest(
        ctx: typer.Context,
        out: Annotated[Path, typer.Option(help="Directory for the result files.")],
        bars: Annotated[
            Path | None, typer.Option(help="Bar file (CSV or Parquet).", exists=True, dir_okay=False)
        ] = None,
        topic: Annotated[str | None, typer.Option(help="Read bars from this topic instead.")] = None,
        news: Annotated[
            Path | None, typer.Option(help="News JSONL (scored or raw items).", exists=True, dir_okay=False)
        ] = None,
        news_topic: Annotated[str | None, typer.Option(help="Read scored news from this topic.")] = None,
        start: Annotated[str | None, typer.Option(help="Start (inclusive), ISO-8601; UTC if naive.")] = None,
        end: Annotated[str | None, typer.Option(help="End (exclusive).")] = None,
        symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols.")] = None,
        accounts: Annotated[
            str | None,
            typer.Option(help="Account names (of PIPELINE_ACCOUNTS), or a JSON/TOML accounts file."),
        ] = None,
        format: Annotated[  # noqa: A002 - the option's name
            str, typer.Option("--format", help="Tables as csv or parquet (rejected.csv stays CSV).")
        ] = "csv",
        clock: Annotated[
            str, typer.Option(help="bar: each decision at its bar's end; recorded: the dispatch agent's "
                                   "decisions over a live run's topics, at the times its minute closures "
                                   "recorded (no --bars/--topic).")
        ] = "bar",
        synthetic_iv: Annotated[
            float | None, typer.Option(help="Option accounts without recorded chains: price a synthetic "
                                            "chain by Black-Scholes at this implied volatility (0.3 = 30%); "
                                            "the results are labelled modelled.")
        ] = None,
    ) -> None:
        """Run features, signals, gates, fills and positions over bars in-process (bar time as the clock)."""

        settings: Settings = ctx.obj
        if clock not in ("bar", "recorded"):
            raise InputError(f"--clock {clock}: not a clock", hint="bar or recorded")
        if clock == "recorded":
            _run_recorded(settings, out, accounts, format)
            return
        if (bars is None) == (topic is None):
            raise InputError("give exactly one of --bars FILE or --topic TOPIC",
                             hint="see `ops-pipeline backtest --help`")
        if format not in FORMATS:
            raise InputError(f"--format {format}: not a format", hint=f"one of {', '.join(FORMATS)}")
        if synthetic_iv is not None and not 0.0 < synthetic_iv < 5.0:  # NaN fails too
            raise InputError(f"--synthetic-iv {synthetic_iv}: not an implied volatility",
                             hint="a fraction between 0 and 5, e.g. 0.3 for 30%")
        _run(settings, out, bars, topic, news, news_topic, start, end, symbols, accounts, format,
             synthetic_iv)


def _run(
    settings: Settings, out: Path, bars: Path | None, topic: str | None, news: Path | None,
    news_topic: str | None, start: str | None, end: str | None, symbols: str | None, accounts: str | None,
    fmt: str, synthetic_iv: float | None = None,
) -> None:
    phases = Phases()
    chosen = _accounts(settings, accounts)
    wanted = {s.strip().upper() for s in symbols.split(",")} if symbols else None
    lo, hi = _option_time("--start", start), _option_time("--end", end)
    columns, rejected = load_columns(
        settings, bars_file=bars, topic=topic, start=lo, end=hi, symbols=wanted, phases=phases
    )
    with phases.timed("decode"):  # what the engine reads of each bar; no Bar record is made
        bar_rows, n_bars, first = columns.rows(), len(columns), columns.first_ts()
    scored = load_news(settings, news_file=news, topic=news_topic)
    calendar = TradingCalendar()
    bt = Backtester(chosen, calendar, strategy_from_settings(settings), synthetic_iv=synthetic_iv)
    bt.add_news(scored)
    if first is not None:
        calendar.session(first.date())  # load the calendar before the clock starts
    with Progress(
        TextColumn("backtest"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} bars"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("bars", total=n_bars, rate="")
        t0 = time.perf_counter()

        def tick(n: int) -> None:
            rate = n / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, completed=n, rate=f"{rate:,.0f} bars/s")

        with phases.timed("engine"):
            result = bt.run_rows(bar_rows, progress=tick)
        progress.update(task, completed=n_bars, rate=f"{result.bars_per_s or 0:,.0f} bars/s")
    result.skipped_bars += len(rejected)
    with phases.timed("write"), gc_paused():
        summary = write_outputs(out, result, f"ops-pipeline backtest ({n_bars} bars)", rejected, fmt)
    summary["phases_s"] = {k: round(phases.seconds[k], 3) for k in PHASES if k in phases.seconds}
    summary["phases_cpu_s"] = {k: round(phases.cpu[k], 3) for k in PHASES if k in phases.cpu}
    write_summary(out, summary)
    print_summary(summary)
    names = " ".join(f"{n}.{fmt}" for n in ("features", "signals", "executions", "trades"))
    console.print(f"wrote {out}/: {names} rejected.csv summary.json report.html")


def _run_recorded(settings: Settings, out: Path, accounts: str | None, fmt: str) -> None:
    from opsinfra.endpoints import resolve
    from pipeline.recorded_backtest import run_recorded
    from schemas.codec import make_codec

    endpoints = resolve(settings, need_db=False)
    run = run_recorded(settings, endpoints.kafka_bootstrap_servers, make_codec(endpoints.schema_registry_url),
                       _accounts(settings, accounts), out, fmt)
    console.print(f"{len(run.executions)} decisions in {run.steps} minute steps ({run.late} late records, "
                  f"{run.held} held in still-open minutes); wrote {out}/: executions.{fmt} summary.json")


def _accounts(settings: Settings, accounts: str | None) -> tuple[AccountConfig, ...]:
    configured = accounts_from_settings(settings)
    if accounts and Path(accounts).exists():
        return checked_accounts(Path(accounts), f"--accounts {accounts}", InputError)
    if not accounts:
        return configured
    names = [a.strip() for a in accounts.split(",") if a.strip()]
    unknown = [n for n in names if n not in {a.name for a in configured}]
    if unknown:
        raise InputError(f"unknown account(s) {', '.join(unknown)}",
                         hint=f"configured: {', '.join(a.name for a in configured)}; or give a file")
    return tuple(a for a in configured if a.name in names)
