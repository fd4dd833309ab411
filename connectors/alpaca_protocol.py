"""Alpaca's market-data websocket protocol (v2) as pure functions over frames, so the connector
branches on Alpaca's numeric error codes (406 vs 402), never on message text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import Enum
from typing import Any

import msgpack

from connectors.credentials import Credentials
from opsinfra.errors import ConnectorError

DEFAULT_STREAM_URL = "wss://stream.data.alpaca.markets/v2/{feed}"
CONTENT_TYPE = "application/msgpack"  # asks the server for msgpack frames (msgpack Timestamps)
BAR_TYPES = frozenset({"b", "u"})

# Alpaca's stream error codes
NOT_AUTHENTICATED = 401
AUTH_FAILED = 402
CONNECTION_LIMIT = 406
SYMBOL_LIMIT = 405
INSUFFICIENT_SUBSCRIPTION = 409
INVALID_SUBSCRIBE_ACTION = 410  # e.g. a channel the feed does not offer


class Action(Enum):
    REAUTH = "reauth"  # re-read the credentials, then reconnect with backoff
    WAIT_CONNECTION_LIMIT = "wait_connection_limit"  # wait out the server's ~90 s reap
    BACKOFF = "backoff"  # reconnect with capped, jittered exponential backoff
    FATAL = "fatal"  # configuration: reconnecting cannot help


def action_for(code: int | None) -> Action:
    if code in (NOT_AUTHENTICATED, AUTH_FAILED):
        return Action.REAUTH
    if code == CONNECTION_LIMIT:
        return Action.WAIT_CONNECTION_LIMIT
    if code in (SYMBOL_LIMIT, INSUFFICIENT_SUBSCRIPTION, INVALID_SUBSCRIBE_ACTION):
        return Action.FATAL
    return Action.BACKOFF


class StreamError(ConnectorError):
    """Alpaca answered with an error message; `code` is its numeric code."""

    def __init__(self, code: int | None, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"alpaca stream error {code}: {message}")


class ProtocolError(ConnectorError):
    """The server said something the protocol does not allow at this point."""


class FrameError(ConnectorError):
    """A frame that is not a msgpack/JSON array of messages."""


def decode_frame(data: bytes | str) -> list[dict[str, Any]]:
    try:
        msgs = json.loads(data) if isinstance(data, str) else msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise FrameError(f"undecodable frame: {type(exc).__name__}") from exc
    if isinstance(msgs, dict):
        msgs = [msgs]
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        raise FrameError("frame is not an array of messages")
    return msgs


def raise_for_error(msgs: Iterable[dict[str, Any]]) -> None:
    for m in msgs:
        if m.get("T") == "error":
            code = m.get("code")
            raise StreamError(code if isinstance(code, int) else None, str(m.get("msg", "")))


def expect_success(msgs: list[dict[str, Any]], token: str) -> None:
    """The handshake step answered `[{"T": "success", "msg": token}]`, or raise."""
    raise_for_error(msgs)
    if not any(m.get("T") == "success" and m.get("msg") == token for m in msgs):
        kinds = [m.get("T") for m in msgs]
        raise ProtocolError(f"expected success/{token}, got {kinds}")


def auth_message(creds: Credentials) -> bytes:
    return bytes(
        msgpack.packb(
            {
                "action": "auth",
                "key": creds.key_id.get_secret_value(),
                "secret": creds.secret_key.get_secret_value(),
            }
        )
    )


def subscribe_message(symbols: Iterable[str]) -> bytes:
    syms = list(symbols)
    return bytes(msgpack.packb({"action": "subscribe", "bars": syms, "updatedBars": syms}))
