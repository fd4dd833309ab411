"""Alpaca keys, read again from their source (ALPACA_CREDENTIALS_FILE) after every authentication
failure, so a key rotation needs no restart; secrets never reach a log line, repr or error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from dotenv import dotenv_values
from pydantic import SecretStr

from opsinfra.errors import ConfigError
from opsinfra.settings import Settings

log = structlog.get_logger(__name__)

KEY_VAR = "APCA_API_KEY_ID"
SECRET_VAR = "APCA_API_SECRET_KEY"  # noqa: S105 - the variable's name, not a secret


class CredentialsUnavailable(ConfigError):
    """No usable key pair at the configured source (missing file, missing lines)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    key_id: SecretStr
    secret_key: SecretStr
    source: str  # where they came from, for logs: never the values

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r})"

    __str__ = __repr__


class CredentialSource:
    """Reads the key pair: the credentials file when configured, else the settings (environment).

    Only the file can change under a running process; the environment is fixed at start, so
    without a file a rotation still needs a restart (and the log says so).
    """

    def __init__(self, *, file: Path | None, key_id: SecretStr | None, secret_key: SecretStr | None,
                 label: str | None = None):
        self.file = file
        self._env = (key_id, secret_key)
        self.label = label  # whose keys, for logs (e.g. the accounts using them): never a value

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialSource:
        return cls(
            file=settings.alpaca_credentials_file,
            key_id=settings.apca_api_key_id,
            secret_key=settings.apca_api_secret_key,
        )

    def load(self, *, reason: str = "start") -> Credentials:
        creds = self._from_file(self.file) if self.file is not None else self._from_env()
        log.info("alpaca credentials loaded", source=creds.source, reason=reason, label=self.label)
        return creds

    def _from_env(self) -> Credentials:
        key, secret = self._env
        if key is None or secret is None or not key.get_secret_value():
            raise CredentialsUnavailable(
                f"no Alpaca credentials: set {KEY_VAR} and {SECRET_VAR}, "
                "or ALPACA_CREDENTIALS_FILE (a dotenv file holding both)"
            )
        return Credentials(key, secret, f"environment ({KEY_VAR}/{SECRET_VAR})")

    @staticmethod
    def _from_file(path: Path) -> Credentials:
        try:
            stat = path.stat()
            values = dotenv_values(path, encoding="utf-8")
        except OSError as exc:
            raise CredentialsUnavailable(
                f"ALPACA_CREDENTIALS_FILE {path}: {exc.strerror or type(exc).__name__}"
            ) from None
        key, secret = values.get(KEY_VAR), values.get(SECRET_VAR)
        if not key or not secret:
            missing = [n for n, v in ((KEY_VAR, key), (SECRET_VAR, secret)) if not v]
            raise CredentialsUnavailable(f"ALPACA_CREDENTIALS_FILE {path}: no {', '.join(missing)}")
        modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC).isoformat(timespec="seconds")
        return Credentials(SecretStr(key), SecretStr(secret), f"file {path} (modified {modified})")

    def __repr__(self) -> str:
        return f"CredentialSource(file={self.file!r}, label={self.label!r})"
