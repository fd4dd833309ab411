"""The dispatch handler's broker side (a mixin of DispatchHandler): orders POSTed after their
write-ahead record, bracket legs, outcomes from trade updates and the reconcile pass, snapshot loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from connectors.alpaca_trading import AlpacaOrders, OrderOutcome, TradeUpdates, outcome_of_update
from opsinfra.settings import Settings
from schemas.records import Execution
from schemas.topics import EXECUTIONS
from streams.app import EventIO
from streams.broker_link import BrokerLink, KeyPair, Send, key_pairs
from trading.accounts import AccountDesk
from trading.execution import FAILED, SUBMITTED, client_order_id
from trading.options import parse_occ

if TYPE_CHECKING:
    from streams.dispatch_agent import DispatchConfig

log = logging.getLogger(__name__)


@dataclass
class _Unknown:
    first_seen: float = field(default_factory=time.monotonic)


class BrokerSide:
    """What DispatchHandler does at Alpaca once a desk has decided. A decision that passed the gates
    is published as SUBMITTED (write-ahead) before the order is POSTed, so a crash between the POST
    and its answer leaves a record that the reconcile pass resolves by client_order_id, never a
    second order."""

    # DispatchHandler's
    config: DispatchConfig
    io: EventIO
    desks: dict[str, AccountDesk]

    if TYPE_CHECKING:
        @property
        def lock(self) -> asyncio.Lock: ...
        async def _ensure_state(self) -> None: ...
        async def ensure_state(self) -> None: ...
        def _tell(self, execution: Execution) -> None: ...

    def __init__(self, settings: Settings, config: DispatchConfig, send: Send, *,
                 orders: AlpacaOrders | None, now: Callable[[], datetime]) -> None:
        self.orders = orders  # one client for every account (tests); else one per key pair
        self.pairs: dict[str, KeyPair] = {}
        if orders is None and config.needs_broker:
            self.pairs = key_pairs(config.accounts, settings, default_url=config.alpaca_url,
                                   timeout_s=config.order_timeout_s)
        self.link = BrokerLink(self.pairs, send, data_url=config.alpaca_data_url,
                               timeout_s=config.order_timeout_s, pipeline_symbols=self._pipeline_symbols,
                               open_symbols=self._open_symbols,
                               now=now)
        self._unknown: dict[str, _Unknown] = {}  # client_order_id -> an order whose outcome is unknown
        self._updates: asyncio.Queue[Any] | None = None
        self.trade_updates: TradeUpdates | None = None

    # -- orders ---------------------------------------------------------------------------------

    def orders_for(self, account: str) -> AlpacaOrders | None:
        pair = self.link.for_account(account)
        return pair.orders if pair is not None else self.orders

    def _pipeline_symbols(self, account: str) -> set[str]:
        desk = self.desks.get(account)
        return set() if desk is None else {p.symbol for p in desk.state.book}

    def _open_symbols(self, account: str) -> set[str]:
        desk = self.desks.get(account)
        return set() if desk is None else {p.symbol for p in desk.state.book if p.status == "OPEN"}

    async def _submit(self, desk: AccountDesk, execution: Execution) -> list[Awaitable[Any]]:
        """POSTs the order of a SUBMITTED execution already on record, and resolves what it became."""
        orders = self.orders_for(desk.name)
        if orders is None:
            raise RuntimeError(f"{desk.name}: alpaca-paper account without a broker client")
        protect = await self._protection(desk, execution)
        try:
            outcome = await asyncio.to_thread(orders.submit, execution, **protect)
        except ValueError as exc:  # refused before anything was sent (e.g. a bracket on an option)
            outcome = OrderOutcome(FAILED, reason=f"not sent: {exc}")
        except Exception:  # noqa: BLE001 - whatever went wrong, the POST may have happened
            log.exception("dispatch[%s]: submitting %s failed", desk.name, execution.client_order_id)
            outcome = OrderOutcome(SUBMITTED)  # unknown: the reconcile pass finds out
        return await self._resolve(desk, execution, outcome)

    async def _protection(self, desk: AccountDesk, execution: Execution) -> dict[str, float]:
        """Bracket legs of an entry (protective_orders: bracket), so a stop exists at Alpaca while
        this stage is down; before the desk's own exit of such a position, its legs are cancelled."""
        if desk.config.protective_orders != "bracket":
            return {}
        if execution.intent == "exit":
            pos = desk.state.book.get(execution.symbol)
            if pos is not None:
                parent = client_order_id(desk.name, pos.entry_id)
                await asyncio.to_thread(self.link.cancel_legs, desk.name, parent)
            return {}
        if execution.intent != "entry" or parse_occ(execution.symbol) is not None:
            return {}  # Alpaca takes no bracket on an option
        if execution.intent != "entry" or not execution.price:
            return {}
        rules = desk.config.exits
        side = 1.0 if execution.action == "BUY" else -1.0
        return {"take_profit": execution.price * (1.0 + side * rules.take_profit_pct),
                "stop_loss": execution.price * (1.0 - side * rules.stop_loss_pct)}

    async def _resolve(self, desk: AccountDesk, execution: Execution, outcome: OrderOutcome
                       ) -> list[Awaitable[Any]]:
        coid = execution.client_order_id or ""
        if not outcome.known:
            self._unknown.setdefault(coid, _Unknown())
            log.warning("dispatch[%s]: order %s outcome unknown; stays SUBMITTED until reconciled",
                        desk.name, coid)
            return []
        self._unknown.pop(coid, None)
        update = outcome.apply_to(execution)
        if update == execution:
            return []
        desk.apply(update)
        self._tell(update)
        return [await self.io.send(EXECUTIONS, update)]

    # -- reconcile and trade updates -----------------------------------------------------------

    async def reconcile(self) -> int:
        """Looks up every order whose outcome is not known yet; returns how many were resolved."""
        async with self.lock:
            await self._ensure_state()
            return await self._reconcile()

    async def _reconcile(self) -> int:
        resolved = 0
        futures: list[Awaitable[Any]] = []
        for desk in self.desks.values():
            orders = self.orders_for(desk.name)
            if orders is None:
                continue
            for execution in desk.submitted():
                coid = execution.client_order_id
                if coid is None:
                    continue
                try:
                    found = await asyncio.to_thread(orders.lookup, coid)
                except Exception as exc:  # noqa: BLE001 - Alpaca cannot say now: ask next time
                    log.warning("dispatch[%s]: reconcile lookup of %s failed: %s", desk.name, coid, exc)
                    continue
                if found is None:
                    if execution.broker_order_id is not None:
                        continue  # it was there: a lookup glitch, not an answer
                    seen = self._unknown.setdefault(coid, _Unknown())
                    waited = time.monotonic() - seen.first_seen
                    if waited < self.config.unknown_after_s:
                        continue
                    found = OrderOutcome(FAILED, reason=f"not at the broker {waited:.0f}s after an "
                                                        "unanswered POST")
                before = len(futures)
                futures.extend(await self._resolve(desk, execution, found))
                resolved += len(futures) > before
        if futures:
            await asyncio.gather(*futures)
        if resolved:
            log.info("dispatch: reconcile resolved %d order(s)", resolved)
        return resolved

    def _on_update(self, update: Any, pair: KeyPair | None = None) -> None:
        if self._updates is not None:
            self._updates.put_nowait(update)
        if pair is not None:
            self.link.after_update(pair)

    async def apply_update(self, update: Any) -> bool:
        """A trade_updates event: the execution it concerns moves on (FILLED, FAILED)."""
        outcome = outcome_of_update(update)
        if outcome is None:
            return False
        coid = update.order.client_order_id
        async with self.lock:
            await self._ensure_state()
            return await self._apply_update(coid, outcome)

    async def _apply_update(self, coid: str, outcome: OrderOutcome) -> bool:
        for desk in self.desks.values():
            for execution in desk.submitted():
                if execution.client_order_id == coid:
                    futures = await self._resolve(desk, execution, outcome)
                    if futures:
                        await asyncio.gather(*futures)
                    return bool(futures)
        return False

    async def run_updates(self) -> None:
        """One trade_updates stream per key pair for the life of the app (alpaca-paper accounts)."""
        if not self.config.trade_updates or (self.orders is None and not self.pairs):
            return
        self._updates = asyncio.Queue()
        await self.ensure_state()
        loop = asyncio.get_running_loop()
        if self.orders is not None:
            self.trade_updates = TradeUpdates(self.orders.credentials, url=self.config.alpaca_stream_url,
                                              loop=loop, sink=self._on_update)
            self.trade_updates.start()
        for pair in self.pairs.values():
            pair.updates = TradeUpdates(pair.credentials, url=self.config.alpaca_stream_url, loop=loop,
                                        sink=functools.partial(self._on_update, pair=pair),
                                        on_connect=functools.partial(self.link.after_update, pair, 0.0,
                                                                     "reconnect"))
            try:
                pair.updates.start()
            except Exception as exc:  # noqa: BLE001 - bad keys: the snapshots' age says so; retried by restart
                log.error("dispatch: trade updates on %s could not start: %s", pair.label, exc)
        try:
            while True:
                update = await self._updates.get()
                try:
                    await self.apply_update(update)
                except Exception:
                    log.exception("dispatch: trade update failed; the next reconcile covers it")
        finally:
            if self.trade_updates is not None:
                self.trade_updates.stop(timeout_s=0.0)
            for pair in self.pairs.values():
                if pair.updates is not None:
                    pair.updates.stop(timeout_s=0.0)

    async def run_snapshots(self) -> None:
        """The broker's state: at start, every snapshot_every_s, soon after trade updates; option
        quotes of held contracts every quotes_every_s. Nothing here stops the stage."""
        config = self.config
        next_poll = next_quotes = 0.0
        trigger = "start"
        while True:
            try:
                await self.ensure_state()
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + config.snapshot_every_s
                    await self.link.snapshot(trigger)
                    trigger = "poll"
                await self.link.due()
                if now >= next_quotes:
                    next_quotes = now + config.quotes_every_s
                    await self.link.quotes()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch: broker snapshot loop failed; going on")
            await asyncio.sleep(0.5)
