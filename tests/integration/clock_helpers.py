"""Minute closures for tests that produce features and signals themselves (no features or signal
agent upstream): what the signal agent would forward once its outputs of the minute are out."""

from __future__ import annotations

from datetime import UTC, datetime

from opsinfra.settings import Settings
from schemas.codec import HeaderCodec
from schemas.records import MinuteClosed
from schemas.topic_io import RecordProducer
from schemas.topics import CLOCK, FEATURES, SIGNALS, SYMBOL_PARTITIONS
from tests.integration.test_trading_helpers import ends


def send_closure(produce: RecordProducer, record: MinuteClosed) -> None:
    """`record` to its partition of clock.minutes (the agents send it there explicitly)."""
    topic = produce.prefix + CLOCK.name
    value, headers = produce.codec.encode(topic, record)
    produce._producer.produce(topic, value=value, key=record.key().encode(), partition=record.partition,
                              headers=list(headers))


def close_minute(settings: Settings, bootstrap: str, minute: datetime, *, at: datetime | None = None) -> None:
    """Every partition's signals closure of `minute`, covering what features.1m and signals hold now."""
    f_end, s_end = ends(settings, bootstrap, FEATURES), ends(settings, bootstrap, SIGNALS)
    at = at or datetime.now(UTC)
    with RecordProducer(settings, bootstrap, HeaderCodec()) as produce:
        for p in range(SYMBOL_PARTITIONS):
            closed = MinuteClosed("signals", p, minute, "idle", s_end.get(p, 0), f_end.get(p, 0), at)
            send_closure(produce, closed)
        produce.flush()
