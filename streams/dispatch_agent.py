"""The dispatch agent: one faust agent per account, signals + features.1m -> executions, exactly one
decision per (recommendation, account) across redeliveries and restarts. Runs as one worker: an
account's limits need all of its signals in one place.
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
from opsinfra.kafka_config import admin_config
from opsinfra.settings import Settings
from schemas.records import (
    BrokerAccount,
    BrokerPosition,
    ControlEvent,
    Execution,
    Features,
    OptionQuote,
    Recommendation,
    Record,
)
from schemas.topics import (
    BROKER_ACCOUNTS,
    BROKER_POSITIONS,
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
from trading.accounts import AccountDesk, accounts_from_settings
from trading.broker import decided_at
from trading.calendar import SessionCalendar, TradingCalendar
from trading.clock import MINUTE, Clock, WallClock
from trading.execution import FAILED, FILLED, SKIPPED, SUBMITTED, exit_reason_of
from trading.gates import DEFAULT_ACCOUNTS, AccountConfig
from trading.ordering import EventTimeBuffer, SignalProgress
from trading.reconcile import equity_point, rebuild_view

log = logging.getLogger(__name__)

STAGE = "dispatch"
# what the desks decide on, in canonical order: bars (exits), signals, the broker's records and the
# operator's control records
_DECIDED_ON = (Features, Recommendation, BrokerAccount, BrokerPosition, OptionQuote, ControlEvent)
APP_ID = "ops-pipeline-dispatch"


@dataclass(frozen=True)
class DispatchConfig:
    accounts: tuple[AccountConfig, ...] = DEFAULT_ACCOUNTS
    clock: str = "wall"  # "wall" live; "bar" in a replay: each event is decided at its bar's end
    batch_size: int = 200
    batch_within_s: float = 0.05
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
    # event-time order (trading.ordering): a minute is decided once every features partition has
    # moved past it and `order_grace_s` more has passed for its signals; `order_idle_s` of silence
    # releases everything held
    order_grace_s: float = 0.5
    order_idle_s: float = 2.0
    release_every_s: float = 0.2
    # ... and once the signal agent (this consumer group, under the topic prefix) has committed past
    # every bar of the minute: its signals for that minute are then on the signals topic
    signals_group: str | None = "ops-pipeline-signals"

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
        self.buffers = {a.name: EventTimeBuffer(config.order_grace_s, config.order_idle_s,
                                                gate_on_progress=config.signals_group is not None,
                                                quiet_waits_for_bars=config.clock == "bar")
                        for a in config.accounts}
        self._admin: Any = None
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
        self.signal_commits = SignalProgress()  # the signal agent's commits, once trustworthy

    # -- state ----------------------------------------------------------------------------------

    def rebuild_sync(self) -> dict[str, AccountDesk]:
        history = [e for e in self.io.read_all(self.endpoints, EXECUTIONS) if isinstance(e, Execution)]
        desks = {a.name: AccountDesk(a, self.calendar) for a in self.config.accounts}
        broker: list[Record] = []
        if any(a.uses_broker for a in self.config.accounts):  # (ControlEvent: read below)
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
        for buffer in self.buffers.values():
            buffer.clear()  # not acked: the reassigned partitions deliver them again
            buffer.expect(starts.get(self.features_topic, {}))
        self.signal_commits.reset(starts.get(self.signals_topic, {}))
        self.stale = False
        await self._reconcile()

    async def ensure_state(self) -> None:
        async with self.lock:
            await self._ensure_state()

    async def batch(self, name: str, first: bool, events: Sequence[Any]) -> None:
        """Buffers a batch in event-time order, decides what is complete, acks what was decided."""
        async with self.lock:
            await self._ensure_state()
            buffer = self.buffers[name]
            done: list[Any] = []
            futures: list[Awaitable[Any]] = []
            progress = self.signal_commits
            for event in events:
                msg = event.message
                if msg.topic == self.signals_topic:
                    progress.consumed(msg.partition, msg.offset)
                try:
                    record = self.io.decode(event)
                except Exception as exc:  # noqa: BLE001 - undecodable input: one dead letter per event
                    if first:
                        futures.append(await self.io.dead_letter(event, exc))
                    done.append(event)
                    continue
                if not isinstance(record, _DECIDED_ON):
                    done.append(event)
                    continue
                if isinstance(record, Features):
                    buffer.add(record, (record, event), clock_partition=event.message.partition,
                               offset=event.message.offset)
                else:
                    buffer.add(record, (record, event), quiet=not isinstance(record, Recommendation))
            if futures:
                await asyncio.gather(*futures)
            done += await self._release(name)
        await self._ack(name, done)

    def _admin_client(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient


            bootstrap = self.endpoints.kafka_bootstrap_servers
            self._admin = AdminClient(admin_config(self.papp.settings, bootstrap))
        return self._admin

    def _committed(self, group: str) -> dict[str, dict[int, int]]:
        """A consumer group's committed offsets: topic -> partition -> offset (blocking)."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        fut = self._admin_client().list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        out: dict[str, dict[int, int]] = {}
        for tp in fut.result(timeout=5).topic_partitions:
            if tp.offset >= 0:
                out.setdefault(tp.topic, {})[tp.partition] = tp.offset
        return out

    def start_offsets(self) -> dict[str, dict[int, int]]:
        """Where this worker's consumer starts each assigned partition: the group's committed offset,
        else the earliest (blocking). Only the features.1m and signals partitions matter here."""
        assigned: set[tuple[str, int]] = set()
        try:
            assigned = {(tp.topic, tp.partition) for tp in self.papp.app.consumer.assignment()}
        except Exception as exc:  # noqa: BLE001 - no consumer yet: a single worker has every partition
            log.debug("dispatch: assignment unknown (%s); assuming every partition", exc)
        if not assigned:
            assigned = {(t, p) for t, n in ((self.features_topic, FEATURES.partitions),
                                            (self.signals_topic, SIGNALS.partitions)) for p in range(n)}
        try:
            committed = self._committed(self.papp.app.conf.id)
        except Exception as exc:  # noqa: BLE001 - the broker cannot say: start from the earliest
            log.warning("dispatch: own committed offsets unknown (%s); assuming the earliest", exc)
            committed = {}
        out: dict[str, dict[int, int]] = {}
        for topic, p in assigned:
            if topic in (self.features_topic, self.signals_topic):
                out.setdefault(topic, {})[p] = committed.get(topic, {}).get(p, 0)
        return out

    def read_signal_progress(self) -> tuple[dict[int, int], dict[int, int]] | None:
        """The signal agent's committed offsets on features.1m per partition, then the end offsets
        of the signals topic read after them: once this worker has consumed signals up to those
        ends, every signal of a bar below those commits is in its buffers (blocking; None when
        unknown). Tansu reports a partition's end as its last batch's base offset + 1, so there
        "consumed up to the end" means the last batch has started arriving: the grace covers its rest."""
        if self.config.signals_group is None:
            return None
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec

        group = self.papp.settings.pipeline_topic_prefix + self.config.signals_group
        try:
            committed = self._committed(group).get(self.features_topic, {})
            tps = [TopicPartition(self.signals_topic, p) for p in range(SIGNALS.partitions)]
            futures = self._admin_client().list_offsets({tp: OffsetSpec.latest() for tp in tps},
                                                        request_timeout=5)
            ends = {tp.partition: fut.result(timeout=5).offset for tp, fut in futures.items()}
        except Exception:  # noqa: BLE001 - unknown group, broker busy: no progress known this time
            return None
        return committed, ends

    async def release_all(self) -> None:
        """The timer: decide what became complete while no new input arrived."""
        snapshot = await asyncio.to_thread(self.read_signal_progress)
        if snapshot is not None and not self.stale:
            self.signal_commits.sample(*snapshot)
            for buffer in self.buffers.values():
                buffer.known(snapshot[0])  # bars below the signal agent's commits exist
        covered = self.signal_commits.covered()
        if covered:
            for buffer in self.buffers.values():
                buffer.progress(covered)
        for name in self.buffers:
            async with self.lock:
                if self.stale:
                    return
                done = await self._release(name)
            await self._ack(name, done)

    async def _release(self, name: str) -> list[Any]:
        items = self.buffers[name].release()
        if not items:
            return []
        await self.handle_records(self.desks[name], items)
        return [event for _record, event in items]

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

    def now_for(self, bar_ts: datetime) -> datetime:
        """When an event is decided: the clock live; in a replay, the end of the event's own bar
        (not the latest bar seen: topics are consumed at uneven paces, the decision must not be)."""
        return self.clock.now() if self.config.clock == "wall" else bar_ts + MINUTE

    # -- decisions ------------------------------------------------------------------------------

    async def handle_records(self, desk: AccountDesk, items: Sequence[tuple[Record, Any]]) -> None:
        futures: list[Awaitable[Any]] = []
        for record, event in items:
            decisions: Sequence[Execution]
            try:
                if isinstance(record, Recommendation):
                    made = desk.on_recommendation(record, self.now_for(record.ts))
                    decisions = [] if made is None else [made]
                elif isinstance(record, Features):
                    futures.extend(await self._equity(desk, record.ts))
                    decisions = desk.on_bar(record.symbol, record.ts, record.close, self.now_for(record.ts))
                elif isinstance(record, BrokerAccount | BrokerPosition | OptionQuote | ControlEvent):
                    now = self.clock.now() if self.config.clock == "wall" else decided_at(record)
                    decisions, events = desk.on_broker(record, now)
                    if isinstance(record, ControlEvent) and record.account in ("*", desk.name):
                        log.info("dispatch[%s]: control %s %s at %s (%s)", desk.name, record.action,
                                 record.settings or "", record.at.isoformat(), record.reason)
                    for ev in events:
                        futures.append(await self.io.send(RECONCILE, ev))
                        log.info("dispatch[%s]: reconcile %s %s: %s (%s)", desk.name, ev.kind,
                                 ev.symbol or "", ev.action, ev.detail)
                else:
                    decisions = []
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
    channel = handler.io.channel(SIGNALS, FEATURES, BROKER_ACCOUNTS, BROKER_POSITIONS, OPTION_QUOTES, CONTROL)
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
