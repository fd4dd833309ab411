"""The sink's side of PostgreSQL: one transaction per batch holding the rows, the dead letters and the
next offsets, so a crash loses or doubles nothing; errors sorted by class (poison, config, transient).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

from opsinfra.errors import ConfigError, DecodeError, PipelineError, SinkError
from schemas.dead_letters import dead_letter
from schemas.records import DeadLetter
from sinks.tables import SINK_TABLES, TABLES, Row, TableSpec

log = structlog.get_logger(__name__)

# A row that breaks a constraint or cannot be represented: it goes to the DLQ, the batch goes on.
POISON = (psycopg.DataError, psycopg.IntegrityError, OverflowError)
# The schema is not what the sink was built for, or its role lacks a privilege: retrying won't help.
_CONFIG = (
    errors.UndefinedTable,
    errors.UndefinedColumn,
    errors.InvalidSchemaName,
    errors.InsufficientPrivilege,
    errors.UndefinedObject,
)
_TCP_DEFAULTS = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                 "keepalives_count": 3, "tcp_user_timeout": 60_000}
_MIGRATE_HINT = "run `ops-pipeline migrate` against this database"


class DatabaseUnavailable(PipelineError):
    """PostgreSQL is down, restarting, or dropped the connection: retry after a backoff."""


@dataclass
class Batch:
    """Decoded rows per table, dead letters, and the next offset of every partition read."""

    rows: dict[str, list[Row]] = field(default_factory=dict)  # by TableSpec.slot
    msgs: dict[str, list[Any]] = field(default_factory=dict)  # the message behind each row
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)  # records read per topic


@dataclass(frozen=True)
class WriteReport:
    rows: int
    dead: list[DeadLetter]


def letter(msg: Any, exc: BaseException, stage: str) -> DeadLetter:
    """A DeadLetter for a confluent-kafka message (or anything with the same accessors)."""
    return dead_letter(
        msg.topic(),
        stage=stage,
        error=exc.reason if isinstance(exc, DecodeError) else str(exc),  # origin has its fields
        error_type=type(exc).__name__,
        key=msg.key(),
        value=msg.value(),
        headers=msg.headers(),
        partition=msg.partition(),
        offset=msg.offset(),
    )


def _text(value: str) -> str:
    return value.replace("\x00", "\\x00")  # PostgreSQL text and jsonb refuse NUL


class Store:
    """Owns one connection; not thread-safe: the sink calls it from its writer thread only."""

    def __init__(
        self,
        url: str,
        *,
        sink: str,
        application_name: str,
        connect_timeout: float = 5.0,
        publish: Callable[[list[DeadLetter]], None] | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.sink = sink
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.publish = publish  # sends the dead letters it finds to the .dlq topics, or raises
        self.on_reconnect = on_reconnect  # called on every connection after the first (metrics)
        self._connects = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._pending: tuple[Batch, contextlib.ExitStack, BaseException | None] | None = None

    # -- connection -------------------------------------------------------------------------
    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            # a dead peer must surface as an error, not as a sink waiting forever on a socket;
            # anything the URL sets itself wins
            params: dict[str, Any] = {**_TCP_DEFAULTS, "connect_timeout": max(2, round(self.connect_timeout)),
                      "application_name": self.application_name}
            given = conninfo_to_dict(self.url)
            conn = psycopg.connect(
                self.url, autocommit=True, **{k: v for k, v in params.items() if k not in given}
            )
        except psycopg.ProgrammingError as exc:  # the conninfo itself does not parse
            raise ConfigError(f"DATABASE_URL is not a valid connection string: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            self._check(conn)
            for spec in TABLES:
                conn.execute(spec.create_stage_sql())
        except psycopg.Error as exc:
            conn.close()
            raise self._classify(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._connects += 1
        if self._connects > 1 and self.on_reconnect is not None:
            self.on_reconnect()
        return conn

    def close(self) -> None:
        self._pending = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The tables exist and this role may use them (the sink never creates or alters them)."""
        try:
            rows = conn.execute(
                "SELECT t, to_regclass(t) IS NOT NULL FROM unnest(%s::text[]) AS t", (list(SINK_TABLES),)
            ).fetchall()
            missing = [t for t, present in rows if not present]
            if missing:
                raise ConfigError(f"tables missing: {', '.join(missing)}; {_MIGRATE_HINT}")
            lacking = conn.execute(
                "SELECT t || ': ' || p FROM unnest(%s::text[]) AS t, "
                "unnest(ARRAY['SELECT', 'INSERT', 'UPDATE']) AS p "
                "WHERE NOT has_table_privilege(t, p) "
                "UNION ALL SELECT 'database: TEMPORARY' "
                "WHERE NOT has_database_privilege(current_database(), 'TEMPORARY')",
                (list(SINK_TABLES),),
            ).fetchall()
        except psycopg.Error as exc:
            raise self._classify(exc) from exc
        if lacking:
            raise ConfigError(
                "the database role lacks privileges: " + ", ".join(r[0] for r in lacking)
                + " (see db/roles.sql)"
            )

    def _classify(self, exc: BaseException) -> PipelineError:
        """What a failure means for the sink; the connection is dropped unless it is clearly fine."""
        if isinstance(exc, _CONFIG):
            self.close()
            return ConfigError(f"the sink's tables are not usable: {exc}; {_MIGRATE_HINT}")
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.InternalError):
            self.close()
            return DatabaseUnavailable(f"PostgreSQL: {exc}")
        if isinstance(exc, PipelineError):
            return exc
        self.close()
        return SinkError(f"unexpected database error: {exc!r}")

    # -- reads ------------------------------------------------------------------------------
    def load_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The next offset to read per (topic, partition) this sink has written; absent: none."""
        wanted = set(partitions)
        conn = self.connection()
        try:
            rows = conn.execute(
                'SELECT topic, "partition", next_offset FROM sink_offsets '
                "WHERE sink = %s AND topic = ANY(%s)",
                (self.sink, sorted({t for t, _ in wanted})),
            ).fetchall()
        except psycopg.Error as exc:
            raise self._classify(exc) from exc
        return {(t, p): o for t, p, o in rows if (t, p) in wanted}

    # -- the batch transaction --------------------------------------------------------------
    # The fast path sends a batch and returns: BEGIN and COPY wait, the upserts, dead letters,
    # offsets and COMMIT go out in pipeline mode, and the sink decodes the next batch while the
    # server works. `receive` collects the outcome; a poison row or two records of one key in
    # the batch roll it back, and `write` does it again carefully.

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def send(self, batch: Batch) -> None:
        """Start writing a batch; `receive` must follow before anything else uses the store."""
        assert self._pending is None
        conn = self.connection()
        stack = contextlib.ExitStack()
        try:
            conn.execute("BEGIN")
            for spec in TABLES:
                rows = batch.rows.get(spec.slot)
                if rows:
                    self._copy(conn, spec, rows)
            stack.enter_context(conn.pipeline())
            for spec in TABLES:
                if batch.rows.get(spec.slot):
                    conn.execute(spec.upsert_sql())
                    for stmt in spec.after_sql():
                        conn.execute(stmt)
            if batch.dead:
                self._insert_dead(conn, batch.dead)
            self._store_offsets(conn, batch.offsets)
            conn.execute("COMMIT")
        except (psycopg.Error, *POISON) as exc:
            self._pending = (batch, stack, exc)
            return
        self._pending = (batch, stack, None)

    def receive(self) -> WriteReport:
        """Wait for the batch `send` started; poison rows become dead letters (and are in the report)."""
        assert self._pending is not None
        batch, stack, failed = self._pending
        self._pending = None
        try:
            stack.close()  # leaving pipeline mode waits for every result and raises the first error
        except (psycopg.Error, *POISON) as exc:
            failed = failed or exc
        if failed is None:
            return WriteReport(sum(len(r) for r in batch.rows.values()), list(batch.dead))
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self.close()
            raise DatabaseUnavailable(f"PostgreSQL connection lost: {failed}") from failed
        if not isinstance(failed, (*POISON, errors.CardinalityViolation)):
            raise self._classify(failed) from failed
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            raise self._classify(exc) from exc
        return self.write(batch)

    def write(self, batch: Batch) -> WriteReport:
        """The careful path, in one transaction: one winner per key, poison rows isolated."""
        conn = self.connection()
        dead = list(batch.dead)
        written = 0
        try:
            with conn.transaction():
                for spec in TABLES:
                    rows = batch.rows.get(spec.slot)
                    if rows:
                        written += self._write_table(conn, spec, rows, batch.msgs[spec.slot], dead)
                if dead:
                    self._insert_dead(conn, dead)
                found = dead[len(batch.dead):]
                if found and self.publish is not None:
                    self.publish(found)  # before COMMIT: at least once on the .dlq topics
                self._store_offsets(conn, batch.offsets)
        except psycopg.Error as exc:
            raise self._classify(exc) from exc
        return WriteReport(written, dead)

    def _write_table(
        self,
        conn: psycopg.Connection[Any],
        spec: TableSpec,
        rows: list[Row],
        msgs: list[Any],
        dead: list[DeadLetter],
    ) -> int:
        """All rows at once; if that fails on a poison row or on two records of one key, the
        careful path: one winner per key, then halves until each poison row stands alone."""
        try:
            with conn.transaction():
                self._upsert(conn, spec, rows)
            return len(rows)
        except errors.CardinalityViolation:
            pass  # ON CONFLICT DO UPDATE met one key twice in this batch
        except POISON as exc:
            if conn.closed or conn.broken:
                raise DatabaseUnavailable(f"PostgreSQL connection lost: {exc}") from exc
        rows, msgs = spec.reduce(rows, msgs)
        return self._bisect(conn, spec, rows, msgs, dead)

    def _bisect(
        self,
        conn: psycopg.Connection[Any],
        spec: TableSpec,
        rows: list[Row],
        msgs: list[Any],
        dead: list[DeadLetter],
    ) -> int:
        try:
            with conn.transaction():
                self._upsert(conn, spec, rows)
                conn.execute(spec.clear_sql())  # more parts of this table follow in this transaction
            return len(rows)
        except POISON as exc:
            if conn.closed or conn.broken:
                raise DatabaseUnavailable(f"PostgreSQL connection lost: {exc}") from exc
            if len(rows) == 1:
                dead.append(letter(msgs[0], exc, "sink"))
                log.warning("row refused by the database; sent to the DLQ", table=spec.table,
                            topic=msgs[0].topic(), partition=msgs[0].partition(),
                            offset=msgs[0].offset(), error=str(exc))
                return 0
            mid = len(rows) // 2
            return self._bisect(conn, spec, rows[:mid], msgs[:mid], dead) + self._bisect(
                conn, spec, rows[mid:], msgs[mid:], dead
            )

    def _upsert(self, conn: psycopg.Connection[Any], spec: TableSpec, rows: list[Row]) -> None:
        self._copy(conn, spec, rows)
        conn.execute(spec.upsert_sql())
        for stmt in spec.after_sql():
            conn.execute(stmt)

    def _copy(self, conn: psycopg.Connection[Any], spec: TableSpec, rows: list[Row]) -> None:
        with conn.cursor().copy(spec.copy_sql()) as copy:
            copy.set_types(spec.stage_types)
            for row in rows:
                copy.write_row(row)

    def _insert_dead(self, conn: psycopg.Connection[Any], dead: Sequence[DeadLetter]) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                'INSERT INTO dead_letters (topic, "partition", "offset", stage, error, error_type, '
                "message_key, payload, headers, failed_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s) "
                'ON CONFLICT (topic, "partition", "offset") DO NOTHING',
                [
                    (
                        d.topic, d.partition, d.offset, d.stage, _text(d.error), d.error_type,
                        d.original_key, d.value,
                        json.dumps({_text(k): _text(v.decode("utf-8", "backslashreplace"))
                                    for k, v in d.headers.items()}),
                        d.failed_at,
                    )
                    for d in dead
                ],
            )

    def _store_offsets(self, conn: psycopg.Connection[Any], offsets: dict[tuple[str, int], int]) -> None:
        if not offsets:
            return
        keys = sorted(offsets)
        conn.execute(
            sql.SQL(
                'INSERT INTO sink_offsets (sink, topic, "partition", next_offset, updated_at) '
                "SELECT %s, t, p, o, now() FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS u(t, p, o) "
                'ON CONFLICT (sink, topic, "partition") '
                "DO UPDATE SET next_offset = excluded.next_offset, updated_at = excluded.updated_at"
            ),
            (self.sink, [t for t, _ in keys], [p for _, p in keys], [offsets[k] for k in keys]),
        )
