"""Credentials: from the file when configured (read again on demand), else the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from connectors.credentials import CredentialSource, CredentialsUnavailable
from opsinfra.settings import Settings


def write(path: Path, key: str, secret: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"# rotated\nAPCA_API_KEY_ID={key}\nAPCA_API_SECRET_KEY='{secret}'\n", "utf-8")
    os.replace(tmp, path)


def test_the_file_is_read_again_on_every_load(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.env"
    write(path, "OLDKEY", "OLDSECRET")
    source = CredentialSource(file=path, key_id=SecretStr("ENVKEY"), secret_key=SecretStr("ENVSECRET"))
    first = source.load()
    write(path, "NEWKEY", "NEWSECRET")
    second = source.load(reason="authentication failed")
    assert first.key_id.get_secret_value() == "OLDKEY"
    assert (second.key_id.get_secret_value(), second.secret_key.get_secret_value()) == ("NEWKEY", "NEWSECRET")
    assert second.source.startswith(f"file {path}")


def test_the_environment_is_used_without_a_file() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        apca_api_key_id=SecretStr("ENVKEY"),
        apca_api_secret_key=SecretStr("ENVSECRET"),
    )
    creds = CredentialSource.from_settings(settings).load()
    assert creds.key_id.get_secret_value() == "ENVKEY"
    assert creds.source.startswith("environment")


@pytest.mark.parametrize("content", [None, "APCA_API_KEY_ID=ONLYKEY\n", ""])
def test_a_missing_or_incomplete_file_is_unavailable(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "alpaca.env"
    if content is not None:
        path.write_text(content, "utf-8")
    with pytest.raises(CredentialsUnavailable) as err:
        CredentialSource(file=path, key_id=None, secret_key=None).load()
    assert "ONLYKEY" not in str(err.value)


def test_no_credentials_at_all_is_a_config_error() -> None:
    with pytest.raises(CredentialsUnavailable, match="APCA_API_KEY_ID"):
        CredentialSource(file=None, key_id=None, secret_key=None).load()


def test_logs_and_reprs_name_the_source_never_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.env"
    write(path, "KEY-VISIBLE-NOWHERE", "SECRET-VISIBLE-NOWHERE")
    source = CredentialSource(file=path, key_id=None, secret_key=None)
    with capture_logs() as logs:
        creds = source.load(reason="authentication failed")
    text = repr(logs) + repr(creds) + str(creds) + repr(source)
    assert "VISIBLE-NOWHERE" not in text
    assert logs[0]["source"].startswith(f"file {path}") and logs[0]["reason"] == "authentication failed"
