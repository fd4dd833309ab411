"""The one error tree: callers branch on these classes, never on message text; each class carries
how the CLI reports it (`exit_code` 2 for configuration and input, 1 at run time, and a `hint`).
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1
    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class ConfigError(PipelineError):
    """A setting is missing, malformed or contradictory; the process should exit with a message."""

    exit_code = 2


class InputError(PipelineError, ValueError):
    """A file or argument the user gave is unusable (missing, unreadable, wrong columns, bad time)."""

    exit_code = 2


class SchemaError(PipelineError):
    """A record does not fit its Avro schema, or a schema cannot be loaded or registered."""


class DecodeError(SchemaError):
    """A message on a topic could not be decoded; carries where it came from, for the DLQ."""

    def __init__(
        self,
        reason: str,
        *,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(f"{topic}[{partition}]@{offset}: {reason}")


class ConnectorError(PipelineError):
    """A source (Alpaca, RSS, a replay file) failed in a way its connector cannot absorb."""


class SinkError(PipelineError):
    """The Postgres sink could not write, and retrying will not help."""


class ServiceError(PipelineError):
    """An embedded service (broker, PostgreSQL) could not be started, found or stopped."""
