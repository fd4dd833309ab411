"""The features agent: market.bars.1m -> one FeatureEngine per symbol -> features.1m, at least once.
Engine state is rebuilt from the input topic rather than kept in a changelog table, and an event is
acked only once its outputs are delivered, so a committed offset implies delivered outputs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from opsinfra.endpoints import Endpoints
from opsinfra.errors import DecodeError
from opsinfra.settings import Settings
from schemas.avro_fast import RecordWriter
from schemas.codec import header_pairs
from schemas.records import Features
from schemas.topics import BARS, FEATURES
from streams.app import PipelineApp, run_stage
from streams.features_snapshot import Snapshots
from streams.features_state import BatchSender, PartitionState, bar_inputs, read_partition, replay_into
from streams.minute_clock import ClosurePublisher
from trading.clock import Clock, WallClock
from trading.features import InvalidBar, OutOfOrderBar
from trading.watermarks import CloserConfig, Closure, MinuteCloser

log = logging.getLogger(__name__)

STAGE = "features"
APP_ID = "ops-pipeline-features"
WORKER_HEADER = "ops.worker"  # which worker emitted a record: host:pid

_DLQ_KINDS = {OutOfOrderBar: "out_of_order", InvalidBar: "invalid", DecodeError: "undecodable"}


@dataclass(frozen=True)
class FeaturesConfig:
    batch_size: int = 1000  # bars per batch at most
    batch_within_s: float = 0.01  # how long a partial batch waits: the latency floor under light load
    replay_timeout_s: float = 120.0  # a replay read with no progress for this long crashes the stage
    worker_id: str = ""  # default: host:pid
    snapshot_every_s: float | None = None  # engine snapshots (0: none); None: the settings' value
    # minute watermarks on clock.minutes (trading.watermarks): the universe, whose symbols complete a
    # minute of their partition, and the clock deadlines are kept on
    symbols: tuple[str, ...] = ()
    closer: CloserConfig = CloserConfig()
    tick_s: float = 0.1  # how often deadlines and idleness are checked

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> FeaturesConfig:
        closer = CloserConfig(clock=getattr(settings, "pipeline_clock", "wall"),
                              allowance_s=getattr(settings, "pipeline_close_allowance_s", 5.0))
        conf: dict[str, Any] = {"symbols": tuple(getattr(settings, "pipeline_symbols", ())), "closer": closer}
        conf.update(overrides)
        return cls(**conf)


def universe_by_partition(symbols: Sequence[str], partitions: int) -> dict[int, set[str]]:
    """Which partition each symbol's records land on (murmur2, as every producer here keys them)."""
    partitioner = DefaultPartitioner()
    parts = list(range(partitions))
    out: dict[int, set[str]] = {}
    for s in symbols:
        out.setdefault(partitioner(s.encode(), parts, parts), set()).add(s)
    return out


def _feature_samples() -> list[Features]:
    ts = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    cold = Features(
        "S", ts, 1.5, None, None, 0, None, None, None, None, None, None, None, None, None, None, 1, 0
    )
    warm = Features(
        "SYMBOL-\u00e9", ts, 101.25, 100.5, 99.75, 2**40, 1000.5, 0.5, True, 55.5, -1e-9, 0.2, float("nan"),
        float("inf"), 100.5, 99.0, 2**31 - 1, 7,
    )  # fmt: skip
    return [cold, warm]


# A partition's engines are a pure function of the bars at offsets [0, n) of that partition, so when
# a partition's first event (offset o) reaches a worker with no state for it, the worker replays
# [0, o) with outputs dropped, and when it reaches a worker whose state stopped at n < o (another
# worker owned it meanwhile), the worker replays [n, o). Events below n that come again after a
# rebalance were applied and delivered by this very process and are acked without output. Every
# output is a deterministic function of the partition's bars, so a re-delivered bar re-emits an
# identical record. Why not a faust Table of engine snapshots: the snapshot and the offset commit
# are not atomic, so the snapshot would need its own offset and the same skip/replay rules anyway;
# recovery would trust the changelog's high watermark, which Tansu under-reports; and a snapshot per
# symbol per batch doubles what is produced. Replay costs a read of the retained partition on a
# cold start (figures in the README), and exact equality holds while the topic retains the whole
# history (30 days of bars). Snapshots on state.features (streams/features_snapshot.py) cut that to
# the bars after the newest usable one: each carries the offset it covers, which must lie between
# the log start and the offset faust hands over, and is written only once its outputs are delivered.
class FeaturesHandler:
    """Turns batches of bar events into sends; every event ends up as a feature, a no-op
    (duplicate bar) or a dead letter, and is acked once what it produced is delivered."""

    def __init__(self, papp: PipelineApp, config: FeaturesConfig, clock: Clock | None = None) -> None:
        self.papp = papp
        self.config = config
        self.clock = clock or WallClock()  # deadlines, and the time a closure records
        # replays read from the broker faust consumes from
        self.bootstrap = ",".join(f"{url.host}:{url.port}" for url in papp.app.conf.broker)
        self.states: dict[int, PartitionState] = {}
        self.counts: Counter[str] = Counter()
        self.bars_topic = papp.settings.topic(BARS.name)
        self.features_topic = papp.settings.topic(FEATURES.name)
        self.dlq_topic = papp.settings.topic(BARS.dlq.name)
        worker = config.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.extra_headers = [(WORKER_HEADER, worker.encode())]
        self.sender = BatchSender(papp.app, self.features_topic)
        self._encode: Callable[[Features], tuple[bytes, list[tuple[str, bytes]]]] | None = None
        self._acking: set[asyncio.Task[None]] = set()
        every = config.snapshot_every_s
        every = papp.settings.features_snapshot_seconds if every is None else every
        self.snapshots = Snapshots(papp, self.bootstrap, self.bars_topic, every_s=every, worker=worker)
        self.busy = False  # inside handle(): a state may be ahead of its delivered outputs
        self.closer = MinuteCloser(universe_by_partition(config.symbols, FEATURES.partitions), config.closer)
        self.closures = ClosurePublisher(papp, self.bootstrap, self.features_topic, STAGE, self.clock)
        self._tail: asyncio.Task[None] | None = None  # the latest delivery: closures wait for it

    async def handle(self, events: Sequence[Any], ack: Any) -> None:
        """Process one batch; `ack(event)` is awaited for each event once its outputs are delivered."""
        app = self.papp.app
        sender = self.sender
        if sender._producer is None:
            await sender.start()
        partition_of = sender.partition
        encode = self._encode or self._encoder()
        codec = self.papp.codec
        states = self.states
        extra = self.extra_headers
        futures: list[Awaitable[Any]] = []
        outputs: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]]]]] = {}
        done: list[Any] = []
        counts = self.counts
        n_features = n_dup = n_redelivered = n_stale = 0
        touched: set[int] = set()
        closures: list[Closure] = []
        closer = self.closer
        now = self.clock.now().timestamp()
        self.busy = True
        try:
            for event in events:
                msg = event.message
                generation = msg.generation_id
                if generation != app.consumer_generation_id:
                    # fetched before a rebalance: faust re-fetches it from the committed offset
                    n_stale += 1
                    continue
                partition = msg.partition
                offset = msg.offset
                state = states.get(partition)
                if state is None or (state.generation != generation and offset > state.next_offset):
                    state = await self._catch_up(partition, offset)
                    if generation != app.consumer_generation_id:
                        n_stale += 1
                        continue
                state.generation = generation
                if offset < state.next_offset:
                    n_redelivered += 1  # applied and delivered by this process before a rebalance
                    done.append(event)
                    continue
                touched.add(partition)
                state.next_offset = offset + 1
                try:
                    inputs = bar_inputs(
                        codec,
                        event.key,
                        event.value,
                        header_pairs(msg.headers),
                        topic=msg.topic,
                        partition=partition,
                        offset=offset,
                    )
                    values = state.apply(inputs)
                    if values is None:
                        n_dup += 1
                        done.append(event)
                        continue
                    value, headers = encode(values)
                except Exception as exc:  # per-event errors become dead letters
                    futures.append(await self._dead_letter(event, exc))
                    done.append(event)
                    continue
                key = inputs[0].encode()
                part = partition_of(key)
                rows = outputs.get(part)
                if rows is None:
                    rows = outputs[part] = []
                rows.append((key, value, headers + extra))
                n_features += 1
                done.append(event)
                closures += closer.on_bar(part, values.symbol, values.ts, now)
            if outputs:
                futures += await sender.send(outputs)
        except BaseException:
            # Cancelled (faust restarts agents on some rebalances) or failed mid-batch: outputs of
            # applied bars may never be sent, so these partitions must be rebuilt, not trusted.
            for partition in touched:
                self.states.pop(partition, None)
            raise
        finally:
            counts["bars"] += len(events) - n_stale
            counts["features"] += n_features
            counts["duplicates"] += n_dup
            counts["redelivered"] += n_redelivered
            counts["stale"] += n_stale
            counts["late"] = closer.late  # bars of a minute already closed
            self.busy = False
        self.snapshots.after_batch(touched, states, futures)
        if done or closures:
            sent = {p: len(rows) for p, rows in outputs.items()}
            self._after(self._deliver(futures, done, ack, sent, closures, self._tail))

    def _after(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tail = task
        self._acking.add(task)  # a strong reference until it is done
        task.add_done_callback(self._acking.discard)

    async def tick(self) -> None:
        """The timer: closures by deadline (wall clock) or idleness (bar clock)."""
        await self.closures.known_ends()
        closures = self.closer.on_tick(self.clock.now().timestamp())
        if closures:
            self._after(self._deliver([], [], None, {}, closures, self._tail))

    def _encoder(self) -> Callable[[Features], tuple[bytes, list[tuple[str, bytes]]]]:
        codec, topic = self.papp.codec, self.features_topic
        writer = RecordWriter.build(codec, topic, _feature_samples())
        if writer is None:
            log.warning("features: encoding with the codec (its schema or framing is not the fast path's)")

            def encode(values: Features) -> tuple[bytes, list[tuple[str, bytes]]]:
                return codec.encode(topic, values)

        else:
            headers = writer.headers
            write = writer.encode

            def encode(values: Features) -> tuple[bytes, list[tuple[str, bytes]]]:
                return write(values), headers

        self._encode = encode
        return encode

    async def _deliver(self, futures: list[Awaitable[Any]], events: list[Any], ack: Any, sent: dict[int, int],
                       closures: list[Closure], previous: asyncio.Task[None] | None) -> None:
        """Acks once delivered, then the batch's closures, with the delivered ends (in batch order)."""
        if events:
            await self._ack_when_delivered(futures, events, ack)
        if previous is not None and not previous.done():
            await asyncio.shield(previous)
        try:
            if sent:
                await self.closures.delivered(futures, sent)
            if closures:
                await self.closures.publish([(c, -1) for c in closures])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("features: publishing minute closures failed; crashing the stage")
            await self.papp.app.crash(exc)

    async def _ack_when_delivered(self, futures: list[Awaitable[Any]], events: list[Any], ack: Any) -> None:
        try:
            if futures:
                await asyncio.gather(*futures)
            for event in events:
                await ack(event)
            self.counts["acked"] += len(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Outputs of applied bars were lost: only a restart (and a rebuild) makes state and
            # output agree again, so the whole stage goes down rather than skipping them.
            log.exception("features: delivery failed; crashing the stage")
            await self.papp.app.crash(exc)

    async def _catch_up(self, partition: int, end: int) -> PartitionState:
        held = self.states.get(partition)
        generation = self.papp.app.consumer_generation_id
        state = await self.snapshots.restore(partition, end, held, generation) or held or PartitionState()
        start = state.next_offset
        settings = self.papp.settings

        def replay() -> Any:
            messages = read_partition(
                settings,
                self.bootstrap,
                self.bars_topic,
                partition,
                start,
                end,
                timeout_s=self.config.replay_timeout_s,
            )
            return replay_into(
                state, self.papp.codec, messages, topic=self.bars_topic, partition=partition, end=end
            )

        done = await asyncio.to_thread(replay)
        self.states[partition] = state
        if start == end:
            return state
        self.counts["replayed"] += done.bars
        log.info(
            "features: partition %d rebuilt from offset %d to %d: %d bars (%d skipped) in %.2fs",
            partition,
            start,
            end,
            done.bars,
            done.skipped,
            done.seconds,
        )
        return state

    async def _dead_letter(self, event: Any, error: BaseException) -> Awaitable[Any]:
        self.counts[_DLQ_KINDS.get(type(error), "error")] += 1
        self.counts["dead_letters"] += 1
        return await self.papp.send_dead_letter(event, error, stage=STAGE, extra_headers=self.extra_headers)


def register(papp: PipelineApp, *, config: FeaturesConfig | None = None, clock: Clock | None = None
             ) -> FeaturesHandler:
    """Adds the features agent to `papp`; returns its handler (counts, state) for tests."""
    handler = FeaturesHandler(papp, config or FeaturesConfig.from_settings(papp.settings), clock)
    config = handler.config

    async def features(stream: Any) -> None:
        async for events in stream.noack_take(config.batch_size, within=config.batch_within_s):
            try:
                await handler.handle(events, stream.ack)
            except Exception as exc:
                # not a per-event error (those are dead-lettered): the producer or a replay failed.
                # faust would restart just the agent; the stage restarts instead, state rebuilt.
                log.exception("features: batch failed; crashing the stage")
                await papp.app.crash(exc)
                raise

    papp.app.agent(papp.topic(BARS), name="features", concurrency=1)(features)

    async def tick() -> None:
        await handler.tick()

    papp.app.timer(interval=config.tick_s, name="features-close")(tick)

    def on_assigned(_app: Any, /, *args: Any, signal: Any, **_kw: Any) -> None:
        mine = sorted(tp.partition for tp in args[0] if tp.topic == handler.bars_topic)
        handler.closer.assign(mine)
        handler.snapshots.assigned = set(mine)
        log.info("features: assigned partitions %s", ",".join(map(str, mine)) or "none")

    papp.app.on_partitions_assigned.connect(on_assigned)

    async def on_shutdown(_app: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        await handler.snapshots.on_shutdown(handler.states, handler.busy)

    papp.app.on_before_shutdown.connect(on_shutdown)
    return handler


def run(
    settings: Settings,
    endpoints: Endpoints,
    stop: threading.Event,
    *,
    config: FeaturesConfig | None = None,
) -> None:
    """The `features` stage."""
    run_stage(settings, endpoints, stop, app_id=APP_ID, register=functools.partial(register, config=config))
