"""Settings: environment names, parsing, validation, and that secrets never show."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog
from pydantic import ValidationError

from opsinfra import logs
from opsinfra.endpoints import Endpoints
from opsinfra.settings import DEFAULT_SYMBOLS, Settings, redact_url

SECRETS = {
    "APCA_API_KEY_ID": "PKTESTKEYID123456",
    "APCA_API_SECRET_KEY": "s3cr3t-alpaca-value",
    "KAFKA_SASL_PASSWORD": "kafka-pw-987",
    "DATABASE_URL": "postgresql://ops:db-pw-555@db.internal:5432/ops",
}


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.pipeline_symbols == DEFAULT_SYMBOLS
    assert s.alpaca_feed == "iex"
    assert s.rss_poll_seconds == 60
    assert s.sentiment_model == "ProsusAI/finbert"
    assert s.pipeline_data_dir == Path(".ops-pipeline")
    assert s.kafka_bootstrap_servers is None and s.database_url is None


def test_ecosystem_names_and_csv_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(
        monkeypatch,
        KAFKA_BOOTSTRAP_SERVERS="b1:9092,b2:9092",
        PIPELINE_SYMBOLS="aapl, msft ,TSLA",
        RSS_FEEDS="https://a.example/rss, http://b.example/atom",
        RSS_POLL_SECONDS="15",
        ALPACA_FEED="sip",
        SCHEMA_REGISTRY_URL="http://localhost:18081",
    )
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.kafka_bootstrap_servers == "b1:9092,b2:9092"
    assert s.pipeline_symbols == ("AAPL", "MSFT", "TSLA")
    assert s.rss_feeds == ("https://a.example/rss", "http://b.example/atom")
    assert s.rss_poll_seconds == 15.0
    assert s.alpaca_feed == "sip"
    assert s.schema_registry_url == "http://localhost:18081"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text("PIPELINE_SYMBOLS=NVDA\nAPCA_API_KEY_ID=PKFROMFILE\n")
    s = Settings(_env_file=env)  # type: ignore[call-arg]
    assert s.pipeline_symbols == ("NVDA",)
    assert s.apca_api_key_id is not None and s.apca_api_key_id.get_secret_value() == "PKFROMFILE"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "ftp://x.example/feed"])
def test_rss_feeds_accept_only_http(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    _env(monkeypatch, RSS_FEEDS=url)
    with pytest.raises(ValidationError, match="http"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "env,message",
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}, "USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM"}, "AWS_REGION"),
        ({"PIPELINE_TOPIC_PREFIX": "bad prefix!"}, "PREFIX"),
    ],
)
def test_contradictions_are_rejected(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    _env(monkeypatch, **env)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        s.alpaca_feed = "sip"  # type: ignore[misc]


def test_secrets_never_in_repr_str_or_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(
        monkeypatch,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="svc",
        **SECRETS,
    )
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    rendered = [repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(mode="json"))]
    for text in rendered:
        for secret in ("s3cr3t-alpaca-value", "PKTESTKEYID123456", "kafka-pw-987", "db-pw-555"):
            assert secret not in text
    assert s.apca_api_secret_key is not None
    assert s.apca_api_secret_key.get_secret_value() == "s3cr3t-alpaca-value"


def test_endpoints_repr_redacts_database_password() -> None:
    ep = Endpoints("b:9092", SECRETS["DATABASE_URL"], None, embedded=False)
    assert "db-pw-555" not in repr(ep)
    assert redact_url(SECRETS["DATABASE_URL"]) == "postgresql://ops:***@db.internal:5432/ops"
    assert redact_url("postgresql://postgres@127.0.0.1:5432/x") == "postgresql://postgres@127.0.0.1:5432/x"


def test_logs_redact_secret_keys_and_url_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", json=True)
    try:
        structlog.get_logger("t").info(
            "connecting",
            api_secret_key="s3cr3t-alpaca-value",
            password="kafka-pw-987",
            url=SECRETS["DATABASE_URL"],
            symbol="AAPL",
        )
        out = capsys.readouterr().err
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()  # configure() bound stderr as pytest captured it
    event = json.loads(out.strip().splitlines()[-1])
    assert event["symbol"] == "AAPL"
    assert event["api_secret_key"] == "***" and event["password"] == "***"
    assert "db-pw-555" not in out and "s3cr3t" not in out and "kafka-pw-987" not in out
