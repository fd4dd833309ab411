"""The `sink` stage: every contract topic into its PostgreSQL table, exactly once in effect: its
position (`sink_offsets`) commits with the rows it covers, and Kafka commits are advisory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from opsinfra.backoff import Backoff
from opsinfra.endpoints import Endpoints
from opsinfra.errors import ConfigError, DecodeError, SinkError
from opsinfra.kafka_config import consumer_config
from opsinfra.kafka_io import DeliveryError
from opsinfra.metrics import STATS_INTERVAL_MS, Metrics
from opsinfra.metrics import metrics as process_metrics
from opsinfra.settings import Settings
from schemas.avro_fast import Decoder, decoder
from schemas.codec import Codec, make_codec
from schemas.records import DeadLetter
from schemas.topic_io import RecordProducer
from schemas.topics import CONTRACT
from sinks.store import Batch, DatabaseUnavailable, Store, WriteReport, letter
from sinks.tables import BY_TOPIC, InvalidRecord, Row, TableSpec

log = structlog.get_logger(__name__)
STAGE = "sink"  # the `stage` label of its metrics
T = TypeVar("T")
# a psycopg error should reach here classified by the store; the last two are a safety net
_TRANSIENT = (DatabaseUnavailable, DeliveryError, KafkaException, psycopg.OperationalError,
              psycopg.InterfaceError)
_BAD_RECORD = (DecodeError, InvalidRecord, KeyError, TypeError, AttributeError)


@dataclass(frozen=True, slots=True)
class SinkConfig:
    name: str = "postgres"  # the `sink` column of sink_offsets; one position per sink name
    # contract (unprefixed) names; not the .dlq topics, nor schemas.topics.STATE_TOPICS (a stage's
    # own snapshots, e.g. state.features: re-derivable from the contract topics, so not stored)
    topics: tuple[str, ...] = tuple(t.name for t in CONTRACT)
    max_records: int = 10_000  # per batch and transaction
    max_latency_s: float = 0.5  # a partial batch is written after this long
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 10.0
    connect_timeout_s: float = 5.0
    metadata_refresh_s: float = 30.0  # how often to look for added partitions
    application_name: str = "ops-pipeline-sink"  # shows in pg_stat_activity
    stats_interval_ms: int = STATS_INTERVAL_MS  # librdkafka statistics (consumer lag)

    def group_id(self, prefix: str) -> str:
        return f"{prefix}ops-pipeline.sink.{self.name}"


@dataclass
class SinkStats:
    records: int = 0  # consumed
    committed: int = 0  # consumed records whose batch committed
    rows: int = 0  # rows sent to the tables
    dead_letters: int = 0
    batches: int = 0
    outages: int = 0  # database or DLQ failures survived
    first_record_at: float | None = None  # time.monotonic()
    last_commit_at: float | None = None


class _Stopping(Exception):
    """`stop` was set while waiting to retry."""


class PostgresSink:
    """Buffers decoded records in `add`, writes them in `flush`; assigns itself every partition.

    Partitions are assigned directly, not through a consumer group: a restarted sink starts at
    once at its stored offsets instead of waiting out the dead member's session.
    """

    def __init__(
        self,
        settings: Settings,
        endpoints: Endpoints,
        config: SinkConfig | None = None,
        *,
        codec: Codec | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.config = config or SinkConfig()
        self.codec = codec or make_codec(endpoints.schema_registry_url)
        prefix = settings.pipeline_topic_prefix
        self._specs: dict[str, TableSpec] = {prefix + n: BY_TOPIC[n] for n in self.config.topics}
        self._routes: dict[str, tuple[TableSpec, Decoder]] = {
            topic: (spec, decoder(self.codec, spec.topic.record, topic))
            for topic, spec in self._specs.items()
        }
        self.stats = SinkStats()
        self.metrics = metrics if metrics is not None else process_metrics()
        self._records: dict[str, Any] = {}  # topic -> its labelled counter
        self._batch = Batch()
        self._batch_started = 0.0
        self._inflight: Batch | None = None  # sent to the store, outcome not yet received
        self._inflight_started = 0.0  # when its first record was read
        self._reposition = True  # (re)assign every partition at its stored offset
        self._partitions: list[tuple[str, int]] = []
        self._consumer: Consumer | None = None
        self._producer: RecordProducer | None = None
        self._store: Store | None = None

    # -- the stage ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set. Raises ConfigError for configuration errors, retries the rest."""
        bootstrap = self.endpoints.kafka_bootstrap_servers
        reconnects = self.metrics.reconnects.labels(STAGE)
        self._producer = RecordProducer(
            self.settings, bootstrap, self.codec, **self._librdkafka_stats()
        )
        self._store = Store(
            self.endpoints.database_url,
            sink=self.config.name,
            application_name=self.config.application_name,
            connect_timeout=self.config.connect_timeout_s,
            publish=self._publish,
            on_reconnect=reconnects.inc,
        )
        self._consumer = Consumer(
            consumer_config(
                self.settings,
                bootstrap,
                self.config.group_id(self.settings.pipeline_topic_prefix),
                **{"fetch.queue.backoff.ms": 10, "enable.auto.offset.store": False},
                **self._librdkafka_stats(),
            )
        )
        try:
            self._retrying(stop, "connecting to PostgreSQL", self._store.connection)
            self._partitions = self._retrying(stop, "reading topic metadata", self._discover)
            log.info("sink started", sink=self.config.name, partitions=len(self._partitions))
            self._loop(stop)
            self._finish()
        except _Stopping:
            pass
        except ConfigError as exc:
            log.error("sink configuration error", error=str(exc))
            raise
        finally:
            self._consumer.close()
            self._store.close()
            try:
                self._producer.flush(10)
            except DeliveryError as exc:
                log.warning("dead letters not delivered at shutdown", error=str(exc))
            self._producer = None  # librdkafka handles go with their last reference

    def _loop(self, stop: threading.Event) -> None:
        assert self._consumer is not None
        cfg = self.config
        refresh_at = time.monotonic() + cfg.metadata_refresh_s
        while not stop.is_set():
            if self._reposition:
                self._retrying(stop, "resuming from stored offsets", self._assign)
                continue
            room = cfg.max_records - self._batch.records
            msgs = self._consumer.consume(num_messages=max(room, 1), timeout=0.1)
            if msgs:
                self.add(msgs)
            elif self._inflight is not None:
                self._receive()  # idle: settle the batch in flight now rather than at the next one
            now = time.monotonic()
            if self._batch.records and (
                self._batch.records >= cfg.max_records
                or now - self._batch_started >= cfg.max_latency_s
            ):
                self.flush()
            if now >= refresh_at:
                refresh_at = now + cfg.metadata_refresh_s
                self._refresh_partitions()

    def _finish(self) -> None:
        """On stop: write what is buffered, once; anything unwritten is re-read next time."""
        self._receive()
        if self._batch.records and not self._reposition:
            self.flush()
            self._receive()

    # -- buffer and write -----------------------------------------------------------------------
    def add(self, msgs: list[Message]) -> None:
        """Decode messages into the current batch; undecodable or invalid ones become dead letters."""
        batch = self._batch
        if not batch.records:
            self._batch_started = time.monotonic()
            if self.stats.first_record_at is None:
                self.stats.first_record_at = self._batch_started
        routes, offsets, by_topic = self._routes, batch.offsets, batch.by_topic
        slots: dict[str, tuple[list[Row], list[Any]]] = {}
        count = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                self._kafka_error(err)
                continue
            topic: str = m.topic()  # type: ignore[assignment]  # set on every non-error message
            spec, decode = routes[topic]
            try:
                row = spec.build(decode(m))
            except _BAD_RECORD as exc:
                batch.dead.append(letter(m, exc, "sink"))
            else:
                slot = slots.get(spec.slot)
                if slot is None:
                    slot = slots[spec.slot] = (
                        batch.rows.setdefault(spec.slot, []),
                        batch.msgs.setdefault(spec.slot, []),
                    )
                slot[0].append(row)
                slot[1].append(m)
            offsets[(topic, m.partition())] = m.offset() + 1  # type: ignore[index,operator]
            by_topic[topic] = by_topic.get(topic, 0) + 1
            count += 1
        batch.records += count
        self.stats.records += count

    def flush(self) -> None:
        """Send the batch to the store once the previous one has committed."""
        self._receive()
        if self._reposition or not self._batch.records:
            return
        assert self._store is not None
        batch, self._batch = self._batch, Batch()
        try:
            if batch.dead:
                self._publish(batch.dead)  # before its COMMIT: at least once on the .dlq topics
            self._store.send(batch)
        except _TRANSIENT as exc:
            self._fail(exc)
            return
        self._inflight, self._inflight_started = batch, self._batch_started

    def _receive(self) -> None:
        if self._inflight is None:
            return
        assert self._store is not None
        batch, self._inflight = self._inflight, None
        try:
            report = self._store.receive()
        except _TRANSIENT as exc:
            self._fail(exc)
            return
        st = self.stats
        st.batches += 1
        st.rows += report.rows
        st.committed += batch.records
        st.last_commit_at = time.monotonic()
        if report.dead:
            st.dead_letters += len(report.dead)
            first = report.dead[0]
            log.warning("records sent to the DLQ", count=len(report.dead),
                        first=f"{first.topic}[{first.partition}]@{first.offset}: {first.error}")
        self._committed_metrics(batch, report)
        self._commit_advisory(batch.offsets)

    def _committed_metrics(self, batch: Batch, report: WriteReport) -> None:
        """Per committed batch: records per topic, dead letters, and the latency of its oldest
        record (read -> committed), so a scrape never counts what a rollback re-reads."""
        m = self.metrics
        for topic, n in batch.by_topic.items():
            child = self._records.get(topic)
            if child is None:
                child = self._records[topic] = m.records.labels(STAGE, topic)
            child.inc(n)
        for dead in report.dead:
            dlq = self.settings.topic(self._specs[dead.topic].topic.dlq.name)
            m.dead_lettered(STAGE, dlq, dead.error_type)
        m.latency.labels(STAGE).observe(time.monotonic() - self._inflight_started)
        m.progressed(STAGE)

    def _fail(self, exc: BaseException) -> None:
        """Drop everything unwritten; the partitions are re-read from the stored offsets."""
        self.stats.outages += 1
        self.metrics.errors.labels(STAGE, type(exc).__name__).inc()
        self._batch = Batch()
        self._reposition = True
        log.warning("write failed; resuming from the stored offsets", error=str(exc))

    def _commit_advisory(self, offsets: dict[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=True,
            )
        except KafkaException as exc:  # advisory only: lag tools read it, the sink never does
            log.debug("advisory commit failed", error=str(exc))

    def _publish(self, letters: list[DeadLetter]) -> None:
        assert self._producer is not None
        for dead in letters:
            self._producer.send_dlq(self._specs[dead.topic].topic, dead)
        self._producer.flush(30)

    # -- assignment -----------------------------------------------------------------------------
    def _assign(self) -> None:
        assert self._consumer is not None and self._store is not None
        self._receive()
        self._batch = Batch()
        stored = self._store.load_offsets(self._partitions)
        self._consumer.assign(
            [TopicPartition(t, p, stored.get((t, p), OFFSET_BEGINNING)) for t, p in self._partitions]
        )
        self._reposition = False
        log.info("assigned", partitions=len(self._partitions), stored=len(stored))

    def _discover(self) -> list[tuple[str, int]]:
        assert self._consumer is not None
        meta = self._consumer.list_topics(timeout=10)
        out: list[tuple[str, int]] = []
        missing: list[str] = []
        for topic in sorted(self._specs):
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                missing.append(topic)
            else:
                out.extend((topic, p) for p in sorted(tmeta.partitions))
        if missing:
            raise ConfigError(
                f"topics missing: {', '.join(missing)}; run `ops-pipeline topics create`"
            )
        return out

    def _refresh_partitions(self) -> None:
        try:
            found = self._discover()
        except (ConfigError, KafkaException) as exc:
            log.warning("topic metadata refresh failed", error=str(exc))
            return
        if found != self._partitions:
            log.info("partitions changed; reassigning", before=len(self._partitions), after=len(found))
            self._partitions = found
            self._reposition = True

    def _kafka_error(self, err: KafkaError) -> None:
        if err.fatal():
            raise SinkError(f"Kafka consumer failed: {err}")
        self.metrics.errors.labels(STAGE, "KafkaError").inc()
        log.warning("Kafka consumer error", error=str(err))

    # -- helpers ----------------------------------------------------------------------------
    def _librdkafka_stats(self) -> dict[str, Any]:
        return self.metrics.librdkafka_stats(STAGE, self.config.stats_interval_ms)

    def _retrying(self, stop: threading.Event, what: str, fn: Callable[[], T]) -> T:
        # the first retry waits up to backoff_initial_s, each next one up to twice the last
        backoff = Backoff(floor=self.config.backoff_initial_s / 2, cap=self.config.backoff_max_s)
        while True:
            try:
                return fn()
            except _TRANSIENT as exc:
                self.metrics.errors.labels(STAGE, type(exc).__name__).inc()
                delay = backoff.next()
                log.warning(f"{what} failed; retrying", error=str(exc), retry_in_s=round(delay, 2))
                if stop.wait(delay):
                    raise _Stopping from exc


def run(settings: Settings, endpoints: Endpoints, stop: threading.Event) -> None:
    """The `sink` stage (see pipeline.stages)."""
    PostgresSink(settings, endpoints).run(stop)
