"""The bars already on market.bars.1m (the tail at start-up, a time range for replay and backfill),
chosen by the records' own ts, never by offsets_for_times.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from opsinfra.errors import ConfigError, DecodeError
from opsinfra.kafka_io import Consumed, end_offsets, read_tail, read_to_end
from opsinfra.settings import Settings
from schemas.codec import Codec, decode
from schemas.records import Bar


def _bars(codec: Codec, topic: str, messages: Iterable[Consumed]) -> Iterator[Bar]:
    """The decodable bars; the others are not ours to judge here (the topic's consumers
    route them to the DLQ)."""
    for m in messages:
        try:
            yield decode(codec, Bar, m.value, m.headers, topic=topic, partition=m.partition, offset=m.offset)
        except DecodeError:
            continue


def bars_tail(settings: Settings, bootstrap: str, codec: Codec, topic: str, **read: Any) -> list[Bar]:
    """About the last `per_partition` bars of each partition (more when the watermark lags);
    `read` goes to opsinfra.kafka_io.read_tail (per_partition, quiet_s, timeout_s)."""
    if not end_offsets(settings, bootstrap, [topic]):
        raise ConfigError(f"no topic {topic!r}: run `ops-pipeline topics create`")
    read.setdefault("quiet_s", 0.5)
    return list(_bars(codec, topic, read_tail(settings, bootstrap, topic, **read)))


def bars_in_range(
    settings: Settings,
    bootstrap: str,
    codec: Codec,
    topic: str,
    start: datetime,
    end: datetime,
    *,
    symbols: set[str] | None = None,
    quiet_s: float = 0.5,
) -> list[Bar]:
    """Every decodable bar of `topic` with start <= ts < end, in topic order per partition."""
    bars = _bars(codec, topic, read_to_end(settings, bootstrap, topic, quiet_s=quiet_s, timeout_s=600.0))
    return [b for b in bars if start <= b.ts < end and (symbols is None or b.symbol in symbols)]
