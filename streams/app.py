"""The faust app, built explicitly (no module-level app, no autodiscovery), and the pieces every
stage shares: its agents' event I/O, one helper that adds a batched agent and one that runs a stage.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import faust

from opsinfra.endpoints import Endpoints
from opsinfra.errors import DecodeError
from opsinfra.kafka_config import faust_broker_url, faust_credentials
from opsinfra.metrics import Metrics
from opsinfra.metrics import metrics as process_metrics
from opsinfra.settings import Settings
from schemas.codec import Codec, decode, header_pairs, make_codec
from schemas.dead_letters import dead_letter
from schemas.records import Record
from schemas.topic_io import read_records
from schemas.topics import DLQ_SUFFIX, SYMBOL_PARTITIONS, TopicSpec
from streams.monitor import StageMonitor, stage_of

log = logging.getLogger(__name__)


@dataclass
class PipelineApp:
    """The faust app plus what every agent needs: settings, the codec, topic lookup, metrics."""

    app: faust.App
    settings: Settings
    codec: Codec
    stage: str = "ops-pipeline"  # the `stage` label of its metrics
    metrics: Metrics = field(default_factory=process_metrics)

    def topic(self, spec: TopicSpec, **kwargs: Any) -> faust.TopicT:
        """The faust topic of a contract topic (prefixed), raw bytes in and out."""
        return self.app.topic(
            self.settings.topic(spec.name),
            key_serializer="raw",
            value_serializer="raw",
            partitions=spec.partitions,
            **kwargs,
        )

    def dead_letter(
        self,
        spec: TopicSpec,
        *,
        stage: str,
        error: BaseException | str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        offset: int | None,
        headers: dict[str, bytes] | None = None,
    ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """Encode a DeadLetter for `spec`'s DLQ; returns (key, value, headers) for the caller to send
        (the headers carry the schema name and version in header framing: keep them).
        Counted as sent: the caller sends it or crashes the stage."""
        dlq = self.settings.topic(spec.dlq.name)
        encoded, codec_headers = self._encode_dead_letter(
            dlq, self.settings.topic(spec.name), partition, offset, key, value, headers, error, stage
        )
        return key or b"", encoded, codec_headers

    async def send_dead_letter(
        self, event: Any, error: BaseException, *, stage: str, extra_headers: Sequence[tuple[str, bytes]] = ()
    ) -> Awaitable[Any]:
        """Dead-letter a faust event: logged, counted, encoded and sent to its topic's DLQ (the
        physical topic + ".dlq"); returns the delivery future, for the caller to await before it
        acks the event."""
        msg = event.message
        log.warning("%s: %s[%s]@%s to the DLQ: %s", stage, msg.topic, msg.partition, msg.offset, error)
        dlq = msg.topic + DLQ_SUFFIX
        value, headers = self._encode_dead_letter(
            dlq, msg.topic, msg.partition, msg.offset, event.key, event.value, msg.headers, error, stage
        )
        fut: Awaitable[Any] = await self.app.producer.send(
            dlq, event.key or b"", value, None, None, headers + list(extra_headers)
        )
        return fut

    def _encode_dead_letter(
        self,
        dlq: str,
        topic: str,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
        value: bytes | None,
        headers: Any,
        error: BaseException | str,
        stage: str,
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The DeadLetter's bytes and codec headers (the schema name and version in header
        framing: keep them), counted as sent: the caller sends it or crashes the stage."""
        letter = dead_letter(
            topic, stage=stage, error=error, key=key, value=value, headers=headers,
            partition=partition, offset=offset,
        )  # fmt: skip
        encoded, codec_headers = self.codec.encode(dlq, letter)
        self.count_dead_letter(dlq, letter.error_type)
        return encoded, codec_headers

    def count_dead_letter(self, dlq_topic: str, error: BaseException | str) -> None:
        """ops_dlq_records and ops_errors for one record of this stage sent to `dlq_topic`;
        `error` is the exception or its type's name."""
        kind = type(error).__name__ if isinstance(error, BaseException) else error
        self.metrics.dead_lettered(self.stage, dlq_topic, kind)


AgentRegistrar = Callable[[PipelineApp], object]


def create_app(
    settings: Settings,
    endpoints: Endpoints,
    *,
    app_id: str = "ops-pipeline",
    agents: Sequence[AgentRegistrar] = (),
    codec: Codec | None = None,
    metrics: Metrics | None = None,
    **overrides: Any,
) -> PipelineApp:
    """A faust app for these settings with the given agents registered.

    The app id (and so the consumer group and internal topic names) carries the topic prefix,
    so a rehearsal under a prefix never shares a group with production. Its metrics go to
    `metrics` (default: the process's), labelled with the stage named by the app id.
    """
    stage = stage_of(app_id)
    m = metrics if metrics is not None else process_metrics()
    conf: dict[str, Any] = dict(
        broker=faust_broker_url(endpoints.kafka_bootstrap_servers),
        broker_credentials=faust_credentials(settings),
        autodiscover=False,
        store="memory://",
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=SYMBOL_PARTITIONS,
        topic_allow_declare=False,  # topics come from the registry with explicit configs
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.5,
        producer_acks=-1,
        stream_wait_empty=False,
        Monitor=functools.partial(StageMonitor, stage=stage, metrics=m),
    )
    conf.update(overrides)
    app = faust.App(f"{settings.pipeline_topic_prefix}{app_id}", **conf)
    papp = PipelineApp(
        app=app,
        settings=settings,
        codec=codec or make_codec(endpoints.schema_registry_url),
        stage=stage,
        metrics=m,
    )
    for register in agents:
        register(papp)
    return papp


class EventIO:
    """Decoding, sending and dead-lettering for an agent, with the codec's headers kept."""

    def __init__(self, papp: PipelineApp, stage: str) -> None:
        self.papp = papp
        self.stage = stage
        self.counts: Counter[str] = Counter()
        self._specs: dict[str, TopicSpec] = {}

    def physical(self, spec: TopicSpec) -> str:
        name = self.papp.settings.topic(spec.name)
        self._specs[name] = spec
        return name

    def channel(self, *specs: TopicSpec) -> Any:
        """One faust channel over several co-partitioned contract topics (raw bytes)."""
        names = [self.physical(s) for s in specs]
        return self.papp.app.topic(*names, key_serializer="raw", value_serializer="raw")

    def spec_of(self, event: Any) -> TopicSpec:
        return self._specs[event.message.topic]

    def decode(self, event: Any) -> Record:
        msg = event.message
        spec = self._specs[msg.topic]
        return decode(self.papp.codec, spec.record, event.value, header_pairs(msg.headers),
                      topic=msg.topic, partition=msg.partition, offset=msg.offset)

    async def send(self, spec: TopicSpec, record: Record, key: str | None = None) -> Awaitable[Any]:
        topic = self.papp.settings.topic(spec.name)
        value, headers = self.papp.codec.encode(topic, record)
        k = (key if key is not None else record.key()).encode()
        self.counts[spec.name] += 1
        fut: Awaitable[Any] = await self.papp.app.producer.send(topic, k, value, None, None, headers)
        return fut

    async def dead_letter(self, event: Any, error: BaseException) -> Awaitable[Any]:
        self.counts["dead_letters"] += 1
        return await self.papp.send_dead_letter(event, error, stage=self.stage)

    def read_all(self, endpoints: Endpoints, spec: TopicSpec) -> list[Record]:
        """Every decodable record of a contract topic as of now (blocking: run it in a thread)."""
        got = read_records(self.papp.settings, endpoints.kafka_bootstrap_servers, self.papp.codec, spec,
                           quiet_s=0.5)
        return [r for _, r in got if not isinstance(r, DecodeError)]


class Batching(Protocol):
    """A stage's batching: up to `batch_size` events, a partial batch after `batch_within_s`."""

    @property
    def batch_size(self) -> int: ...
    @property
    def batch_within_s(self) -> float: ...


class Rebuilt(Protocol):
    """A handler whose state comes from the topics: once `stale`, it rebuilds before its next batch."""

    stale: bool


def add_agent(
    papp: PipelineApp,
    channel: Any,
    handle: Callable[[Sequence[Any]], Awaitable[object]],
    *,
    name: str,
    batching: Batching,
    before_batch: Callable[[], Awaitable[object]] | None = None,
    rebuilt: Rebuilt | None = None,
    own_acks: Callable[[Any], object] | None = None,
) -> None:
    """Adds agent `name` (concurrency 1) over `channel`: each batch is awaited through
    `before_batch()` and `handle(events)`, then its events are acked, so a batch cut short by a stop
    or a crash is redelivered, not committed unhandled (faust's take_events acks in a `finally`).
    With `own_acks`, the handler acks instead: it is handed the agent's stream first. With
    `rebuilt`, its `stale` is set whenever partitions are assigned.
    """

    async def agent(stream: Any) -> None:
        if own_acks is not None:
            own_acks(stream)
        async for events in stream.noack_take(batching.batch_size, within=batching.batch_within_s):
            if before_batch is not None:
                await before_batch()
            await handle(events)
            if own_acks is None:
                for event in events:
                    await stream.ack(event)

    papp.app.agent(channel, name=name, concurrency=1)(agent)
    if rebuilt is not None:
        target = rebuilt

        async def on_assigned(_app: Any, *_args: Any, signal: Any = None, **_kw: Any) -> None:
            target.stale = True

        papp.app.on_partitions_assigned.connect(cast(Any, on_assigned))  # mode types it too narrowly


#: faust hard-codes aiokafka's fetch_max_wait_ms=1500. Kafka and Redpanda answer a waiting fetch as
#: soon as data arrives, so there it only paces idle polls; Tansu holds it for the whole wait, which
#: put ~0.4 s on average (0.75 s worst) between a record and the agent on every hop.
FETCH_MAX_WAIT_MS = 20


def bound_fetch_wait(app: faust.App, max_wait_ms: int) -> bool:
    """Make the consumer `app` is about to create wait at most `max_wait_ms` per fetch.

    Call before `app.start()`. faust offers no setting for it, so this wraps the method of its
    aiokafka consumer thread that builds the consumer; False (and a warning) if that is not there.
    """
    thread: Any = getattr(app.consumer, "_thread", None)
    create = getattr(thread, "_create_worker_consumer", None)
    if create is None:
        log.warning("faust %s: cannot bound the consumer's fetch wait", faust.__version__)
        return False

    def create_worker_consumer(transport: Any) -> Any:
        consumer = create(transport)
        consumer._fetch_max_wait_ms = max_wait_ms  # read by AIOKafkaConsumer.start()
        return consumer

    thread._create_worker_consumer = create_worker_consumer
    return True


@contextmanager
def _uvloop_if_installed() -> Iterator[None]:
    """Loops made inside are uvloop's when uvloop is installed (else asyncio's, unchanged).

    Most of faust's cost per message is event-loop bookkeeping (two tasks per message in its fetch
    loop, plus its consumer's own thread and loop); README's Measured section has the figures.
    """
    try:
        import uvloop
    except ImportError:
        yield
        return
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def run_app(
    papp: PipelineApp,
    stop: threading.Event,
    *,
    poll_s: float = 0.2,
    fetch_max_wait_ms: int | None = FETCH_MAX_WAIT_MS,
) -> None:
    """Run the app on a fresh event loop in this thread until `stop` is set or the app crashes.

    faust's Worker wants the main thread and owns signals; a stage runs under our CLI instead,
    so the app is started and stopped as a plain mode Service.
    """
    with _uvloop_if_installed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # built now so that the loop of the consumer's thread comes from the same policy
        consumer = papp.app.consumer
        if fetch_max_wait_ms is not None:
            bound_fetch_wait(papp.app, fetch_max_wait_ms)
    asyncio.set_event_loop(loop)
    log.debug("faust app %s on %s, consumer %s", papp.app.conf.id, type(loop).__module__, type(consumer))

    async def main() -> None:
        app = papp.app
        await app.start()
        try:
            while not stop.is_set() and not app.should_stop:
                await asyncio.sleep(poll_s)
            if app.crash_reason is not None:
                raise app.crash_reason
        finally:
            await app.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def run_stage(
    settings: Settings, endpoints: Endpoints, stop: threading.Event, *, app_id: str, register: AgentRegistrar
) -> None:
    """A stage of agents: its app under `app_id`, with `register` applied, run until `stop` is set."""
    run_app(create_app(settings, endpoints, app_id=app_id, agents=[register]), stop)
