"""Provisioning shared by `up`, `demo` and the tests: the contract topics and the migrations."""

from __future__ import annotations

from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient

from db import migrate
from opsinfra.kafka_admin import create_topics
from opsinfra.kafka_config import admin_config
from opsinfra.settings import Settings
from schemas.topics import ALL_TOPICS


def admin_client(settings: Settings, bootstrap: str) -> Any:
    return AdminClient(admin_config(settings, bootstrap))


def provision(
    settings: Settings, bootstrap: str, database_url: str, *, fresh_broker: bool = False
) -> tuple[list[str], list[str]]:
    """Create missing contract topics and apply pending migrations; returns what was done.

    With `fresh_broker` (the embedded broker just started, empty: it keeps data in memory only),
    the sink's stored offsets are cleared: they describe topics that no longer exist, and a sink
    trusting them would skip the new topics' first records.
    """
    created = create_topics(
        admin_client(settings, bootstrap), ALL_TOPICS, prefix=settings.pipeline_topic_prefix
    )
    applied = migrate.apply(database_url)
    if fresh_broker:
        with psycopg.connect(database_url) as conn:
            conn.execute("DELETE FROM sink_offsets")
    return created, [f"{m.version:04d}_{m.name}" for m in applied]
