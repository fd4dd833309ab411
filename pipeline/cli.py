"""The `ops-pipeline` command: settings are built here, once, and passed down; any error a user
meets ends here as one line, `error: <what> (<what to do>)`, exit 2 (configuration or input) or 1.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from opsinfra.endpoints import resolve
from opsinfra.errors import ConfigError, InputError, PipelineError
from opsinfra.settings import Settings, redact_url
from pipeline import backtest_cli  # the other commands' modules: see _command_modules
from pipeline.boundary import Shell
from schemas.topics import ALL_TOPICS

app = typer.Typer(
    name="ops-pipeline",
    help="Event-streaming trading pipeline on a Kafka-compatible broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Shell,
)
topics_app = typer.Typer(help="List, create and describe the contract topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
console = Console(stderr=False)


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@app.callback()
def _main(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None, typer.Option(help="Overrides PIPELINE_DATA_DIR.", show_default=False)
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print its traceback too (as LOG_LEVEL=DEBUG does).")
    ] = False,
) -> None:
    from opsinfra import logs

    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["pipeline_data_dir"] = data_dir
    settings = Settings.from_env(**overrides)
    logs.configure(settings.log_level, settings.log_json)
    ctx.obj = settings
    if settings.pipeline_accounts:  # every stage reads it: refuse a bad one before any starts
        backtest_cli.checked_accounts(settings.pipeline_accounts, "PIPELINE_ACCOUNTS", ConfigError)


def _print_services(state_bootstrap: str, database_url: str, settings: Settings, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("service")
    table.add_column("address")
    table.add_column("source")
    table.add_row(
        "Kafka broker",
        state_bootstrap,
        "KAFKA_BOOTSTRAP_SERVERS" if settings.kafka_bootstrap_servers else "embedded Tansu",
    )
    table.add_row(
        "PostgreSQL",
        redact_url(database_url),
        "DATABASE_URL" if settings.database_url else "embedded PostgreSQL",
    )
    table.add_row(
        "Schema registry",
        settings.schema_registry_url or "(none: Avro with schema headers)",
        "SCHEMA_REGISTRY_URL" if settings.schema_registry_url else "",
    )
    console.print(table)


def _wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM; returns the signal number."""
    got: list[int] = []
    done = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        got.append(signum)
        done.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5):
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return got[0]


@app.command()
def up(ctx: typer.Context) -> None:
    """Start the embedded broker and PostgreSQL (unless configured), provision them, and wait."""
    from opsinfra.embedded import EmbeddedServices
    from pipeline import dashboard
    from pipeline.provision import provision

    settings = _settings(ctx)
    services = EmbeddedServices(
        settings.pipeline_data_dir,
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers,
        database_url=settings.database_url.get_secret_value() if settings.database_url else None,
    )
    services.start()
    try:
        created, applied = provision(
            settings,
            services.kafka_bootstrap_servers,
            services.database_url,
            fresh_broker=services.broker is not None,
        )
        _print_services(services.kafka_bootstrap_servers, services.database_url, settings, "ops-pipeline up")
        console.print(f"topics created: {len(created)}; migrations applied: {len(applied)}")
        console.print(f"state: {services.data_dir / 'state.json'} — Ctrl-C to stop")
        sys.stdout.flush()
        with dashboard.alongside(settings, resolve(settings), os.environ):  # when DASHBOARD_PORT is set
            signum = _wait_for_signal()
        console.print(f"{signal.Signals(signum).name}: stopping the embedded services")
    finally:
        services.stop()
    console.print("stopped")


@topics_app.command("list")
def topics_list(ctx: typer.Context) -> None:
    """Every topic on the broker, with partitions, marking the contract ones."""
    from opsinfra.kafka_admin import list_topics
    from pipeline.provision import admin_client

    settings = _settings(ctx)
    ep = resolve(settings, need_db=False)
    found = list_topics(admin_client(settings, ep.kafka_bootstrap_servers))
    contract = {settings.pipeline_topic_prefix + t.name: t for t in ALL_TOPICS}
    table = Table(title=f"topics on {ep.kafka_bootstrap_servers}")
    for col in ("topic", "partitions", "record", "key"):
        table.add_column(col)
    for name, parts in found.items():
        spec = contract.get(name)
        table.add_row(name, str(parts), spec.record.__name__ if spec else "", spec.key if spec else "")
    console.print(table)
    missing = sorted(set(contract) - set(found))
    if missing:
        console.print(f"[yellow]missing contract topics:[/yellow] {', '.join(missing)}")
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create every contract topic (and its .dlq) that does not exist yet."""
    from opsinfra.kafka_admin import create_topics
    from pipeline.provision import admin_client

    settings = _settings(ctx)
    ep = resolve(settings, need_db=False)
    created = create_topics(
        admin_client(settings, ep.kafka_bootstrap_servers), ALL_TOPICS, prefix=settings.pipeline_topic_prefix
    )
    console.print(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else ""))


@topics_app.command("describe")
def topics_describe(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Topics; default: the contract.")] = None,
) -> None:
    """Partitions and configs of topics."""
    from opsinfra.kafka_admin import describe_topics
    from pipeline.provision import admin_client

    settings = _settings(ctx)
    ep = resolve(settings, need_db=False)
    wanted = names or [settings.pipeline_topic_prefix + t.name for t in ALL_TOPICS]
    infos = describe_topics(admin_client(settings, ep.kafka_bootstrap_servers), wanted)
    table = Table()
    for col in ("topic", "partitions", "retention.ms", "cleanup.policy"):
        table.add_column(col)
    for info in infos:
        table.add_row(
            info.name,
            str(info.partitions),
            info.config.get("retention.ms", "?"),
            info.config.get("cleanup.policy", "?"),
        )
    console.print(table)


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply pending database migrations (idempotent)."""
    from db import migrate as m

    settings = _settings(ctx)
    ep = resolve(settings, need_kafka=False)
    applied = m.apply(ep.database_url)
    if not applied:
        console.print("migrations: nothing to do (database is up to date)")
    for mig in applied:
        console.print(f"applied {mig.version:04d}_{mig.name}")


@app.command()
def run(
    ctx: typer.Context,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated stage names; default: every stage.")
    ] = None,
) -> None:
    """Run stages (connectors, agents, sink) until Ctrl-C/SIGTERM; several run as child processes."""
    from pipeline import stages

    settings = _settings(ctx)
    names = [n.strip() for n in only.split(",") if n.strip()] if only else sorted(stages.STAGES)
    if not names:
        raise ConfigError("no stages are registered")
    unknown = [n for n in names if n not in stages.STAGES]
    if unknown:
        raise InputError(f"unknown stage(s): {', '.join(unknown)}",
                         hint=f"known: {', '.join(sorted(stages.STAGES))}")
    endpoints = resolve(settings)
    if len(names) == 1:
        _run_one(names[0], settings, endpoints)
        return
    from pipeline import dashboard
    from pipeline.supervisor import supervise

    # DASHBOARD_PORT set: the supervisor serves the page too (its children, one stage each, do not)
    with dashboard.alongside(settings, endpoints, os.environ):
        code = supervise(names, settings)
    raise typer.Exit(code)


def _run_one(name: str, settings: Settings, endpoints: Any) -> None:
    """The stage in a thread until a signal or its end; what it raised is raised here, for the boundary."""
    from pipeline import stages

    stop = threading.Event()
    failed: list[BaseException] = []

    def work() -> None:
        try:
            stages.load(name)(settings, endpoints, stop)
        except BaseException as exc:
            failed.append(exc)

    worker = threading.Thread(target=work, name=name, daemon=True)
    server = _metrics_server(settings, name, worker)
    worker.start()
    try:
        _wait_for_signal_or(worker)
        stop.set()
        worker.join(60)
    finally:
        if server is not None:
            server.stop()
    if failed:
        exc = failed[0]
        if isinstance(exc, PipelineError):
            raise exc
        raise PipelineError(f"stage {name} crashed: {type(exc).__name__}: {exc}") from exc


def _metrics_server(settings: Settings, name: str, worker: threading.Thread) -> Any:
    if settings.metrics_port is None:
        return None
    from opsinfra.metrics import MetricsServer, metrics

    def health() -> tuple[bool, dict[str, Any]]:
        return worker.is_alive(), {"stage": name}

    server = MetricsServer(metrics(), health, settings.metrics_host, settings.metrics_port).start()
    console.print(f"metrics: http://{settings.metrics_host}:{server.port}/metrics (and /healthz)")
    return server


def _wait_for_signal_or(worker: threading.Thread) -> None:
    done = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not done.wait(0.5) and worker.is_alive():
            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    now: Annotated[
        str | None, typer.Option("--now", help="Judge as of this ISO-8601 time (default: the clock).")
    ] = None,
) -> None:
    """Health of topics, consumer groups, bars, news and tables; exit 1 with the reasons if unhealthy."""
    import json as _json

    from pipeline import bars_cli
    from pipeline.status import collect

    settings = _settings(ctx)
    at = bars_cli.parse_when(now, option="--now") if now is not None else None
    report = collect(settings, resolve(settings), now=at)
    if as_json:
        console.print_json(_json.dumps(report.to_json()))
    else:
        _print_status(report)
    raise typer.Exit(0 if report.healthy else 1)


def _print_status(report: Any) -> None:
    def age(seconds: float | None) -> str:
        if seconds is None:
            return "-"
        return (
            f"{seconds:.0f}s"
            if seconds < 120
            else f"{seconds / 60:.0f}m"
            if seconds < 7200
            else f"{seconds / 3600:.1f}h"
        )

    t = Table(title=f"topics ({report.now}; market {'open' if report.market_open else 'closed'})")
    for col in ("topic", "end offset", "last hour"):
        t.add_column(col)
    for ts in report.topics:
        t.add_row(ts.topic, str(ts.end_offset), str(ts.last_hour))
    console.print(t)
    g = Table(title="consumer groups")
    for col in ("group", "lag", "partitions behind", "oldest waiting"):
        g.add_column(col)
    for gs in report.groups:
        g.add_row(gs.group, str(gs.lag), str(gs.partitions_behind), age(gs.oldest_wait_s))
    console.print(g)
    checked = report.missing_check == "rest"
    sy = Table(title="symbols" + ("" if checked else " (missing minutes: candidates, see below)"))
    for col in ("symbol", "last bar", "age", "missing minutes", "REST has"):
        sy.add_column(col)
    for ss in report.symbols:
        sy.add_row(
            ss.symbol,
            ss.last_bar or "-",
            age(ss.age_s),
            f"{ss.missing_minutes}"
            + (f" e.g. {', '.join(ss.missing_sample[:2])}" if ss.missing_sample else ""),
            "-" if ss.missing_confirmed is None else str(ss.missing_confirmed),
        )
    console.print(sy)
    if not checked:
        console.print(f"missing minutes not checked against Alpaca REST: {report.missing_check}")
    console.print(f"last news item: {age(report.news_age_s)} ago")
    ac = Table(title="accounts (rebuilt from the executions topic)")
    for col in ("account", "kill switch", "trades today", "realized today", "open positions"):
        ac.add_column(col)
    for a in report.accounts:
        ac.add_row(a.account, "[red]ON[/red]" if a.kill_switch else "off", str(a.trades_today),
                   f"{a.realized_today:,.2f}", str(a.open_positions))
    console.print(ac)
    from pipeline.status import account_tables

    for table in account_tables(report):
        console.print(table)
    if report.control:
        ct = Table(title="operator control (halts in force, then the latest changes)")
        for col in ("account", "when (UTC)", "what", "reason"):
            ct.add_column(col)
        for c in report.control:
            what = "[red]HALTED[/red]" if c["halted"] else f"{c['action']} {c.get('change', '')}".strip()
            ct.add_row(c["account"], c["at"][:19], what, c["reason"])
        console.print(ct)
    tb = Table(title="sink tables")
    tb.add_column("table")
    tb.add_column("rows")
    for name, n in report.tables.items():
        tb.add_row(name, "-" if n is None else str(n))
    console.print(tb)
    if report.problems:
        console.print("[red]UNHEALTHY[/red]")
        for p in report.problems:
            console.print(f"  - {p}")
    else:
        console.print("[green]healthy[/green]")


@app.command()
def demo(ctx: typer.Context) -> None:
    """Run every stage over the bundled sample session, summarise, report, check against a backtest."""
    from pipeline.demo import run_demo

    raise typer.Exit(run_demo(_settings(ctx), console))


def _command_modules(argv: list[str] | None) -> list[str]:
    """The modules whose commands to register (each: register(app)): all of them, but when the
    program is run as `ops-pipeline backtest ...` only backtest's, so that a backtest does not
    import the Kafka, Postgres and web clients it does not use (`argv`: the program's arguments;
    None when this module is imported, by tests say)."""
    everything = ["pipeline.bars_cli", "pipeline.explain", "pipeline.backtest_cli", "pipeline.control_cli",
                  "pipeline.dashboard"]  # fmt: skip
    args = iter(argv or ())
    for arg in args:
        if arg == "--data-dir":  # the top-level option that takes a value
            next(args, None)
        elif not arg.startswith("-"):
            return ["pipeline.backtest_cli"] if arg == "backtest" else everything
    return everything


def _program_args() -> list[str] | None:
    run = __name__ == "__main__" or Path(sys.argv[0]).name == "ops-pipeline"
    return sys.argv[1:] if run else None


for _module in _command_modules(_program_args()):
    importlib.import_module(_module).register(app)


def main() -> None:
    app()  # errors are reported by _Shell


if __name__ == "__main__":
    main()
