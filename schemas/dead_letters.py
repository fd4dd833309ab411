"""The one DeadLetter builder: the bar intake, the agents and the sink file bad input the same way,
with the raw payload, where it came from and why, so every DLQ record can be read and replayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from schemas.codec import RawHeaders, header_pairs
from schemas.records import DeadLetter


def dead_letter(
    topic: str,
    *,
    stage: str,
    error: BaseException | str,
    error_type: str | None = None,
    key: bytes | None = None,
    value: bytes | None = None,
    headers: Mapping[str, bytes | None] | RawHeaders | None = None,
    partition: int | None = None,
    offset: int | None = None,
    at: datetime | None = None,
) -> DeadLetter:
    """A DeadLetter for input from `topic` (a topic, or an origin such as "alpaca.ws").

    `error` is the exception or the reason; the letter's `error` is its text and `error_type` its
    class name unless given ("Invalid" for a bare reason). `headers` in any shape header_pairs
    takes; a header without a value is kept, empty. `at` defaults to now.
    """
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        original_key=key,
        value=value,
        headers={str(k): b"" if v is None else bytes(v) for k, v in header_pairs(headers)},
        error=str(error),
        error_type=error_type or (type(error).__name__ if isinstance(error, BaseException) else "Invalid"),
        stage=stage,
        failed_at=at if at is not None else datetime.now(UTC),
    )
