"""Rows per second of lane_features-shaped records through the whole Postgres sink (decode, COPY
into a staging table, upsert, offsets) with N records already on the topic; and, in the same run,
of the raw COPY + upsert alone on the same rows, without Kafka or decoding.

Run: python bench/bench_sink.py [--records N]. Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when
set, else an embedded Tansu broker and the PostgreSQL on 127.0.0.1:5432 (or embedded PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
from confluent_kafka.admin import AdminClient
from psycopg import sql

from db import migrate
from opsinfra.endpoints import Endpoints
from opsinfra.kafka_admin import create_topics
from opsinfra.kafka_config import admin_config
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import Features
from schemas.topic_io import RecordProducer
from schemas.topics import ALL_TOPICS, FEATURES
from sinks.postgres import PostgresSink, SinkConfig
from sinks.tables import LANE_FEATURES

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def services(tmp: Path) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not kafka:
            from opsinfra.embedded import TansuBroker

            broker = TansuBroker(tmp)
            broker.start()
            stack.callback(broker.stop)
            kafka = broker.bootstrap
        pg = os.environ.get("DATABASE_URL")
        if not pg:
            try:
                with psycopg.connect(LOCAL_PG, connect_timeout=3):
                    pg = LOCAL_PG
            except psycopg.OperationalError:
                from opsinfra.embedded import EmbeddedPostgres

                server = EmbeddedPostgres(tmp)
                server.start()
                stack.callback(server.stop)
                pg = server.url
        yield kafka, pg


def features(n: int, symbols: int = 50) -> list[Features]:
    t0 = datetime(2025, 1, 2, 14, 30, tzinfo=UTC)
    return [
        Features(f"S{i % symbols:03d}", t0 + timedelta(minutes=i // symbols), 100.0 + i % 7,
                 99.5, 98.25, 1000 + i, 950.5, 1.0526, False, 55.5, 0.12, 0.1, 0.02, 101.0,
                 100.0, 99.0, 60, 0)
        for i in range(n)
    ]


def bench_sink(settings: Settings, endpoints: Endpoints, n: int) -> tuple[float, float]:
    sink = PostgresSink(settings, endpoints, SinkConfig(name="bench"))
    stop = threading.Event()
    started = time.monotonic()
    worker = threading.Thread(target=sink.run, args=(stop,), name="sink")
    worker.start()
    deadline = started + 600
    while sink.stats.committed < n and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join()
    st = sink.stats
    if st.committed < n or st.first_record_at is None or st.last_commit_at is None:
        raise SystemExit(f"sink did not finish: {st}")
    return n / (st.last_commit_at - st.first_record_at), n / (st.last_commit_at - started)


def bench_raw(url: str, records: list[Features], batch: int) -> float:
    """The same COPY into the staging table and upsert the sink issues, plus the offset row."""
    rows = [LANE_FEATURES.build(r.to_avro()) for r in records]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE lane_features, sink_offsets")
        conn.execute(LANE_FEATURES.create_stage_sql())
        upsert = LANE_FEATURES.upsert_sql()
        offsets = sql.SQL(
            'INSERT INTO sink_offsets (sink, topic, "partition", next_offset) '
            "VALUES ('raw', 'features.1m', 0, %s) ON CONFLICT (sink, topic, \"partition\") "
            "DO UPDATE SET next_offset = excluded.next_offset"
        )
        start = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.transaction():
                with conn.cursor().copy(LANE_FEATURES.copy_sql()) as copy:
                    copy.set_types(LANE_FEATURES.stage_types)
                    for row in rows[i : i + batch]:
                        copy.write_row(row)
                conn.execute(upsert)
                conn.execute(offsets, (i + batch,))
        return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    n = args.records
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp, services(Path(tmp)) as (kafka, pg):
        schema = f"bench_sink_{tag}"
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            sep = "&" if "?" in pg else "?"
            url = f"{pg}{sep}options={quote(f'-csearch_path={schema}')}"
            migrate.apply(url)
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                kafka_bootstrap_servers=kafka,
                database_url=url,
                pipeline_topic_prefix=f"bench{tag}.",
            )
            create_topics(AdminClient(admin_config(settings, kafka)), ALL_TOPICS,
                          prefix=settings.pipeline_topic_prefix)
            records = features(n)
            start = time.perf_counter()
            with RecordProducer(settings, kafka, HeaderCodec()) as producer:
                for rec in records:
                    producer.send(FEATURES, rec)
            print(f"produced {n:,} lane_features-shaped records in {time.perf_counter() - start:.1f}s")
            endpoints = Endpoints(kafka, url, None, embedded=False)
            sink_rate, wall_rate = bench_sink(settings, endpoints, n)
            with psycopg.connect(url) as conn:
                count = conn.execute("SELECT count(*) FROM lane_features").fetchone()
            assert count is not None and count[0] == n, f"expected {n} rows, found {count}"
            raw_rate = bench_raw(url, records, SinkConfig().max_records)
        finally:
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    print(f"sink (decode + COPY + upsert + offsets): {sink_rate:,.0f} rows/s "
          f"(first record to last commit; {wall_rate:,.0f} rows/s including start-up)")
    print(f"raw COPY + upsert (same rows, no Kafka, no decode): {raw_rate:,.0f} rows/s")


if __name__ == "__main__":  # pragma: no cover
    main()
