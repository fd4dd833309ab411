"""Where the broker, the database and the registry are: configured addresses win, else the embedded
services `ops-pipeline up` started, else a ConfigError that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from opsinfra.embedded import EmbeddedState
from opsinfra.errors import ConfigError
from opsinfra.settings import Settings, redact_url


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap_servers: str
    database_url: str
    schema_registry_url: str | None
    embedded: bool

    def __repr__(self) -> str:
        return (
            f"Endpoints(kafka={self.kafka_bootstrap_servers!r}, "
            f"database={redact_url(self.database_url)!r}, registry={self.schema_registry_url!r})"
        )


def resolve(settings: Settings, *, need_db: bool = True, need_kafka: bool = True) -> Endpoints:
    kafka = settings.kafka_bootstrap_servers
    db = settings.database_url.get_secret_value() if settings.database_url else None
    state = None
    if kafka is None or db is None:
        state = EmbeddedState.read(settings.pipeline_data_dir)
    if kafka is None and state is not None:
        kafka = state.kafka_bootstrap_servers
    if db is None and state is not None:
        db = state.database_url
    hint = (
        f"set {{}} or start the embedded services with `ops-pipeline up` "
        f"(data dir {settings.pipeline_data_dir})"
    )
    if kafka is None and need_kafka:
        raise ConfigError("no Kafka broker: " + hint.format("KAFKA_BOOTSTRAP_SERVERS"))
    if db is None and need_db:
        raise ConfigError("no PostgreSQL: " + hint.format("DATABASE_URL"))
    return Endpoints(
        kafka_bootstrap_servers=kafka or "",
        database_url=db or "",
        schema_registry_url=settings.schema_registry_url,
        embedded=state is not None,
    )
