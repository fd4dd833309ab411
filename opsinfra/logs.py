"""Structured logging (structlog): readable on a terminal, JSON with LOG_JSON=true, never secrets."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(secret|password|passwd|token|api_key|key_id|authorization)", re.I)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with passwords inside URLs and every given secret value replaced by ***."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redact(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Blank values under secret-looking keys and passwords inside URLs."""
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key) and value is not None:
            event[key] = "***"
        elif isinstance(value, str) and "://" in value:
            event[key] = scrub(value)
    return event


def configure(level: str = "INFO", json: bool = False) -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
