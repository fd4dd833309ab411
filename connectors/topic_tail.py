"""Bounded reads of market.bars.1m: the tail at start-up, and a time range for replay/backfill.

Time ranges come from the records' own `ts`, never from offsets_for_times (Tansu answers 0 for
every timestamp). The high watermark can be a lower bound (Tansu reports the last batch's base
offset), so a read goes on past it until the partition has been quiet for `quiet_s`.
"""

from __future__ import annotations

from datetime import datetime

from opsinfra.errors import ConfigError, DecodeError
from opsinfra.kafka_io import read_to_end
from opsinfra.settings import Settings
from schemas.codec import Codec, decode
from schemas.records import Bar


def read_tail(
    settings: Settings,
    bootstrap: str,
    codec: Codec,
    topic: str,
    *,
    per_partition: int,
    quiet_s: float = 0.5,
    timeout_s: float = 60.0,
) -> list[Bar]:
    """About the last `per_partition` bars of each partition (more when the watermark lags)."""
    from opsinfra.kafka_io import end_offsets
    from opsinfra.kafka_io import read_tail as read_raw_tail

    if not end_offsets(settings, bootstrap, [topic]):
        raise ConfigError(f"no topic {topic!r}: run `ops-pipeline topics create`")
    out = []
    for m in read_raw_tail(settings, bootstrap, topic, per_partition=per_partition, quiet_s=quiet_s,
                           timeout_s=timeout_s):
        try:
            out.append(decode(codec, Bar, m.value, m.headers, topic=topic, partition=m.partition,
                              offset=m.offset))
        except DecodeError:
            continue  # not ours to judge here; the topic's consumers route it to the DLQ
    return out


def read_range(
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
    out = []
    for m in read_to_end(settings, bootstrap, topic, quiet_s=quiet_s, timeout_s=600.0):
        try:
            bar = decode(codec, Bar, m.value, m.headers, topic=topic, partition=m.partition, offset=m.offset)
        except DecodeError:
            continue
        if start <= bar.ts < end and (symbols is None or bar.symbol in symbols):
            out.append(bar)
    return out
