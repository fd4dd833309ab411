"""docker-compose.kafka.yml cannot run here (no Docker engine); check it agrees with compose.env."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

from opsinfra.settings import Settings

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


# -- the pipeline's own services (profile `pipeline`, image from the Dockerfile) --------------------


def _stage_of(service: dict) -> str | None:
    """The NAME in a service's `run --only NAME` command, if it runs one."""
    command = service.get("command")
    if command is None:
        return None
    args = command.split() if isinstance(command, str) else [str(a) for a in command]
    if args and args[0] == "ops-pipeline":
        args = args[1:]
    if len(args) == 3 and args[:2] == ["run", "--only"]:
        return args[2]
    return None


def _stage_services() -> dict[str, dict]:
    return {name: svc for name, svc in _compose()["services"].items() if _stage_of(svc) is not None}


def _internal_addr(command: str, flag: str) -> str:
    """`--flag=internal://HOST:PORT,...` -> HOST:PORT"""
    for part in command.split():
        if part.startswith(f"{flag}="):
            for listener in part.split("=", 1)[1].split(","):
                if listener.startswith("internal://"):
                    return listener.removeprefix("internal://")
    raise AssertionError(f"no internal address in {flag}")


def test_every_stage_has_a_service_running_it() -> None:
    from pipeline.stages import STAGES

    running = {_stage_of(svc) for svc in _stage_services().values()}
    assert set(STAGES) <= running, set(STAGES) - running


def test_no_service_runs_an_unknown_stage() -> None:
    from pipeline.stages import STAGES

    for name, svc in _stage_services().items():
        assert _stage_of(svc) in STAGES, name


def test_stage_services_are_built_from_the_dockerfile_behind_the_pipeline_profile() -> None:
    services = _compose()["services"]
    for name in ("redpanda", "console", "postgres"):
        assert "profiles" not in services[name], f"{name} must start with a plain `up -d`"
    for name, svc in {**_stage_services(), "provision": services["provision"]}.items():
        build = svc["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).resolve() == ROOT / "Dockerfile", name
        assert svc.get("profiles") == ["pipeline"], name


def test_provision_creates_topics_then_migrates_and_stages_wait_for_it() -> None:
    services = _compose()["services"]
    provision = services["provision"]
    command = provision["command"]
    text = command if isinstance(command, str) else " ".join(command)
    assert "ops-pipeline topics create && ops-pipeline migrate" in text
    assert provision.get("entrypoint") in ([], "")  # the image's ENTRYPOINT would prefix `sh`
    for name, svc in _stage_services().items():
        deps = svc["depends_on"]
        assert deps["provision"]["condition"] == "service_completed_successfully", name
        assert deps["redpanda"]["condition"] == "service_healthy", name
        assert deps["postgres"]["condition"] == "service_healthy", name


def test_stage_services_use_the_internal_listener_registry_and_postgres() -> None:
    services = _compose()["services"]
    command = " ".join(services["redpanda"]["command"])
    kafka = _internal_addr(command, "--advertise-kafka-addr")
    registry_port = _internal_addr(command, "--schema-registry-addr").rsplit(":", 1)[1]
    pg_env = services["postgres"]["environment"]
    for name, svc in {**_stage_services(), "provision": services["provision"]}.items():
        env = svc["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == kafka, name
        registry = urlsplit(env["SCHEMA_REGISTRY_URL"])
        assert (registry.hostname, str(registry.port)) == ("redpanda", registry_port), name
        db = urlsplit(env["DATABASE_URL"])
        assert (db.hostname, db.port) == ("postgres", 5432), name
        assert (db.username, db.password, db.path.lstrip("/")) == (
            pg_env["POSTGRES_USER"],
            pg_env["POSTGRES_PASSWORD"],
            pg_env["POSTGRES_DB"],
        ), name
        assert env["LOG_JSON"] == "true" and env["METRICS_PORT"] == "9100", name
        assert env["APCA_API_KEY_ID"] == "${APCA_API_KEY_ID:-}", name
        assert env["APCA_API_SECRET_KEY"] == "${APCA_API_SECRET_KEY:-}", name
        settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items() if "$" not in v})  # type: ignore[call-arg]
        assert settings.kafka_bootstrap_servers == kafka


def _dockerfile_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def test_dockerfile_entrypoint_is_the_cli() -> None:
    import json
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ops-pipeline" in scripts
    entrypoints = [rest for kw, rest in _dockerfile_instructions() if kw == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["ops-pipeline"]


def test_dockerfile_copies_every_package() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = set()
    for kw, rest in _dockerfile_instructions():
        if kw == "COPY":
            args = [a for a in rest.split() if not a.startswith("--")]
            copied.update(a.rstrip("/") for a in args[:-1])
    assert set(packages) <= copied, set(packages) - copied
    for package in packages:
        assert (ROOT / package).is_dir(), package


# -- Prometheus and Alertmanager (deploy/prometheus) -----------------------------------------------


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path of a service's bind mounts (host paths may be ${VAR:-default})."""
    out = {}
    for volume in service.get("volumes", []):
        text = str(volume)
        if text.startswith("${"):
            end = text.index("}") + 1
            host, rest = text[:end], text[end + 1:]
        else:
            host, _, rest = text.partition(":")
        out[rest.split(":")[0]] = host
    return out


def _flag(service: dict, name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in service["command"] if a.startswith(f"--{name}=")]
    return value


def test_prometheus_and_alertmanager_mount_the_deploy_files() -> None:
    services = _compose()["services"]
    prom, am = services["prometheus"], services["alertmanager"]
    for svc in (prom, am):
        assert "pipeline" in svc["profiles"], "they come up with the stages"
    config = _flag(prom, "config.file")
    mounts = _mounts(prom)
    assert (ROOT / mounts[config]).resolve() == ROOT / "deploy/prometheus/prometheus.yml"
    rules = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["rule_files"]
    for rule_file in rules:  # relative to the config file, in the container too
        container = str(Path(config).parent / rule_file)
        assert (ROOT / mounts[container]).resolve() == ROOT / "deploy/prometheus" / rule_file
    am_mounts = _mounts(am)
    am_config = _flag(am, "config.file")
    assert (ROOT / am_mounts[am_config]).resolve() == ROOT / "deploy/prometheus/alertmanager.yml"
    assert "/etc/alertmanager/secrets" in am_mounts  # where alertmanager.yml's *_file secrets live


def test_prometheus_scrapes_every_stage_service_and_alerts_the_alertmanager_service() -> None:
    services = _compose()["services"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ops-pipeline"]
    targets = {t: c["labels"]["stage"] for c in job["static_configs"] for t in c["targets"]}
    expected = {f"{name}:{svc['environment']['METRICS_PORT']}": _stage_of(svc)
                for name, svc in _stage_services().items()}
    assert targets == expected
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    am_port = next(iter(_host_ports(services["alertmanager"]).values()))
    assert alertmanagers["static_configs"][0]["targets"] == [f"alertmanager:{am_port}"]
