"""Alpaca stream protocol helpers: frames, handshake answers, error codes -> actions."""

from __future__ import annotations

import json

import msgpack
import pytest
from pydantic import SecretStr

from connectors import alpaca_protocol as proto
from connectors.credentials import Credentials


def test_msgpack_and_json_frames_decode_alike() -> None:
    msgs = [{"T": "success", "msg": "connected"}]
    assert proto.decode_frame(msgpack.packb(msgs)) == msgs
    assert proto.decode_frame(json.dumps(msgs)) == msgs
    assert proto.decode_frame(msgpack.packb(msgs[0])) == msgs  # a lone message


@pytest.mark.parametrize("data", [b"\xc1garbage", b"", msgpack.packb([1, 2]), msgpack.packb("x"), "{"])
def test_undecodable_frames_raise_frame_error(data: bytes | str) -> None:
    with pytest.raises(proto.FrameError):
        proto.decode_frame(data)


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (401, proto.Action.REAUTH),
        (402, proto.Action.REAUTH),
        (406, proto.Action.WAIT_CONNECTION_LIMIT),
        (405, proto.Action.FATAL),
        (409, proto.Action.FATAL),
        (410, proto.Action.FATAL),
        (400, proto.Action.BACKOFF),
        (404, proto.Action.BACKOFF),
        (407, proto.Action.BACKOFF),
        (500, proto.Action.BACKOFF),
        (None, proto.Action.BACKOFF),
    ],
)
def test_error_codes_decide_the_action(code: int | None, action: proto.Action) -> None:
    assert proto.action_for(code) is action


def test_error_messages_raise_with_their_code() -> None:
    with pytest.raises(proto.StreamError) as err:
        proto.expect_success(
            [{"T": "error", "code": 406, "msg": "connection limit exceeded"}], "authenticated"
        )
    assert err.value.code == 406


def test_an_unexpected_answer_is_a_protocol_error() -> None:
    proto.expect_success([{"T": "success", "msg": "authenticated"}], "authenticated")
    with pytest.raises(proto.ProtocolError):
        proto.expect_success([{"T": "subscription"}], "authenticated")


def test_auth_and_subscribe_messages() -> None:
    creds = Credentials(SecretStr("KEY123"), SecretStr("SECRET456"), "test")
    assert msgpack.unpackb(proto.auth_message(creds)) == {
        "action": "auth", "key": "KEY123", "secret": "SECRET456"
    }
    assert msgpack.unpackb(proto.subscribe_message(["AAPL", "MSFT"])) == {
        "action": "subscribe", "bars": ["AAPL", "MSFT"], "updatedBars": ["AAPL", "MSFT"]
    }
    assert "SECRET456" not in repr(creds) and "KEY123" not in str(creds)
