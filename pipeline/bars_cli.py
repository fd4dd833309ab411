"""`ops-pipeline backfill` and `ops-pipeline replay`: bars published after the fact, from Alpaca REST
or from a file, a topic range or Postgres; `register(app)` adds them to the CLI."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from connectors import replay as rp
from connectors.backfill import backfill
from connectors.credentials import CredentialSource
from connectors.intake import BarIntake, ProducerSink
from connectors.topic_tail import bars_in_range
from opsinfra.endpoints import resolve
from opsinfra.errors import InputError
from opsinfra.settings import Settings
from schemas.codec import make_codec
from schemas.topic_io import RecordProducer
from schemas.topics import BARS
from trading.calendar import TradingCalendar

console = Console()
err_console = Console(stderr=True)


def parse_when(text: str, *, end: bool = False, option: str = "--start") -> datetime:
    """ISO-8601 with an offset (none means UTC); a bare date is that day's start, or for an end,
    the next day's start (so `--end 2026-11-20` includes the whole day)."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            ts = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return ts + timedelta(days=1) if end else ts
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{option}: not an ISO-8601 date or time: {text!r}",
                         hint="e.g. 2025-11-20 or 2025-11-20T14:30:00Z") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    if not isinstance(settings, Settings):  # called outside `ops-pipeline`
        settings = Settings.from_env()
    return settings


def _range(start: str, end: str) -> tuple[datetime, datetime]:
    t0, t1 = parse_when(start), parse_when(end, end=True, option="--end")
    if t1 <= t0:
        raise InputError("--end must be after --start", hint="a date as --end includes that whole day")
    return t0, t1


class RateColumn(ProgressColumn):
    """Bars per second, from rich's own speed estimate."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} bars/s", style="progress.data.speed")


def backfill_command(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="ISO-8601 start (inclusive); a date means 00:00 UTC.")],
    end: Annotated[str, typer.Option(help="ISO-8601 end (exclusive); a date includes that day.")],
    symbols: Annotated[
        str | None, typer.Option(help="Comma-separated; default PIPELINE_SYMBOLS.")
    ] = None,
) -> None:
    """Fill missing session minutes of market.bars.1m from Alpaca REST (same feed as live)."""
    from connectors.alpaca_rest import AlpacaBarHistory  # alpaca-py (and pandas): ~0.6 s, only here

    settings = _settings(ctx)
    t0, t1 = _range(start, end)
    syms = tuple(s.strip().upper() for s in symbols.split(",") if s.strip()) if symbols \
        else settings.pipeline_symbols
    ep = resolve(settings, need_db=False)
    codec = make_codec(ep.schema_registry_url)
    creds = CredentialSource.from_settings(settings).load(reason="backfill")
    history = AlpacaBarHistory(creds, feed=settings.alpaca_feed, url=settings.alpaca_data_url)
    existing = bars_in_range(settings, ep.kafka_bootstrap_servers, codec,
                             settings.topic(BARS.name), t0, t1, symbols=set(syms))
    with RecordProducer(settings, ep.kafka_bootstrap_servers, codec) as producer:
        result = backfill(symbols=syms, start=t0, end=t1, existing=existing, history=history,
                          sink=ProducerSink(producer, stage="backfill"), calendar=TradingCalendar.xnys(),
                          now=datetime.now(UTC))
    table = Table(title=f"backfill {result.start.isoformat()} .. {result.end.isoformat()} "
                        f"(feed {settings.alpaca_feed})")
    for col in ("symbol", "session minutes", "on topic", "filled", "no trades (not gaps)"):
        table.add_column(col, justify="right" if col != "symbol" else "left")
    filled, no_trade = result.filled(), result.no_trade()
    for s in syms:
        table.add_row(s, str(result.expected[s]), str(result.present[s]), str(filled[s]),
                      str(no_trade[s]))
    console.print(table)
    console.print(f"published {result.stats.backfill} bar(s) as source=backfill; "
                  f"{result.stats.rejected} rejected to {settings.topic(BARS.dlq.name)}")


def replay_command(
    ctx: typer.Context,
    bars: Annotated[
        Path | None, typer.Option(help="A CSV or Parquet bar file.", exists=True, dir_okay=False)
    ] = None,
    from_topic: Annotated[
        str | None, typer.Option(help="Re-publish a time range of this (physical) topic.")
    ] = None,
    from_postgres: Annotated[
        bool, typer.Option(help="Re-publish a time range of lane_telemetry.")
    ] = False,
    start: Annotated[str | None, typer.Option(help="Range start (topic/Postgres).")] = None,
    end: Annotated[str | None, typer.Option(help="Range end, exclusive (topic/Postgres).")] = None,
    speed: Annotated[str, typer.Option(help="max, 1x, 60x, ... (bar time per wall time).")] = "max",
    topic_prefix: Annotated[
        str | None, typer.Option(help="Publish under this prefix instead of PIPELINE_TOPIC_PREFIX.")
    ] = None,
) -> None:
    """Publish bars to market.bars.1m in (ts, revision) order, from a file, a topic or Postgres."""

    settings = _settings(ctx)
    usage = "see `ops-pipeline replay --help`"
    if sum((bars is not None, from_topic is not None, from_postgres)) != 1:
        raise InputError("give exactly one of --bars, --from-topic, --from-postgres", hint=usage)
    try:
        pace = rp.parse_speed(speed)
    except ValueError as exc:
        raise InputError(f"--speed: {exc}", hint=usage) from None
    prefix = settings.pipeline_topic_prefix if topic_prefix is None else topic_prefix
    if prefix and not all(c.isalnum() or c in "._-" for c in prefix):
        raise InputError("--topic-prefix may hold only letters, digits, '.', '_', '-'", hint=usage)
    destination = prefix + BARS.name
    t0 = t1 = None
    if bars is None:
        if start is None or end is None:
            raise InputError("--from-topic and --from-postgres need --start and --end", hint=usage)
        t0, t1 = _range(start, end)
    if from_topic is not None and from_topic == destination:
        raise InputError(f"{from_topic} is also the destination", hint="publish under another --topic-prefix")
    ep = resolve(settings, need_db=from_postgres)
    codec = make_codec(ep.schema_registry_url)
    if bars is not None:
        origin = f"replay:{bars.name}"
        prep = rp.prepare_rows(rp.load_bar_file(bars))
    elif from_topic is not None:
        assert t0 is not None and t1 is not None
        origin = f"replay:{from_topic}"
        prep = rp.prepare_bars(bars_in_range(settings, ep.kafka_bootstrap_servers, codec, from_topic, t0, t1))
    else:
        assert t0 is not None and t1 is not None
        origin = "replay:lane_telemetry"
        prep = rp.prepare_rows(rp.read_postgres(ep.database_url, t0, t1))
    with RecordProducer(settings, ep.kafka_bootstrap_servers, codec, prefix=prefix) as producer:
        intake = BarIntake(ProducerSink(producer, stage="replay"), symbols=None)
        progress = Progress(
            TextColumn("replay → {task.fields[topic]}"), BarColumn(), MofNCompleteColumn(),
            RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err_console,
        )
        with progress:
            task = progress.add_task("replay", total=len(prep.bars), topic=destination)
            report = rp.publish(prep, intake, origin=origin, speed=pace,
                                on_progress=lambda n: progress.advance(task, n))
    console.print(f"replayed {report.published} bar(s) to {destination} at speed {speed}; "
                  f"{report.repeats} exact repeat(s) skipped; {report.rejected} row(s) rejected "
                  f"to {prefix + BARS.dlq.name}"
                  + (f": {rp.counts_text(report.rejected_by_reason)}" if report.rejected else ""),
                  soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("backfill")(backfill_command)
    app.command("replay")(replay_command)
