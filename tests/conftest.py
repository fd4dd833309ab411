"""Test fixtures: a real Kafka-protocol broker and a real PostgreSQL, never a fake.

Broker: KAFKA_BOOTSTRAP_SERVERS if set; else Redpanda in a container if a Docker engine answers;
else the embedded Tansu, started once per session. PostgreSQL: DATABASE_URL if set; else a
container; else a server on 127.0.0.1:5432 if one answers; else embedded PostgreSQL. Each test
gets its own topic prefix, consumer-group prefix and database schema. pytest's header names the
backends that run. Fixture settings use header framing; registry framing is tested against the
in-process `mock://` registry, and those tests say so in their names.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from opsinfra.settings import Settings, redact_url
from schemas.topic_io import RecordProducer
from schemas.topics import ALL_TOPICS

REDPANDA_IMAGE = "docker.redpanda.com/redpandadata/redpanda:v24.2.18"
POSTGRES_IMAGE = "postgres:16-alpine"
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@functools.cache
def _docker_answers() -> bool:
    if os.environ.get("OPS_TEST_NO_DOCKER"):
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
    except Exception:  # any failure means "no usable engine": fall through to the next option
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _local_pg_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            pass
        with psycopg.connect(LOCAL_PG, connect_timeout=3):
            return True
    except (OSError, psycopg.Error):
        return False


def _broker_backend() -> str:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        return f"{configured} (KAFKA_BOOTSTRAP_SERVERS)"
    return f"Redpanda container {REDPANDA_IMAGE}" if _docker_answers() else "embedded Tansu"


def _postgres_backend() -> str:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return f"{redact_url(configured)} (DATABASE_URL)"
    if _docker_answers():
        return f"container {POSTGRES_IMAGE}"
    return f"local server {LOCAL_PG}" if _local_pg_answers() else "embedded PostgreSQL"


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"broker: {_broker_backend()}",
        f"PostgreSQL: {_postgres_backend()}",
        "schema registry: none in the fixtures (header framing); registry framing runs against the "
        "in-process mock:// registry (tests named *mock_registry*)",
    ]


_FAUST_DATADIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """faust apps made in-process keep an (empty) `<app id>-data` folder under the working
    directory, the repository; this run's go to a temporary folder instead (unless APP_DATADIR
    is set), and the stage processes the tests start inherit it."""
    if "APP_DATADIR" not in os.environ:
        base = tempfile.mkdtemp(prefix="ops-pipeline-test-faust-")
        config.stash[_FAUST_DATADIR] = base
        os.environ["APP_DATADIR"] = os.path.join(base, "{conf.name}-data")


def pytest_unconfigure(config: pytest.Config) -> None:
    base = config.stash.get(_FAUST_DATADIR, None)
    if base is not None:
        os.environ.pop("APP_DATADIR", None)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.community.kafka import RedpandaContainer

        with RedpandaContainer(REDPANDA_IMAGE) as redpanda:
            yield redpanda.get_bootstrap_server()
        return
    from opsinfra.embedded import TansuBroker

    broker = TansuBroker(tmp_path_factory.mktemp("tansu"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as pg:
            yield pg.get_connection_url()
        return
    if _local_pg_answers():
        yield LOCAL_PG
        return
    from opsinfra.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _unique(request: pytest.FixtureRequest) -> str:
    name = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:24]
    return f"{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pg_schema(pg_server_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    schema = f"t_{_unique(request)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def database_url(pg_server_url: str, pg_schema: str) -> str:
    """A connection string whose search_path is this test's own schema."""
    return with_search_path(pg_server_url, pg_schema)


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    return f"{_unique(request)}."


@pytest.fixture
def group_prefix(topic_prefix: str) -> str:
    return f"g.{topic_prefix}"


def make_settings(bootstrap: str, database_url: str, prefix: str, data_dir: Path) -> Settings:
    """Settings for a test: these endpoints and prefix, no .env file, header framing."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_bootstrap_servers=bootstrap,
        database_url=database_url,
        pipeline_topic_prefix=prefix,
        pipeline_data_dir=data_dir,
        schema_registry_url=None,
    )


@pytest.fixture
def settings(kafka_bootstrap: str, database_url: str, topic_prefix: str, tmp_path: Path) -> Settings:
    return make_settings(kafka_bootstrap, database_url, topic_prefix, tmp_path / "data")


@pytest.fixture
def provisioned(settings: Settings, kafka_bootstrap: str, database_url: str) -> Settings:
    """The contract topics exist under this test's prefix and its schema is migrated."""
    from confluent_kafka.admin import AdminClient

    from db import migrate
    from opsinfra.kafka_admin import create_topics
    from opsinfra.kafka_config import admin_config

    admin = AdminClient(admin_config(settings, kafka_bootstrap))
    create_topics(admin, ALL_TOPICS, prefix=settings.pipeline_topic_prefix)
    migrate.apply(database_url)
    return settings


@pytest.fixture
def produce(provisioned: Settings, kafka_bootstrap: str) -> Iterator[RecordProducer]:
    """A producer of contract records (header framing) to this test's provisioned topics."""
    from schemas.codec import HeaderCodec

    with RecordProducer(provisioned, kafka_bootstrap, HeaderCodec()) as producer:
        yield producer
