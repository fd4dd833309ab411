"""The dispatch agent: one faust agent per account, signals + features.1m -> executions, exactly one
decision per (recommendation, account) across redeliveries and restarts. Runs as one worker: an
account's limits need all of its signals in one place.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connectors.alpaca_trading import AlpacaOrders, OrderOutcome, TradeUpdates, outcome_of_update
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
from streams.broker_link import BrokerLink, KeyPair, key_pairs
from trading.accounts import AccountDesk, accounts_from_settings
from trading.broker import decided_at
from trading.execution import client_order_id
from trading.options import parse_occ
from trading.reconcile import equity_point, rebuild_view
from trading.calendar import SessionCalendar, TradingCalendar
from trading.clock import MINUTE, Clock, WallClock
from trading.execution import FAILED, FILLED, SKIPPED, SUBMITTED, exit_reason_of
from trading.gates import DEFAULT_ACCOUNTS, AccountConfig
from trading.ordering import EventTimeBuffer, SignalProgress

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


@dataclass
class _Unknown:
    first_seen: float = field(default_factory=time.monotonic)


class DispatchHandler:
    """The desks of every account and what moves their decisions in and out.

    Each account's AccountDesk decides entries, reversals and rule exits, and is the only writer of
    its state. The desks are rebuilt from the executions topic before the first batch (and after a
    rebalance), not kept in a faust Table: that topic already is the durable log of every decision,
    an execution is delivered before its input is acked, and the desk folds it with the apply() it
    uses live, so decided ids, positions, trades, P&L and kill switch cannot disagree with what was
    published. A Table would be a second copy written in a separate step (a crash can split them),
    with a changelog partitioned by input event rather than by account.

    alpaca-paper: a decision that passed the gates is published as SUBMITTED (write-ahead) before
    the order is POSTed, so a crash between the POST and its answer leaves a record that the
    reconcile pass resolves by client_order_id, never a second order."""

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
                                                gate_on_progress=config.signals_group is not None)
                        for a in config.accounts}
        self._admin: Any = None
        self.streams: dict[str, Any] = {}  # account -> its agent's stream, to ack released events
        self.orders = orders  # one client for every account (tests); else one per key pair
        self.pairs: dict[str, KeyPair] = {}
        if orders is None and config.needs_broker:
            self.pairs = key_pairs(config.accounts, papp.settings, default_url=config.alpaca_url,
                                   timeout_s=config.order_timeout_s)
        self.link = BrokerLink(self.pairs, self.io.send, data_url=config.alpaca_data_url,
                               timeout_s=config.order_timeout_s, pipeline_symbols=self._pipeline_symbols,
                               open_symbols=self._open_symbols,
                               now=self.clock.now)
        self._equity_minute: dict[str, datetime] = {}
        # opt-in messages of entries, fills and exits (NOTIFY_TRADES), live only: a replay is history
        self.notifier: Any = None
        if getattr(papp.settings, "notify_trades", False) and config.clock == "wall":
            from connectors.notify import Notifier

            self.notifier = Notifier.from_settings(papp.settings, stage=STAGE)
        self.stale = True
        self._lock: asyncio.Lock | None = None
        self._unknown: dict[str, _Unknown] = {}
        self._updates: asyncio.Queue[Any] | None = None
        self.trade_updates: TradeUpdates | None = None
        self.features_topic = papp.settings.topic(FEATURES.name)
        self.signals_topic = papp.settings.topic(SIGNALS.name)
        self.signal_commits = SignalProgress()  # the signal agent's commits, once trustworthy

    def orders_for(self, account: str) -> AlpacaOrders | None:
        pair = self.link.for_account(account)
        return pair.orders if pair is not None else self.orders

    def _pipeline_symbols(self, account: str) -> set[str]:
        desk = self.desks.get(account)
        return set() if desk is None else {p.symbol for p in desk.state.book}

    def _open_symbols(self, account: str) -> set[str]:
        desk = self.desks.get(account)
        return set() if desk is None else {p.symbol for p in desk.state.book if p.status == "OPEN"}

    # -- state ----------------------------------------------------------------------------------

    def rebuild_sync(self) -> dict[str, AccountDesk]:
        history = [e for e in self.io.read_all(self.endpoints, EXECUTIONS) if isinstance(e, Execution)]
        desks = {a.name: AccountDesk(a, self.calendar) for a in self.config.accounts}
        broker: list[Record] = []
        if any(a.uses_broker for a in self.config.accounts):  # (ControlEvent: read below)
            for spec in (BROKER_ACCOUNTS, BROKER_POSITIONS, OPTION_QUOTES):
                broker += self.io.read_all(self.endpoints, spec)
        control = sorted((r for r in self.io.read_all(self.endpoints, CONTROL) if isinstance(r, ControlEvent)),
                         key=lambda r: r.at)
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
                        log.info("dispatch[%s]: reconcile %s %s: %s (%s)", desk.name, ev.kind, ev.symbol or "",
                                 ev.action, ev.detail)
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
                await asyncio.to_thread(self.link.cancel_legs, desk.name, client_order_id(desk.name, pos.entry_id))
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

    # -- broker: reconcile and trade updates ----------------------------------------------------

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
                                        on_connect=functools.partial(self.link.after_update, pair, 0.0, "reconnect"))
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
