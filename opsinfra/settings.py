"""One frozen settings object, built once at the edge from the environment (and `.env`), under the
ecosystem's own names (KAFKA_*, APCA_*, DATABASE_URL, ...); secrets are SecretStr, never logged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from opsinfra.errors import ConfigError

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "TSLA", "GOOGL", "AMZN", "META", "NVDA")

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "AWS_MSK_IAM"]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and status output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_database_url(url: str) -> None:
    """ValueError, never quoting the URL (it holds a password), when libpq would misread it."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("DATABASE_URL must start with postgresql://")
        if parts.netloc.count("@") > 1:
            raise ValueError("DATABASE_URL has more than one '@' before the host "
                             "(write an '@' of the user or password as %40)")
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except ProgrammingError as exc:  # libpq quotes pieces of the string, which may be the password
        detail = re.sub(r'"([^"]*)"', lambda m: '"…"' if m.group(1) in url else m.group(0),
                        str(exc).splitlines()[0])
        raise ValueError(f"DATABASE_URL does not parse: {detail}") from None


class Settings(BaseSettings):
    """Everything configurable. Build with `Settings()` in `main` and pass it down."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    # Kafka: unset bootstrap servers means "the embedded broker `ops-pipeline up` started".
    kafka_bootstrap_servers: str | None = None
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_client_id: str = "ops-pipeline"
    aws_region: str | None = None  # AWS MSK IAM signs tokens for this region
    schema_registry_url: str | None = None
    schema_registry_basic_auth_user_info: SecretStr | None = None

    # PostgreSQL: unset means "the embedded PostgreSQL `ops-pipeline up` started".
    database_url: SecretStr | None = None

    # Alpaca
    apca_api_key_id: SecretStr | None = None
    apca_api_secret_key: SecretStr | None = None
    alpaca_credentials_file: Path | None = None
    alpaca_feed: Literal["iex", "sip"] = "iex"
    alpaca_stream_url: str | None = None
    alpaca_data_url: str | None = None

    # Trading
    pipeline_accounts: str | None = None  # inline JSON, or a .json/.toml path; default large-100k + tiny-1k
    pipeline_clock: Literal["wall", "bar"] = "wall"  # "bar" in a replay: decisions at the bar's end
    pipeline_close_allowance_s: float = 5.0  # wall clock: a minute waits this long for late bars
    alpaca_trading_url: str | None = None  # trading REST override (paper endpoint by default)
    alpaca_trading_stream_url: str | None = None  # trade_updates websocket override
    strategy_version: str | None = None
    sentiment_half_life_minutes: float | None = Field(default=None, gt=0)
    sentiment_window_minutes: float | None = Field(default=None, gt=0)
    signals_require_watchlist: bool | None = None
    watchlist_top_n: int | None = Field(default=None, gt=0)

    # The pipeline
    pipeline_symbols: Annotated[tuple[str, ...], NoDecode] = DEFAULT_SYMBOLS
    pipeline_data_dir: Path = Path(".ops-pipeline")
    pipeline_topic_prefix: str = ""
    rss_feeds: Annotated[tuple[str, ...], NoDecode] = ()
    rss_poll_seconds: float = Field(default=60.0, gt=0)
    sentiment_model: str = "ProsusAI/finbert"
    rss_max_bytes: int = Field(default=5 * 1024 * 1024, gt=0)  # decoded body cap per fetch
    rss_timeout_seconds: float = Field(default=20.0, gt=0)  # total deadline per fetch
    classifier_batch_size: int = Field(default=16, gt=0)
    torch_num_threads: int | None = Field(default=1, ge=0)  # 0 = torch's default
    # the features agent's engine snapshots (state.features): seconds of processing between two
    # per partition; 0 = none written and none read (every start replays the retained bars)
    features_snapshot_seconds: float = Field(default=300.0, ge=0)
    # the watchlist agent's builder snapshots (state.watchlist), likewise; 0 = a full rebuild at start
    watchlist_snapshot_seconds: float = Field(default=300.0, ge=0)

    # Notifications of alerts (connectors/notify.py): each receiver optional; URLs holding tokens
    # are secrets too
    alert_webhook_url: SecretStr | None = None  # generic JSON webhook (Alertmanager's payload shape)
    slack_webhook_url: SecretStr | None = None  # Slack incoming webhook
    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: str | None = None
    telegram_api_url: str = "https://api.telegram.org"  # override for tests and proxies
    discord_webhook_url: SecretStr | None = None
    smtp_url: SecretStr | None = None  # smtp://user:pass@host:port (STARTTLS) or smtps://
    alert_email_to: str | None = None  # comma-separated addresses
    alert_email_from: str | None = None
    alert_repeat_interval_s: float = Field(default=3600.0, gt=0)  # a firing alert is not repeated sooner
    alert_group_wait_s: float = Field(default=10.0, ge=0)  # alerts this close together: one message
    notify_trades: bool = False  # entries, fills, exits and the daily summary too

    metrics_port: int | None = None  # /metrics and /healthz; `run` with several stages uses port+i
    metrics_host: str = "127.0.0.1"

    log_level: str = "INFO"
    log_json: bool = False

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Settings(), with a ConfigError naming each bad variable (never its value) instead of
        pydantic's report, which quotes the input."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            problems = []
            for err in exc.errors(include_url=False, include_input=False, include_context=False):
                name = ".".join(str(part) for part in err["loc"]).upper()
                msg = err["msg"].removeprefix("Value error, ")
                problems.append(f"{name}: {msg}" if name and not msg.startswith(name) else msg)
            raise ConfigError("; ".join(problems), hint="fix it in the environment or .env") from exc

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds (and a URL's password alone), for scrubbing text."""
        out: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                text = value.get_secret_value()
                out.append(text)
                password = urlsplit(text).password if "://" in text else None
                if password:
                    out += [password, unquote(password)]
        return out

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value():
            check_database_url(value.get_secret_value())
        return value

    @field_validator("pipeline_symbols", mode="before")
    @classmethod
    def _symbols(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list | tuple):
            return tuple(str(s).upper() for s in value)
        return value

    @field_validator("rss_feeds", mode="before")
    @classmethod
    def _feeds(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list | tuple):
            for url in value:
                if urlsplit(str(url)).scheme not in ("http", "https"):
                    raise ValueError(f"RSS_FEEDS accepts only http(s) URLs, got {url!r}")
            return tuple(str(u) for u in value)
        return value

    @field_validator("pipeline_topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not all(c.isalnum() or c in "._-" for c in value):
            raise ValueError("PIPELINE_TOPIC_PREFIX may hold only letters, digits, '.', '_', '-'")
        return value

    @model_validator(mode="after")
    def _sasl(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and self.kafka_sasl_mechanism is None:
            raise ValueError("KAFKA_SASL_MECHANISM is required with a SASL_* security protocol")
        mech = self.kafka_sasl_mechanism
        if mech in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and (
            self.kafka_sasl_username is None or self.kafka_sasl_password is None
        ):
            raise ValueError(f"{mech} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        if mech == "AWS_MSK_IAM" and not self.aws_region:
            raise ValueError("AWS_MSK_IAM needs AWS_REGION")
        return self

    def topic(self, name: str) -> str:
        """The physical topic name of a contract topic under the configured prefix."""
        return f"{self.pipeline_topic_prefix}{name}"
