"""The Kafka client factory: one place, every security mode, both client families."""

from __future__ import annotations

import asyncio
import base64
import time
from urllib.parse import parse_qs, urlparse

import faust
import pytest

from opsinfra import kafka_config as kafka
from opsinfra.settings import Settings


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def test_plaintext_producer_is_idempotent_acks_all() -> None:
    conf = kafka.producer_config(_settings(), "h:9092")
    assert conf["bootstrap.servers"] == "h:9092"
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["security.protocol"] == "PLAINTEXT"
    assert conf["partitioner"] == "murmur2_random"  # agrees with faust/aiokafka and Java clients
    assert "sasl.mechanism" not in conf
    assert kafka.faust_credentials(_settings()) is None


def test_consumer_commits_manually_and_joins_quickly() -> None:
    conf = kafka.consumer_config(_settings(), "h:9092", "g1", **{"auto.offset.reset": "latest"})
    assert conf["group.id"] == "g1" and conf["enable.auto.commit"] is False
    assert conf["session.timeout.ms"] == 6000
    assert conf["auto.offset.reset"] == "latest"  # overrides win


@pytest.mark.parametrize("mech", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_username_password(mech: str) -> None:
    s = _settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mech,
        kafka_sasl_username="svc",
        kafka_sasl_password="pw-123",
    )
    conf = kafka.common_config(s, "h:9096")
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == mech
    assert conf["sasl.username"] == "svc" and conf["sasl.password"] == "pw-123"
    creds = kafka.faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == mech and creds.password == "pw-123"
    assert creds.ssl_context is not None
    assert "pw-123" not in repr(creds)


def test_faust_broker_url_uses_the_aiokafka_transport() -> None:
    assert kafka.faust_broker_url("a:9092, b:9092") == "kafka://a:9092;kafka://b:9092"


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static credentials: the signer presigns locally, no network and no STS call."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIexampleexampleexampleKEY")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _check_token(token: str, region: str) -> None:
    padded = token + "=" * (-len(token) % 4)
    url = urlparse(base64.urlsafe_b64decode(padded).decode())
    assert url.netloc == f"kafka.{region}.amazonaws.com"
    query = parse_qs(url.query)
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert "X-Amz-Signature" in query
    assert "AKIAEXAMPLEEXAMPLE12" in query["X-Amz-Credential"][0]


def test_msk_iam_librdkafka_config_calls_the_token_callback(fake_aws: None) -> None:
    s = _settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="AWS_MSK_IAM", aws_region="eu-west-1"
    )
    conf = kafka.producer_config(s, "b-1.msk.example:9098")
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "OAUTHBEARER"
    token, expiry = conf["oauth_cb"](None)
    _check_token(token, "eu-west-1")
    assert time.time() < expiry <= time.time() + 3600 + 5


def test_msk_iam_faust_token_provider_is_called_and_cached(fake_aws: None) -> None:
    s = _settings(
        kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="AWS_MSK_IAM", aws_region="us-east-1"
    )
    creds = kafka.faust_credentials(s)
    assert isinstance(creds, faust.OAuthCredentials)
    assert creds.ssl_context is not None
    provider = creds.oauth_cb
    first = asyncio.run(provider.token())
    _check_token(first, "us-east-1")
    assert asyncio.run(provider.token()) == first  # reused until a minute before expiry


def test_msk_token_provider_refreshes_near_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_token(region: str) -> tuple[str, float]:
        calls.append(region)
        return f"tok{len(calls)}", 1_900.0

    monkeypatch.setattr(kafka, "msk_token", fake_token)
    now = [1_000.0]
    provider = kafka.MSKTokenProvider("us-east-1", clock=lambda: now[0])
    assert asyncio.run(provider.token()) == "tok1"
    now[0] = 1_800.0  # 100 s before expiry: still valid
    assert asyncio.run(provider.token()) == "tok1"
    now[0] = 1_850.0  # inside the 60 s margin: refreshed
    assert asyncio.run(provider.token()) == "tok2"
    assert calls == ["us-east-1", "us-east-1"]
