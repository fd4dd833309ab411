"""The long-running stages `ops-pipeline run` knows, by name. A stage is `run(settings, endpoints,
stop)`: it works until `stop` is set, absorbing transient failures, raising only configuration errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings


class Stage(Protocol):
    def __call__(self, settings: Settings, endpoints: Endpoints, stop: threading.Event) -> None: ...


# Each stage process imports only its own module: importing all ten costs ~1.8 s a process
# (faust, torch, alpaca-py), paid by every child of `run` and the demo.
def _bars() -> Stage:
    from connectors.alpaca_bars import run
    return run


def _rss() -> Stage:
    from connectors.rss import run
    return run


def _classifier() -> Stage:
    from streams.classifier import run
    return run


def _features() -> Stage:
    from streams.features_agent import run
    return run


def _signals() -> Stage:
    from streams.signal_agent import run
    return run


def _dispatch() -> Stage:
    from streams.dispatch_agent import run
    return run


def _positions() -> Stage:
    from streams.position_agent import run
    return run


def _watchlist() -> Stage:
    from streams.watchlist_agent import run
    return run


def _watchdog() -> Stage:
    from pipeline.watchdog import run
    return run


def _sink() -> Stage:
    from sinks.postgres import run
    return run


STAGES: Mapping[str, Callable[[], Stage]] = MappingProxyType({
    "bars": _bars, "rss": _rss, "classifier": _classifier, "features": _features, "signals": _signals,
    "dispatch": _dispatch, "positions": _positions, "watchlist": _watchlist, "sink": _sink,
    "watchdog": _watchdog,
})  # fmt: skip


def load(name: str) -> Stage:
    """The stage called `name`; a KeyError naming the known ones if there is none."""
    try:
        loader = STAGES[name]
    except KeyError:
        known = ", ".join(sorted(STAGES)) or "none yet"
        raise KeyError(f"unknown stage {name!r} (known: {known})") from None
    return loader()
