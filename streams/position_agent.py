"""The position agent: executions -> positions (one record per account:symbol), for the
active_positions table and anyone watching the book; exits are decided by the dispatch agent's desks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.records import Execution
from schemas.topics import EXECUTIONS, POSITIONS
from streams.app import EventIO, PipelineApp, add_agent, run_stage
from trading.accounts import accounts_from_settings
from trading.gates import DEFAULT_ACCOUNTS, AccountConfig
from trading.positions import PositionProjection

log = logging.getLogger(__name__)

STAGE = "positions"
APP_ID = "ops-pipeline-positions"


@dataclass(frozen=True)
class PositionAgentConfig:
    accounts: tuple[AccountConfig, ...] = DEFAULT_ACCOUNTS
    batch_size: int = 500
    batch_within_s: float = 0.05

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> PositionAgentConfig:
        return cls(**{"accounts": accounts_from_settings(settings), **overrides})


class PositionHandler:
    """Projects what the executions say. Exits are the desk's (its single writer must see an exit
    the moment it decides it, or its limits and kill switch would lag). Executions of one (account,
    symbol) are keyed by recommendation id and spread over partitions, so they are folded in
    decided_at order and settled once flat with nothing pending. State is rebuilt from the
    executions topic at start; a redelivered execution re-emits its position's current record."""

    def __init__(self, papp: PipelineApp, config: PositionAgentConfig, endpoints: Endpoints) -> None:
        self.config = config
        self.endpoints = endpoints
        self.io = EventIO(papp, STAGE)
        self.projection = PositionProjection({a.name: a.exits for a in config.accounts})
        self.stale = True

    def rebuild_sync(self) -> PositionProjection:
        projection = PositionProjection({a.name: a.exits for a in self.config.accounts})
        n = 0
        for e in self.io.read_all(self.endpoints, EXECUTIONS):
            if isinstance(e, Execution):
                projection.apply(e)
                n += 1
        log.info("positions: rebuilt from %d executions, %d open", n, len(projection.open_positions()))
        return projection

    async def ensure_state(self) -> None:
        if self.stale:
            self.stale = False
            self.projection = await asyncio.to_thread(self.rebuild_sync)

    async def handle(self, events: Sequence[Any]) -> None:
        futures: list[Awaitable[Any]] = []
        for event in events:
            try:
                e = self.io.decode(event)
                record = self.projection.apply(e) if isinstance(e, Execution) else None
                if record is not None:
                    futures.append(await self.io.send(POSITIONS, record))
            except Exception as exc:  # noqa: BLE001 - per-event errors become dead letters
                futures.append(await self.io.dead_letter(event, exc))
        if futures:
            await asyncio.gather(*futures)


def register(papp: PipelineApp, *, endpoints: Endpoints, config: PositionAgentConfig | None = None
             ) -> PositionHandler:
    config = config or PositionAgentConfig.from_settings(papp.settings)
    handler = PositionHandler(papp, config, endpoints)
    add_agent(papp, handler.io.channel(EXECUTIONS), handler.handle, name="positions", batching=config,
              before_batch=handler.ensure_state, rebuilt=handler)
    return handler


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event, *,
        config: PositionAgentConfig | None = None) -> None:
    """The `positions` stage."""
    run_stage(settings, endpoints, stop, app_id=APP_ID,
              register=functools.partial(register, endpoints=endpoints, config=config))
