"""Operator control at runtime as data: halt, resume and setting changes are records on the `control`
topic, applied by each desk at their event time, so a replay or a backtest applies them at the same
points as the live run did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from schemas.records import ControlEvent
from trading.gates import AccountConfig
from trading.positions import ExitRules

#: fields an operator may not change at runtime (identity, connection, mode)
FROZEN = frozenset({"name", "mode", "credentials_file", "trading_url"})


@dataclass(frozen=True, slots=True)
class Halt:
    reason: str
    at: datetime
    event_id: str


def parse_value(key: str, text: str) -> Any:
    """A setting's value from the CLI's text: JSON when it parses (numbers, true, null), else the
    string itself (`manage_external=exit`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def changed_config(config: AccountConfig, settings: dict[str, str]) -> AccountConfig:
    """`config` with `settings` applied (exit rules as `exits.stop_loss_pct`); ValueError on an
    unknown or frozen key, or a value the account's own validation refuses."""
    changes: dict[str, Any] = {}
    exits: dict[str, Any] = {}
    known = {f.name for f in fields(AccountConfig)}
    exit_keys = {f.name for f in fields(ExitRules)}
    for key, text in sorted(settings.items()):
        value = parse_value(key, text)
        if key.startswith("exits."):
            name = key.split(".", 1)[1]
            if name not in exit_keys:
                raise ValueError(f"unknown exit rule {name!r} (known: {', '.join(sorted(exit_keys))})")
            exits[name] = value
        elif key in FROZEN:
            raise ValueError(f"{key} cannot change at runtime (restart with a new PIPELINE_ACCOUNTS)")
        elif key not in known or key == "exits":
            raise ValueError(f"unknown setting {key!r}")
        else:
            changes[key] = value
    if exits:
        changes["exits"] = replace(config.exits, **exits)
    try:
        return replace(config, **changes)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def validate(event: ControlEvent, accounts: dict[str, AccountConfig]) -> None:
    """Refuses (ValueError) a change no desk could apply, before it is published."""
    if event.action not in ("halt", "resume", "set"):
        raise ValueError(f"unknown control action {event.action!r}")
    if event.account != "*" and event.account not in accounts:
        raise ValueError(f"unknown account {event.account!r} (known: {', '.join(sorted(accounts))})")
    if event.action == "set":
        if not event.settings:
            raise ValueError("config set: give at least one key=value")
        targets = accounts.values() if event.account == "*" else [accounts[event.account]]
        for config in targets:
            changed_config(config, event.settings)


def applies_to(event: ControlEvent, account: str) -> bool:
    return event.account in ("*", account)
