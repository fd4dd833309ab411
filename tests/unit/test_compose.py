"""docker-compose.kafka.yml cannot run here (no Docker engine); check it agrees with compose.env."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())


def _host_ports(service: dict) -> dict[int, int]:
    """host port -> container port"""
    out = {}
    for mapping in service.get("ports", []):
        host, container = str(mapping).split(":")[-2:]
        out[int(host)] = int(container)
    return out


def _settings() -> Settings:
    return Settings(_env_file=ROOT / "compose.env")  # type: ignore[call-arg]


def test_services_are_present_and_pinned() -> None:
    services = _compose()["services"]
    assert {"redpanda", "console", "postgres"} <= set(services)
    for svc in services.values():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_kafka_port_matches_bootstrap_and_advertised_listener() -> None:
    s = _settings()
    redpanda = _compose()["services"]["redpanda"]
    host, port = s.kafka_bootstrap_servers.split(":")  # type: ignore[union-attr]
    ports = _host_ports(redpanda)
    assert int(port) in ports
    container_port = ports[int(port)]
    command = " ".join(redpanda["command"])
    assert f"external://0.0.0.0:{container_port}" in command
    assert f"external://{host}:{port}" in command  # what clients are told to reconnect to


def test_schema_registry_port_matches() -> None:
    s = _settings()
    url = urlsplit(s.schema_registry_url or "")
    redpanda = _compose()["services"]["redpanda"]
    container_port = _host_ports(redpanda)[url.port or 0]
    assert f"external://0.0.0.0:{container_port}" in " ".join(redpanda["command"])


def test_postgres_credentials_port_and_database_match() -> None:
    s = _settings()
    assert s.database_url is not None
    url = urlsplit(s.database_url.get_secret_value())
    pg = _compose()["services"]["postgres"]
    assert _host_ports(pg)[url.port or 0] == 5432
    env = pg["environment"]
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )


def test_console_talks_to_the_internal_listener_and_registry() -> None:
    services = _compose()["services"]
    env = services["console"]["environment"]
    command = " ".join(services["redpanda"]["command"])
    assert f"internal://{env['KAFKA_BROKERS']}" in command
    assert env["KAFKA_SCHEMAREGISTRY_URLS"].endswith(":8081")
