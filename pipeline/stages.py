"""The long-running stages `ops-pipeline run` knows, by name, imported only when run.

A stage is `run(settings, endpoints, stop)`: it works until `stop` (a threading.Event) is set,
absorbing transient failures itself, and raises only for configuration errors.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Protocol

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings


class Stage(Protocol):
    def __call__(self, settings: Settings, endpoints: Endpoints, stop: threading.Event) -> None: ...


# name -> "module:function"; each stage's module adds its line here.
STAGES: dict[str, str] = {
    "bars": "connectors.alpaca_bars:run",
    "rss": "connectors.rss:run",
    "classifier": "streams.classifier:run",
    "features": "streams.features_agent:run",
    "signals": "streams.signal_agent:run",
    "dispatch": "streams.dispatch_agent:run",
    "positions": "streams.position_agent:run",
    "watchlist": "streams.watchlist_agent:run",
    "sink": "sinks.postgres:run",
}


def load(name: str) -> Callable[[Settings, Endpoints, threading.Event], None]:
    try:
        target = STAGES[name]
    except KeyError:
        known = ", ".join(sorted(STAGES)) or "none yet"
        raise KeyError(f"unknown stage {name!r} (known: {known})") from None
    module, func = target.split(":")
    fn: Callable[[Settings, Endpoints, threading.Event], None] = getattr(
        importlib.import_module(module), func
    )
    return fn
