"""The one place that turns settings into Kafka client configuration, for librdkafka and for
faust/aiokafka alike: PLAINTEXT, SSL, SASL PLAIN/SCRAM and AWS MSK IAM.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

from opsinfra.errors import ConfigError
from opsinfra.settings import Settings

# librdkafka's defaults are tuned for long-lived services; 6 s keeps group joins quick on every
# broker we target (Redpanda's and Kafka's minimum session timeout is 6 s).
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1500


def msk_token(region: str) -> tuple[str, float]:
    """A fresh MSK IAM auth token and its expiry in seconds since the epoch."""
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ConfigError("AWS_MSK_IAM needs the msk extra: pip install 'ops-pipeline[msk]'") from exc
    token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
    return token, expiry_ms / 1000.0


def msk_oauth_cb(region: str) -> Callable[[str | None], tuple[str, float]]:
    """librdkafka's `oauth_cb`: called with the sasl.oauthbearer.config string, and again
    before every token expiry, so librdkafka connections re-authenticate by themselves."""

    def oauth_cb(_config: str | None) -> tuple[str, float]:
        return msk_token(region)

    return oauth_cb


class MSKTokenProvider:
    """aiokafka's token provider for MSK IAM, reusing a token until a minute before expiry.

    aiokafka does not re-authenticate a SASL session, so when the session expires the broker
    cuts the connection and aiokafka reconnects, calling `token()` again.
    """

    def __init__(self, region: str, clock: Callable[[], float] = time.time) -> None:
        self.region = region
        self._clock = clock
        self._token: str | None = None
        self._expiry = 0.0

    async def token(self) -> str:
        if self._token is None or self._clock() > self._expiry - 60:
            self._token, self._expiry = msk_token(self.region)
        return self._token

    def extensions(self) -> dict[str, str]:
        return {}

    def __repr__(self) -> str:
        return f"MSKTokenProvider(region={self.region!r})"


def _security(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {"security.protocol": settings.kafka_security_protocol}
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    mech = settings.kafka_sasl_mechanism
    if mech is None:
        return conf
    if mech == "AWS_MSK_IAM":
        assert settings.aws_region  # checked by Settings
        conf["security.protocol"] = "SASL_SSL"
        conf["sasl.mechanism"] = "OAUTHBEARER"
        conf["oauth_cb"] = msk_oauth_cb(settings.aws_region)
        return conf
    conf["sasl.mechanism"] = mech
    if mech == "OAUTHBEARER":
        return conf  # librdkafka's own OIDC settings come through the environment
    assert settings.kafka_sasl_password is not None
    conf["sasl.username"] = settings.kafka_sasl_username
    conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    return conf


def common_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Connection settings shared by every confluent-kafka client."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": settings.kafka_client_id,
        # librdkafka's own stderr lines from notice up (warnings, errors); its informational ones
        # (a closed idle connection, a purged queue at exit) read like failures on a CLI
        "log_level": 5,
        **_security(settings),
    }


def producer_config(settings: Settings, bootstrap: str, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all: a retried send never duplicates or reorders within a partition."""
    conf = common_config(settings, bootstrap)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "partitioner": "murmur2_random",  # Java-client compatible: faust agrees on partitions
        }
    )
    conf.update(overrides)
    return conf


def consumer_config(settings: Settings, bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Manual commits, earliest reset: stages commit only after their output is durable."""
    conf = common_config(settings, bootstrap)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            "isolation.level": "read_committed",
        }
    )
    conf.update(overrides)
    return conf


def admin_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    return common_config(settings, bootstrap)


def faust_broker_url(bootstrap: str) -> str:
    """faust's broker URL; always the aiokafka (`kafka://`) transport, never `confluent://`."""
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def faust_credentials(settings: Settings) -> Any:
    """faust's `broker_credentials` for the configured security, or None for PLAINTEXT."""
    import faust

    proto = settings.kafka_security_protocol
    mech = settings.kafka_sasl_mechanism
    ctx: ssl.SSLContext | None = None
    if proto in ("SSL", "SASL_SSL") or mech == "AWS_MSK_IAM":
        ctx = ssl.create_default_context(cafile=settings.kafka_ssl_ca_location)
    if mech == "AWS_MSK_IAM":
        assert settings.aws_region
        return faust.OAuthCredentials(oauth_cb=MSKTokenProvider(settings.aws_region), ssl_context=ctx)
    if mech in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        assert settings.kafka_sasl_password is not None
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=mech,
            ssl_context=ctx,
        )
    if mech == "OAUTHBEARER":
        raise ConfigError("generic OAUTHBEARER is supported for confluent-kafka clients only")
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None
