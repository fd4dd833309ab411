"""Builds the faust app explicitly (no module-level app, no autodiscovery) and runs it.

Agents live in their own modules as `register(app: PipelineApp) -> None`; `create_app` calls
the ones it is given. Transport is `kafka://` (aiokafka), processing at least once; values and
keys travel as raw bytes and are decoded by our codec in batches, so bad input can go to a DLQ.
Every app reports to the process's Prometheus metrics through a StageMonitor (streams.monitor).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust

from opsinfra.endpoints import Endpoints
from opsinfra.kafka_config import faust_broker_url, faust_credentials
from opsinfra.metrics import Metrics
from opsinfra.metrics import metrics as process_metrics
from opsinfra.settings import Settings
from schemas.codec import Codec, make_codec
from schemas.records import DeadLetter
from schemas.topics import DLQ_SUFFIX, SYMBOL_PARTITIONS, TopicSpec
from streams.monitor import StageMonitor, stage_of

log = logging.getLogger(__name__)


def event_headers(raw: Any) -> list[tuple[str, bytes]]:
    """A message's headers as (name, bytes) pairs, whichever shape the client handed them over in."""
    if not raw:
        return []
    pairs: Iterable[tuple[str, Any]] = raw.items() if isinstance(raw, Mapping) else raw
    return [(str(k), bytes(v) if v is not None else b"") for k, v in pairs]


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
            dlq, self.settings.topic(spec.name), partition, offset, key, value, headers or {}, error, stage
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
            dlq, msg.topic, msg.partition, msg.offset, event.key, event.value,
            dict(event_headers(msg.headers)), error, stage,
        )  # fmt: skip
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
        headers: dict[str, bytes],
        error: BaseException | str,
        stage: str,
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """The DeadLetter's bytes and codec headers (the schema name and version in header
        framing: keep them), counted as sent: the caller sends it or crashes the stage."""
        letter = DeadLetter(
            topic=topic,
            partition=partition,
            offset=offset,
            original_key=key,
            value=value,
            headers=headers,
            error=str(error),
            error_type=type(error).__name__ if isinstance(error, BaseException) else "Invalid",
            stage=stage,
            failed_at=datetime.now(UTC),
        )
        encoded, codec_headers = self.codec.encode(dlq, letter)
        self.count_dead_letter(dlq, letter.error_type)
        return encoded, codec_headers

    def count_dead_letter(self, dlq_topic: str, error: BaseException | str) -> None:
        """ops_dlq_records and ops_errors for one record of this stage sent to `dlq_topic`;
        `error` is the exception or its type's name."""
        kind = type(error).__name__ if isinstance(error, BaseException) else error
        self.metrics.dead_lettered(self.stage, dlq_topic, kind)


AgentRegistrar = Callable[[PipelineApp], None]


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
    loop, plus its consumer's own thread and loop): consuming alone runs ~11.3k messages/s with
    uvloop vs ~8.9k with asyncio on the project's machine.
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
