"""The shell's one error boundary: any error a user meets becomes one line, `error: <what> (<what
to do>)`, exit 2 for configuration and input errors, 1 at run time; a traceback only on request.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from opsinfra.errors import PipelineError
from opsinfra.logs import scrub
from opsinfra.settings import Settings

_DEBUG_HINT = "rerun with --debug for the traceback"
# click's UsageError, from whichever click typer runs on (recent typers vendor their own)
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


def _passes_through(exc: BaseException) -> bool:
    """Exits and help requests, which are not errors; typer tells the last apart by name too."""
    return isinstance(exc, typer.Exit | typer.Abort) or type(exc).__name__ == "NoArgsIsHelpError"


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line a user sees for an error, and the exit code: 2 for configuration and input
    errors, 1 for failures at run time. Third-party errors are told apart by class."""
    what, hint, code = _classify(exc)
    what = "; ".join(part.strip() for part in what.splitlines() if part.strip())
    return (f"error: {what} ({hint})" if hint else f"error: {what}"), code


def _classify(exc: BaseException) -> tuple[str, str | None, int]:
    if isinstance(exc, PipelineError):
        return str(exc), exc.hint or (None if exc.exit_code == 2 else _DEBUG_HINT), exc.exit_code
    if isinstance(exc, _UsageError):
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "ops-pipeline"
        return exc.format_message(), f"see `{where} --help`", 2  # type: ignore[attr-defined]
    psycopg = sys.modules.get("psycopg")  # not imported: the error cannot be one of its classes
    if psycopg is not None and isinstance(exc, psycopg.Error):
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return f"PostgreSQL: {exc}", "run `ops-pipeline migrate`", 1
        if isinstance(exc, psycopg.OperationalError):
            return (f"PostgreSQL is unreachable: {exc}",
                    "is it running? check DATABASE_URL, or start it with `ops-pipeline up`", 1)
        return f"PostgreSQL: {exc}", _DEBUG_HINT, 1
    kafka = sys.modules.get("confluent_kafka")
    if kafka is not None and isinstance(exc, kafka.KafkaException):
        err = exc.args[0] if exc.args else None
        text = err.str() if isinstance(err, kafka.KafkaError) else str(exc)
        return (f"Kafka: {text}",
                "is the broker running? check KAFKA_BOOTSTRAP_SERVERS, or start it with `ops-pipeline up`", 1)
    return f"unexpected {type(exc).__name__}: {exc}", "a bug: rerun with --debug and report the traceback", 1


def _fail(exc: BaseException, *, debug: bool, secrets: Iterable[str] = ()) -> NoReturn:
    secrets = list(secrets)
    if debug and not isinstance(exc, _UsageError):
        typer.echo(scrub("".join(traceback.format_exception(exc)), secrets), err=True, nl=False)
    line, code = describe(exc)
    typer.echo(scrub(line, secrets), err=True)
    raise typer.Exit(code) from None


class Shell(TyperGroup):
    """The error boundary around every command (and the callback that builds the settings)."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _UsageError as exc:  # the top-level options; a command's are parsed in invoke
            if _passes_through(exc):
                raise
            _fail(exc, debug=False)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if _passes_through(exc):
                raise
            settings = ctx.obj if isinstance(ctx.obj, Settings) else None
            level = settings.log_level if settings else os.environ.get("LOG_LEVEL", "")
            debug = bool(ctx.params.get("debug")) or level.upper() == "DEBUG"
            _fail(exc, debug=debug, secrets=settings.secret_values() if settings else ())
