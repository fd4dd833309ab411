"""`ops-pipeline halt | resume | config set | config show`: the operator's changes, checked against
the accounts, published to the `control` topic, and applied by the running desks at their time.
"""

from __future__ import annotations

import getpass
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from opsinfra.endpoints import resolve
from opsinfra.errors import InputError
from opsinfra.settings import Settings
from schemas.codec import make_codec
from schemas.records import ControlEvent
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import CONTROL
from trading.accounts import accounts_from_settings
from trading.control import applies_to, changed_config, validate

console = Console()
config_app = typer.Typer(help="Change or show account settings at runtime (the control topic).",
                         no_args_is_help=True)

AccountOpt = Annotated[str | None, typer.Option("--account", help="One account (default: every account).")]


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def publish(settings: Settings, event: ControlEvent) -> ControlEvent:
    """Checks `event` against the configured accounts and publishes it (an InputError if refused)."""
    accounts = {a.name: a for a in accounts_from_settings(settings)}
    try:
        validate(event, accounts)
    except ValueError as exc:
        raise InputError(f"{event.action}: {exc}", hint="see `ops-pipeline config show`") from None
    endpoints = resolve(settings)
    with RecordProducer(settings, endpoints.kafka_bootstrap_servers, make_codec(settings.schema_registry_url)) as out:
        out.send(CONTROL, event)
    return event


def history(settings: Settings, bootstrap: str | None = None) -> list[ControlEvent]:
    """Every control record on the topic, oldest first."""
    bootstrap = bootstrap or resolve(settings).kafka_bootstrap_servers
    codec = make_codec(settings.schema_registry_url)
    got = [r for _m, r in read_records(settings, bootstrap, codec, CONTROL, quiet_s=0.3)]
    return sorted((r for r in got if isinstance(r, ControlEvent)), key=lambda r: r.at)


def halts(events: list[ControlEvent], accounts: list[str]) -> dict[str, ControlEvent]:
    """The halt in force per account (a `*` halt counts for each), after every resume."""
    out: dict[str, ControlEvent] = {}
    for e in events:
        for name in accounts:
            if not applies_to(e, name):
                continue
            if e.action == "halt":
                out[name] = e
            elif e.action == "resume":
                out.pop(name, None)
    return out


def _event(action: str, account: str | None, reason: str, **kw: Any) -> ControlEvent:
    return ControlEvent(str(uuid.uuid4()), account or "*", action, datetime.now(UTC), reason,
                        operator=_operator(), **kw)


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def halt(ctx: typer.Context, reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")],
         account: AccountOpt = None,
         flatten: Annotated[bool, typer.Option("--flatten", help="Also close the open positions.")] = False,
         ) -> None:
    """Stop new entries (exits and protective orders go on)."""
    event = publish(_settings(ctx), _event("halt", account, reason, flatten=flatten))
    console.print(f"halted {event.account} at {event.at:%Y-%m-%d %H:%M:%S}Z: {reason}"
                  + (" (flattening)" if flatten else ""))


def resume(ctx: typer.Context, account: AccountOpt = None,
           reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "resumed") -> None:
    """Allow new entries again."""
    event = publish(_settings(ctx), _event("resume", account, reason))
    console.print(f"resumed {event.account} at {event.at:%Y-%m-%d %H:%M:%S}Z")


@config_app.command("set")
def config_set(ctx: typer.Context,
               pairs: Annotated[list[str], typer.Argument(help="key=value, e.g. min_confidence=0.65")],
               account: AccountOpt = None,
               reason: Annotated[str, typer.Option("--reason", help="Why (recorded).")] = "") -> None:
    """Change account settings from now on (decisions whose event time is after the change)."""
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"config set: {pair!r} is not key=value", hint="e.g. min_confidence=0.65")
        settings[key.strip()] = value.strip()
    event = publish(_settings(ctx), _event("set", account, reason or "config set", settings=settings))
    console.print(f"set {', '.join(f'{k}={v}' for k, v in settings.items())} for {event.account} "
                  f"from {event.at:%Y-%m-%d %H:%M:%S}Z")


@config_app.command("show")
def config_show(ctx: typer.Context,
                as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each account's settings with the recorded changes applied, halts, and the change history."""
    settings = _settings(ctx)
    events = history(settings)
    out: list[dict[str, Any]] = []
    for config in accounts_from_settings(settings):
        halted: ControlEvent | None = None
        for e in events:
            if not applies_to(e, config.name):
                continue
            if e.action == "halt":
                halted = e
            elif e.action == "resume":
                halted = None
            else:
                try:
                    config = changed_config(config, e.settings)
                except ValueError:
                    continue
        out.append({"account": config.name, "halted": None if halted is None else
                    {"reason": halted.reason, "at": halted.at.isoformat()}, "config": config.to_dict()})
    if as_json:
        print(json.dumps({"accounts": out, "changes": [e.to_avro() for e in events]}, default=str, indent=2))
        return
    for acct in out:
        state = "[red]HALTED[/red] " + acct["halted"]["reason"] if acct["halted"] else "[green]trading[/green]"
        console.print(f"[bold]{acct['account']}[/bold]: {state}")
    table = Table(title="control history")
    for col in ("at (UTC)", "account", "action", "change", "reason", "operator"):
        table.add_column(col)
    for e in events:
        change = ", ".join(f"{k}={v}" for k, v in e.settings.items()) or ("flatten" if e.flatten else "")
        table.add_row(f"{e.at:%Y-%m-%d %H:%M:%S}", e.account, e.action, change, e.reason, e.operator)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(halt)
    app.command()(resume)
    app.add_typer(config_app, name="config")
