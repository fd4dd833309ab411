"""A bounded read of one topic straight into columns: the Kafka layer's batches go to the column
decoder as they arrive, so decoding overlaps the fetching of the next ones (notebooks, backtests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opsinfra.kafka_io import read_batches
from opsinfra.settings import Settings
from schemas.codec import Codec
from schemas.column_decoder import ColumnDecoder, Decoded
from schemas.records import Record


@dataclass
class TopicColumns:
    """The records of a topic as columns, and where each message read was: numpy int64 arrays
    (and a list of keys) with an entry per message, which `decoded.index` picks the rows' from."""

    decoded: Decoded
    partitions: Any
    offsets: Any
    timestamps_ms: Any = None  # with `positions=True` only, as `keys`
    keys: list[bytes | None] | None = None


def read_columns(
    settings: Settings,
    bootstrap: str,
    codec: Codec,
    record: type[Record],
    topic: str,
    *,
    positions: bool = False,
    **read: Any,
) -> TopicColumns:
    """`read_batches` of a (physical) topic, decoded as `record` into columns; an undecodable message
    is in `decoded.errors` (the codec's DecodeError). `positions`: keep every message's timestamp
    and key too. Raises schemas.avro_columns.Unsupported, before reading, for a nested schema."""
    import numpy as np

    decoder = ColumnDecoder(codec, record, topic)
    partitions: list[Any] = []
    offsets: list[Any] = []
    stamps: list[Any] = []
    keys: list[bytes | None] = []
    for batch in read_batches(settings, bootstrap, topic, **read):
        parts, offs = batch.partitions(), batch.offsets()
        decoder.add(batch.values(), batch.headers(), parts, offs)
        partitions.append(np.array(parts, np.int64))
        offsets.append(np.array(offs, np.int64))
        if positions:
            stamps.append(np.array(batch.timestamps_ms, np.int64))
            keys.extend(batch.keys())

    def joined(arrays: list[Any]) -> Any:
        return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)

    return TopicColumns(
        decoder.finish(), joined(partitions), joined(offsets),
        joined(stamps) if positions else None, keys if positions else None,
    )  # fmt: skip
