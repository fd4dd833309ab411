"""The long-running stages `ops-pipeline run` knows, by name. A stage is `run(settings, endpoints,
stop)`: it works until `stop` is set, absorbing transient failures, raising only configuration errors.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from connectors import alpaca_bars, rss
from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from sinks import postgres
from streams import classifier, dispatch_agent, features_agent, position_agent, signal_agent, watchlist_agent


class Stage(Protocol):
    def __call__(self, settings: Settings, endpoints: Endpoints, stop: threading.Event) -> None: ...


# importing a stage's module starts nothing: models, clients and apps are built inside its run
STAGES: Mapping[str, Stage] = MappingProxyType({
    "bars": alpaca_bars.run,
    "rss": rss.run,
    "classifier": classifier.run,
    "features": features_agent.run,
    "signals": signal_agent.run,
    "dispatch": dispatch_agent.run,
    "positions": position_agent.run,
    "watchlist": watchlist_agent.run,
    "sink": postgres.run,
})  # fmt: skip


def load(name: str) -> Stage:
    """The stage called `name`; a KeyError naming the known ones if there is none."""
    try:
        return STAGES[name]
    except KeyError:
        known = ", ".join(sorted(STAGES)) or "none yet"
        raise KeyError(f"unknown stage {name!r} (known: {known})") from None
