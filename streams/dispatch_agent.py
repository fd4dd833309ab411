"""The dispatch agent: one faust agent per account, signals + features.1m -> executions, exactly one
decision per (recommendation, account) across redeliveries and restarts, minute by minute as the
watermarks on clock.minutes close them. Runs as one worker: an account's limits need all of its
signals in one place.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connectors.alpaca_trading import AlpacaOrders
from opsinfra.endpoints import Endpoints
from opsinfra.settings import Settings
from schemas.records import (
    ControlEvent,
    Execution,
    Features,
    MinuteClosed,
    OptionQuote,
    Record,
)
from schemas.topics import (
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
    CLOCK,
    CONTROL,
    EQUITY,
    EXECUTIONS,
    FEATURES,
    OPTION_QUOTES,
    RECONCILE,
    SIGNALS,
)
from streams.app import EventIO, PipelineApp, add_agent, run_stage
from streams.dispatch_broker import BrokerSide
from streams.offsets import start_offsets
from trading.accounts import AccountDesk, accounts_from_settings
from trading.broker import decided_at
from trading.calendar import SessionCalendar, TradingCalendar
from trading.clock import MINUTE, Clock, WallClock
from trading.execution import FAILED, FILLED, SKIPPED, SUBMITTED, exit_reason_of
from trading.gates import DEFAULT_ACCOUNTS, AccountConfig
from trading.ordering import FEATURES_INPUT, SIGNALS_INPUT, MinuteReleaser, Step
from trading.reconcile import equity_point, rebuild_view
from trading.recorded_clock import DECIDED_ON, closed_of, decide, decision_time

log = logging.getLogger(__name__)

STAGE = "dispatch"
APP_ID = "ops-pipeline-dispatch"


@dataclass(frozen=True)
class DispatchConfig:
    accounts: tuple[AccountConfig, ...] = DEFAULT_ACCOUNTS
    clock: str = "wall"  # "wall" live; "bar" in a replay: each event is decided at its bar's end
    batch_size: int = 200
    batch_within_s: float = 0.01
    reconcile_every_s: float = 30.0
    unknown_after_s: float = 120.0  # an unknown order Alpaca still does not know this long: FAILED
    order_timeout_s: float = 10.0
    alpaca_url: str | None = None  # trading REST override (paper endpoint by default)
    alpaca_stream_url: str | None = None  # trade_updates websocket override
    alpaca_data_url: str | None = None  # market data override (option quotes)
    trade_updates: bool = True
    snapshot_every_s: float = 30.0  # broker state: at start, this often, and after trade updates
    quotes_every_s: float = 60.0  # option quotes of held contracts
    equity: bool = True  # an equity point per account each minute
    # minute order (trading.ordering.MinuteReleaser): a minute is decided once every partition's
    # signals closure on clock.minutes covers it; broker and control records no closure lets go
    # for `max_hold_s` (features or signal agent down) go on their own (checked every release_every_s)
    max_hold_s: float = 90.0
    release_every_s: float = 1.0

    def __post_init__(self) -> None:
        if self.clock not in ("wall", "bar"):
            raise ValueError(f"clock must be 'wall' or 'bar', not {self.clock!r}")
        names = [a.name for a in self.accounts]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"accounts: need distinct names, got {names}")

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> DispatchConfig:
        conf: dict[str, Any] = {"accounts": accounts_from_settings(settings)}
        for name, attr in (("clock", "pipeline_clock"), ("alpaca_url", "alpaca_trading_url"),
                           ("alpaca_stream_url", "alpaca_trading_stream_url"),
                           ("alpaca_data_url", "alpaca_data_url")):
            value = getattr(settings, attr, None)
            if value is not None:
                conf[name] = value
        conf.update(overrides)
        return cls(**conf)

    @property
    def needs_broker(self) -> bool:
        return any(a.mode == "alpaca-paper" for a in self.accounts)


class DispatchHandler(BrokerSide):
    """The desks of every account and what moves their decisions in and out.

    Each account's AccountDesk decides entries, reversals and rule exits, and is the only writer of
    its state. The desks are rebuilt from the executions topic before the first batch (and after a
    rebalance), not kept in a faust Table: that topic already is the durable log of every decision,
    an execution is delivered before its input is acked, and the desk folds it with the apply() it
    uses live, so decided ids, positions, trades, P&L and kill switch cannot disagree with what was
    published. A Table would be a second copy written in a separate step (a crash can split them),
    with a changelog partitioned by input event rather than by account.

    What happens at Alpaca once a desk has decided is BrokerSide's (streams/dispatch_broker.py)."""

    def __init__(self, papp: PipelineApp, config: DispatchConfig, endpoints: Endpoints, *,
                 calendar: SessionCalendar | None = None, orders: AlpacaOrders | None = None,
                 clock: Clock | None = None) -> None:
        self.papp = papp
        self.clock = clock or WallClock()  # live time; with config.clock "bar" each event's bar end
        self.config = config
        self.endpoints = endpoints
        self.calendar = calendar or TradingCalendar()
        self.io = EventIO(papp, STAGE)
        self.desks = {a.name: AccountDesk(a, self.calendar) for a in config.accounts}
        self.buffers = {a.name: MinuteReleaser(SIGNALS.partitions, max_hold_s=config.max_hold_s)
                        for a in config.accounts}
        self._closures: dict[str, list[tuple[datetime, Any]]] = {a.name: [] for a in config.accounts}
        self.streams: dict[str, Any] = {}  # account -> its agent's stream, to ack released events
        super().__init__(papp.settings, config, self.io.send, orders=orders, now=self.clock.now)
        self._equity_minute: dict[str, datetime] = {}
        # opt-in messages of entries, fills and exits (NOTIFY_TRADES), live only: a replay is history
        self.notifier: Any = None
        if getattr(papp.settings, "notify_trades", False) and config.clock == "wall":
            from connectors.notify import Notifier

            self.notifier = Notifier.from_settings(papp.settings, stage=STAGE)
        self.stale = True
        self._lock: asyncio.Lock | None = None
        self.features_topic = papp.settings.topic(FEATURES.name)
        self.signals_topic = papp.settings.topic(SIGNALS.name)
        self._kinds = {self.features_topic: FEATURES_INPUT, self.signals_topic: SIGNALS_INPUT}

    # -- state ----------------------------------------------------------------------------------

    def rebuild_sync(self) -> dict[str, AccountDesk]:
        history = [e for e in self.io.read_all(self.endpoints, EXECUTIONS) if isinstance(e, Execution)]
        desks = {a.name: AccountDesk(a, self.calendar) for a in self.config.accounts}
        broker: list[Record] = []
        if any(a.uses_broker or a.instrument == "option" for a in self.config.accounts):  # (control: below)
            for spec in (BROKER_ACCOUNTS, BROKER_POSITIONS, OPTION_QUOTES):
                broker += self.io.read_all(self.endpoints, spec)
        control = sorted((r for r in self.io.read_all(self.endpoints, CONTROL)
                          if isinstance(r, ControlEvent)), key=lambda r: r.at)
        for desk in desks.values():
            last = max((e.decided_at for e in history if e.account == desk.name), default=None)
            for event in control:  # the operator's changes in force at the desk's last decision
                if self.config.clock == "wall" or (last is not None and decided_at(event) <= last):
                    desk.on_control(event, event.at, rebuilding=True)
            n = desk.rebuild(history)
            if desk.config.instrument == "option":  # the chains it had seen (trading.option_desk)
                seen = [r for r in broker if isinstance(r, OptionQuote)]
                if self.config.clock == "bar":  # as rebuild_view below: what its last decision saw
                    saw = desk.last_decided()
                    seen = [] if saw is None else [r for r in seen if decided_at(r) <= saw]
                desk.rebuild_quotes(seen)
            if desk.config.uses_broker:
                # live, everything read so far is the broker's latest word; in a replay only what
                # the desk's last decision could have seen (the rest is delivered again, in order)
                mine = [r for r in broker if getattr(r, "account", desk.name) == desk.name]
                if self.config.clock == "bar":
                    upto = desk.last_decided()
                    mine = [] if upto is None else [r for r in mine if decided_at(r) <= upto]
                rebuild_view(desk.broker, mine)
                self.link.remember(desk.name, desk.broker.positions.values())
            st = desk.state
            log.info("dispatch[%s]: rebuilt from %d executions: %d decided, %d open, %d trades today, "
                     "realized today %.2f%s", desk.name, n, desk.decided_count(), st.book.count(),
                     st.trades_today, st.realized_today, " (kill switch ON)" if st.killed else "")
        return desks

    @property
    def lock(self) -> asyncio.Lock:
        """Serializes everything that touches the desks: batches of every account's agent,
        trade updates, reconcile passes and rebuilds (created on the app's loop)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _ensure_state(self) -> None:
        if not self.stale:
            return
        self.desks = await asyncio.to_thread(self.rebuild_sync)
        starts = await asyncio.to_thread(self.start_offsets)
        for name, buffer in self.buffers.items():
            buffer.clear()  # not acked: the reassigned partitions deliver them again
            buffer.expect({kind: starts.get(topic, {}) for topic, kind in self._kinds.items()})
            self._closures[name] = []
        self.stale = False
        await self._reconcile()

    async def ensure_state(self) -> None:
        async with self.lock:
            await self._ensure_state()

    async def batch(self, name: str, first: bool, events: Sequence[Any]) -> None:
        """Holds a batch's inputs, decides the minutes the watermarks closed, acks what was decided."""
        async with self.lock:
            await self._ensure_state()
            buffer = self.buffers[name]
            done: list[Any] = []
            futures: list[Awaitable[Any]] = []
            for event in events:
                msg = event.message
                kind = self._kinds.get(msg.topic)
                try:
                    record = self.io.decode(event)
                except Exception as exc:  # noqa: BLE001 - undecodable input: one dead letter per event
                    if kind is not None:
                        buffer.consumed(kind, msg.partition, msg.offset)
                    if first:
                        futures.append(await self.io.dead_letter(event, exc))
                    done.append(event)
                    continue
                if isinstance(record, MinuteClosed):
                    if record.stage == "signals":
                        buffer.close(closed_of(record))
                        self._closures[name].append((record.minute, event))  # acked once used
                    else:
                        done.append(event)
                elif isinstance(record, DECIDED_ON):
                    if kind is None:
                        buffer.add(record, (record, event))  # quiet: broker and control records
                    else:
                        buffer.add(record, (record, event), kind=kind, partition=msg.partition,
                                   offset=msg.offset)
                else:
                    if kind is not None:
                        buffer.consumed(kind, msg.partition, msg.offset)
                    done.append(event)
            if futures:
                await asyncio.gather(*futures)
            done += await self._release(name)
        await self._ack(name, done)

    def start_offsets(self) -> dict[str, dict[int, int]]:
        """Where this worker's consumer starts each features.1m and signals partition (blocking)."""
        topics = {self.features_topic: FEATURES.partitions, self.signals_topic: SIGNALS.partitions}
        bootstrap = self.endpoints.kafka_bootstrap_servers
        return start_offsets(self.papp.app, self.papp.settings, bootstrap, topics)

    async def release_all(self) -> None:
        """The timer: broker and control records held too long without a closure."""
        for name in self.buffers:
            async with self.lock:
                if self.stale:
                    return
                done = await self._release(name)
            await self._ack(name, done)

    async def _release(self, name: str) -> list[Any]:
        buffer = self.buffers[name]
        late = buffer.late
        steps = buffer.release()
        if buffer.late > late:
            log.info("dispatch[%s]: %d record(s) arrived after their minute closed; decided at %s",
                     name, buffer.late - late, buffer.released)
        done: list[Any] = []
        for step in steps:
            await self.handle_step(self.desks[name], step)
            done += [event for _record, event in step.items]
        if steps and buffer.released is not None:
            upto = buffer.released
            closures = self._closures[name]
            done += [event for minute, event in closures if minute <= upto]
            self._closures[name] = [(m, e) for m, e in closures if m > upto]
        return done

    def ack_through(self, name: str, stream: Any) -> None:
        """Account `name`'s events are acked through its agent's `stream` once decided."""
        self.streams[name] = stream

    async def _ack(self, name: str, events: Sequence[Any]) -> None:
        stream = self.streams.get(name)
        for event in events:
            if stream is not None:
                await stream.ack(event)
            else:
                event.ack()

    async def handle(self, desk: AccountDesk, first: bool, events: Sequence[Any]) -> None:
        """Decides events in the order given (tests; the agents go through the buffer)."""
        items: list[tuple[Record, Any]] = []
        futures: list[Awaitable[Any]] = []
        for event in events:
            try:
                items.append((self.io.decode(event), event))
            except Exception as exc:  # noqa: BLE001 - undecodable input: one dead letter per event
                if first:
                    futures.append(await self.io.dead_letter(event, exc))
        if futures:
            await asyncio.gather(*futures)
        await self.handle_records(desk, items)

    async def handle_step(self, desk: AccountDesk, step: Step) -> None:
        """A released step's items, decided at its closure's time (wall clock) or at their bars'
        ends (bar clock): either way a function of the topics."""
        await self.handle_records(desk, step.items, step.at)

    # -- decisions ------------------------------------------------------------------------------

    async def handle_records(self, desk: AccountDesk, items: Sequence[tuple[Record, Any]],
                             at: datetime | None = None) -> None:
        futures: list[Awaitable[Any]] = []
        for record, event in items:
            try:
                now = decision_time(record, self.config.clock, at) or self.clock.now()
                if isinstance(record, Features):
                    futures.extend(await self._equity(desk, record.ts))
                decisions, events = decide(desk, record, now)
                if isinstance(record, ControlEvent) and record.account in ("*", desk.name):
                    log.info("dispatch[%s]: control %s %s at %s (%s)", desk.name, record.action,
                             record.settings or "", record.at.isoformat(), record.reason)
                for ev in events:
                    futures.append(await self.io.send(RECONCILE, ev))
                    log.info("dispatch[%s]: reconcile %s %s: %s (%s)", desk.name, ev.kind,
                             ev.symbol or "", ev.action, ev.detail)
            except Exception as exc:  # noqa: BLE001 - a decision that cannot be made: dead letter
                futures.append(await self.io.dead_letter(event, RuntimeError(f"{desk.name}: {exc!r}")))
                continue
            for execution in decisions:
                futures.extend(await self._publish(desk, execution))
        if futures:
            await asyncio.gather(*futures)

    async def _equity(self, desk: AccountDesk, bar_ts: datetime) -> list[Awaitable[Any]]:
        """An equity point for the minute before `bar_ts` once the desk moves past it."""
        if not self.config.equity:
            return []
        last = self._equity_minute.get(desk.name)
        if last is not None and bar_ts <= last:
            return []
        self._equity_minute[desk.name] = bar_ts
        if last is None:
            return []
        return [await self.io.send(EQUITY, equity_point(desk, last + MINUTE))]

    def _tell(self, execution: Execution) -> None:
        if self.notifier is None or execution.status in (SKIPPED, FAILED):
            return
        kind = "fill" if execution.status == FILLED else "entry" if execution.intent == "entry" else "exit"
        price = "" if execution.price is None else f" @ {execution.price:.4f}"
        why = exit_reason_of(execution)
        self.notifier.notify_trading(kind, f"{execution.account}: {execution.action} {execution.qty:g} "
                                           f"{execution.symbol}{price} ({execution.status.lower()}, "
                                           f"{execution.intent}{', ' + why if why else ''})")

    async def _publish(self, desk: AccountDesk, execution: Execution) -> list[Awaitable[Any]]:
        self._tell(execution)
        fut = await self.io.send(EXECUTIONS, execution)
        if execution.status != SUBMITTED or execution.broker_order_id is not None:
            return [fut]
        await fut  # write-ahead: on record before the order exists
        return await self._submit(desk, execution)


def register(papp: PipelineApp, *, endpoints: Endpoints, config: DispatchConfig | None = None,
             calendar: SessionCalendar | None = None, orders: AlpacaOrders | None = None,
             clock: Clock | None = None) -> DispatchHandler:
    """Adds one dispatch agent per account (and, with alpaca-paper accounts, the trade-updates task
    and the reconcile timer) to `papp`; returns the handler for tests."""
    config = config or DispatchConfig.from_settings(papp.settings)
    handler = DispatchHandler(papp, config, endpoints, calendar=calendar, orders=orders, clock=clock)
    channel = handler.io.channel(SIGNALS, FEATURES, CLOCK, BROKER_ACCOUNTS, BROKER_POSITIONS, OPTION_QUOTES,
                                 CONTROL)
    for i, account in enumerate(config.accounts):
        # acks are the handler's: an event is acked once decided, after the event-time buffer
        add_agent(papp, channel, functools.partial(handler.batch, account.name, i == 0),
                  name=f"dispatch-{account.name}", batching=config, rebuilt=handler,
                  own_acks=functools.partial(handler.ack_through, account.name))

    async def release() -> None:
        await handler.release_all()

    papp.app.timer(interval=config.release_every_s, name="dispatch-release")(release)
    if config.needs_broker:
        papp.app.task(handler.run_updates)

        async def reconcile() -> None:
            await handler.reconcile()

        papp.app.timer(interval=config.reconcile_every_s, name="dispatch-reconcile")(reconcile)
    if handler.pairs:
        papp.app.task(handler.run_snapshots)
    return handler


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event, *,
        config: DispatchConfig | None = None) -> None:
    """The `dispatch` stage."""
    config = config or DispatchConfig.from_settings(settings)
    log.info("dispatch: accounts %s, clock %s", ", ".join(f"{a.name} ({a.mode})" for a in config.accounts),
             config.clock)
    run_stage(settings, endpoints, stop, app_id=APP_ID,
              register=functools.partial(register, endpoints=endpoints, config=config))
