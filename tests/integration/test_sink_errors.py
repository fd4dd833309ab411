"""The sink with bad input and bad configuration: poison records, missing tables or topics, a
malformed URL, and the least-privilege role of db/roles.sql."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from db import migrate
from opsinfra.endpoints import Endpoints
from opsinfra.errors import ConfigError
from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.topic_io import RecordProducer, read_records
from schemas.topics import EXECUTIONS, FEATURES, NEWS_SCORED
from sinks.postgres import PostgresSink
from tests.integration.test_sink import (
    assert_tables_match,
    bar,
    execution,
    feat,
    produce,
    running_sink,
    scored,
    wait_drained,
    workload,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_poison_records_go_to_the_dlq_and_the_sink_moves_on(
    provisioned: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    codec = HeaderCodec()
    topic = provisioned.topic(FEATURES.name)
    headers = [("ops.schema", b"ops.pipeline.Features"), ("ops.schema.version", b"1")]
    good = [feat("AAPL", m) for m in range(40)]
    produced: Counter[str] = Counter()
    with RecordProducer(provisioned, kafka_bootstrap, codec) as producer:
        for i, record in enumerate(good):
            producer.send(FEATURES, record)
            if i == 10:  # undecodable bytes
                producer.send_raw(topic, b"AAPL", b"not avro at all", headers)
            if i == 20:  # a record of another schema on this topic
                value, bar_headers = codec.encode(topic, bar("AAPL", 1))
                producer.send_raw(topic, b"AAPL", value, bar_headers)
            if i == 30:  # decodable, but the table refuses it: volume_ratio is NUMERIC(10,4)
                producer.send(FEATURES, replace(feat("AAPL", 999), volume_ratio=1e9))
        producer.send(FEATURES, feat("NUL\x00", 1))  # PostgreSQL text cannot hold NUL
        producer.send(NEWS_SCORED, replace(scored(1, "AAPL"), label="great"))
        producer.send(NEWS_SCORED, scored(2, "AAPL"))
        producer.send(EXECUTIONS, execution(5, "a", "PROCESSING"))  # no such status
        producer.send(EXECUTIONS, execution(6, "a", "SIMULATED"))
    produced.update({topic: len(good) + 4, provisioned.topic(NEWS_SCORED.name): 2,
                     provisioned.topic(EXECUTIONS.name): 2})
    with running_sink(provisioned, kafka_bootstrap, database_url) as sink:
        wait_drained(database_url, produced, running=sink)
        assert sink.stats.dead_letters == 6
    with psycopg.connect(database_url) as conn:
        dead = conn.execute(
            'SELECT topic, "partition", "offset", error_type, error, message_key, payload '
            "FROM dead_letters ORDER BY topic, error_type, error"
        ).fetchall()
        assert [(d[0].removeprefix(provisioned.pipeline_topic_prefix), d[3]) for d in dead] == [
            ("executions", "InvalidRecord"),
            ("features.1m", "CharacterNotInRepertoire"),
            ("features.1m", "DecodeError"),
            ("features.1m", "DecodeError"),
            ("features.1m", "NumericValueOutOfRange"),
            ("news.scored", "InvalidRecord"),
        ]
        assert "PROCESSING" in dead[0][4] and "great" in dead[5][4]
        assert any(d[6] == b"not avro at all" for d in dead)
        assert any("ops.pipeline.Bar where ops.pipeline.Features expected" in d[4] for d in dead)
        assert conn.execute("SELECT count(*) FROM lane_features").fetchone() == (len(good),)
        assert conn.execute("SELECT count(*) FROM inbound_events_classified").fetchone() == (1,)
        assert conn.execute("SELECT status FROM dispatch_executions").fetchall() == [("SIMULATED",)]
        origins = {(d[0], d[1], d[2]) for d in dead}
    letters = []
    for spec in (FEATURES, NEWS_SCORED, EXECUTIONS):
        letters += [r for _, r in read_records(provisioned, kafka_bootstrap, codec, spec.dlq, quiet_s=0.3)]
    assert {(d.topic, d.partition, d.offset) for d in letters} == origins  # type: ignore[union-attr]
    assert all(d.stage == "sink" and d.error for d in letters)  # type: ignore[union-attr]


def test_missing_tables_is_a_configuration_error(settings: Settings, kafka_bootstrap: str,
                                                 database_url: str) -> None:
    sink = PostgresSink(settings, Endpoints(kafka_bootstrap, database_url, None, False))
    with pytest.raises(ConfigError, match="ops-pipeline migrate"):
        sink.run(threading.Event())


def test_missing_topics_is_a_configuration_error(settings: Settings, kafka_bootstrap: str,
                                                 database_url: str) -> None:
    migrate.apply(database_url)
    sink = PostgresSink(settings, Endpoints(kafka_bootstrap, database_url, None, False))
    with pytest.raises(ConfigError, match="ops-pipeline topics create"):
        sink.run(threading.Event())


def test_a_malformed_database_url_is_a_configuration_error(settings: Settings, kafka_bootstrap: str) -> None:
    sink = PostgresSink(settings, Endpoints(kafka_bootstrap, "postgresql://h/db?nosuchoption=1", None, False))
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        sink.run(threading.Event())


def test_the_cli_exits_2_with_a_message_on_a_configuration_error(
    settings: Settings, kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, DATABASE_URL=database_url,
               PIPELINE_TOPIC_PREFIX=settings.pipeline_topic_prefix, PIPELINE_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--only", "sink"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ops-pipeline migrate" in proc.stdout + proc.stderr


def test_the_sink_needs_only_the_privileges_of_db_roles_sql(
    provisioned: Settings, kafka_bootstrap: str, database_url: str, pg_server_url: str
) -> None:
    role = f"sink_test_{uuid.uuid4().hex[:8]}"
    script = (ROOT / "db" / "roles.sql").read_text().replace("ops_pipeline_sink", role)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(script.encode())  # type: ignore[call-overload]
    try:
        url = make_conninfo(database_url, user=role, password="change-me")
        sent = workload(0, 15)
        produced = produce(provisioned, kafka_bootstrap, sent)
        with running_sink(provisioned, kafka_bootstrap, url):
            wait_drained(database_url, produced)
        with psycopg.connect(database_url) as conn:
            assert_tables_match(conn, sent)
            conn.execute(sql.SQL("REVOKE UPDATE ON sink_offsets FROM {}").format(sql.Identifier(role)))
            conn.commit()
        sink = PostgresSink(provisioned, Endpoints(kafka_bootstrap, url, None, False))
        with pytest.raises(ConfigError, match="sink_offsets: UPDATE"):
            sink.run(threading.Event())
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            for stmt in ("DROP OWNED BY {}", "DROP ROLE {}"):
                conn.execute(sql.SQL(stmt).format(sql.Identifier(role)))
