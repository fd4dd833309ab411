"""One path from a raw bar to the topic for the live stream, the REST backfill and replay: parse ->
validate -> revision book -> sink, or a DeadLetter with the reason and the raw payload.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from connectors.gaps import Chunk, GapDetector, GapReport, Minute
from connectors.revisions import Kind, RevisionBook
from connectors.validation import BarRejected, parse_bar, parse_ts, raw_payload, validate_bar
from opsinfra.metrics import Metrics
from opsinfra.metrics import metrics as process_metrics
from schemas.dead_letters import dead_letter
from schemas.records import Bar, DeadLetter
from schemas.topic_io import RecordProducer
from schemas.topics import BARS

STAGE = "bars"
ORIGIN_STREAM = "alpaca.ws"
ORIGIN_REST = "alpaca.rest"


class BarSink(Protocol):
    def send(self, bar: Bar) -> None: ...
    def dead_letter(self, letter: DeadLetter) -> None: ...
    def flush(self) -> None: ...


class ProducerSink:
    """Bars to market.bars.1m keyed by symbol, rejects to market.bars.1m.dlq; counted in the
    Prometheus metrics of `stage` (records and DLQ as queued, progress once flushed)."""

    def __init__(
        self,
        producer: RecordProducer,
        *,
        flush_timeout: float = 30.0,
        stage: str = STAGE,
        metrics: Metrics | None = None,
    ) -> None:
        self.producer = producer
        self.flush_timeout = flush_timeout
        self.stage = stage
        self.metrics = metrics if metrics is not None else process_metrics()
        self.dlq_topic = producer.prefix + BARS.dlq.name
        self._sent = self.metrics.records.labels(stage, producer.prefix + BARS.name)
        self._unflushed = False

    def send(self, bar: Bar) -> None:
        self.producer.send(BARS, bar)
        self._sent.inc()
        self._unflushed = True

    def dead_letter(self, letter: DeadLetter) -> None:
        self.producer.send_dlq(BARS, letter)
        self.metrics.dead_lettered(self.stage, self.dlq_topic, letter.error_type)

    def flush(self) -> None:
        self.producer.flush(self.flush_timeout)
        if self._unflushed:
            self._unflushed = False
            self.metrics.progressed(self.stage)


@dataclass
class IntakeStats:
    live: int = 0
    updated: int = 0
    backfill: int = 0
    corrections: int = 0  # REST's bar as the next revision of a minute rechecked after a drop
    replay: int = 0
    duplicates: int = 0
    rejected: int = 0

    def published(self) -> int:
        return self.live + self.updated + self.backfill + self.corrections + self.replay


class BarIntake:
    """Routes raw bars: valid and new -> sink (revision set, minute marked seen), else DLQ/skip."""

    def __init__(
        self,
        sink: BarSink,
        *,
        symbols: Collection[str] | None,
        book: RevisionBook | None = None,
        detector: GapDetector | None = None,
        max_skew: timedelta = timedelta(seconds=5),
    ) -> None:
        self.sink = sink
        self.symbols = frozenset(symbols) if symbols is not None else None
        self.book = book or RevisionBook()
        self.detector = detector
        self.max_skew = max_skew
        self.stats = IntakeStats()

    def stream_message(self, msg: Mapping[str, Any], *, now: datetime) -> Bar | None:
        """A "b" or "u" message of the websocket."""
        updated = msg.get("T") == "u"
        source = "updated" if updated else "live"
        try:
            bar = validate_bar(
                parse_bar(msg, source=source), now=now, symbols=self.symbols, max_skew=self.max_skew
            )
        except BarRejected as exc:
            sym = msg.get("S")
            self.reject(
                ORIGIN_STREAM, exc.reason, raw_payload(msg), "application/msgpack",
                sym if isinstance(sym, str) else None, now,
            )
            return None
        return self._admit(bar, "updated" if updated else "live")

    def rest_bar(self, symbol: str, raw: Mapping[str, Any], *, now: datetime) -> Bar | None:
        """One bar of a REST answer for a gap; validated like a live one. Returns the valid bar even
        when it was not published (the minute was already known), None when rejected."""
        bar = self.rest_valid(symbol, raw, now=now)
        if bar is not None:
            self._admit(bar, "backfill")
        return bar

    def rest_valid(self, symbol: str, raw: Mapping[str, Any], *, now: datetime) -> Bar | None:
        """One bar of a REST answer, validated like a live one; None when rejected (to the DLQ)."""
        try:
            return validate_bar(
                parse_bar(raw, source="backfill", symbol=symbol),
                now=now, symbols=self.symbols, max_skew=self.max_skew,
            )
        except BarRejected as exc:
            payload = json.dumps({"symbol": symbol, "bar": dict(raw)}, default=str).encode()
            self.reject(ORIGIN_REST, exc.reason, payload, "application/json", symbol, now)
            return None

    def rest_correction(self, bar: Bar, *, asked: int) -> Bar | None:
        """REST's valid bar for a minute rechecked after a drop, at revision `asked` when REST was
        asked: published as the next revision where its OHLCV differs, and returned; else None."""
        if self.book.revision(bar.symbol, bar.ts) is None:
            self._admit(bar, "backfill")  # left the book while REST was asked: a gap, filled as one
            return None
        revised = self.book.judge(bar, asked=asked)
        if revised is not None:
            self.sink.send(revised)
            self.stats.corrections += 1
        return revised

    def replayed(self, bar: Bar) -> None:
        """A replay record: already validated and revisioned by its source; published as is."""
        self.sink.send(bar)
        self.stats.replay += 1

    def reject(
        self, origin: str, reason: str, payload: bytes, content_type: str, key: str | None,
        at: datetime, error_type: str = "BarRejected",
    ) -> None:
        self.sink.dead_letter(
            dead_letter(origin, stage=STAGE, error=reason, error_type=error_type,
                        key=key.encode() if key else None, value=payload,
                        headers={"content-type": content_type.encode()}, at=at)
        )
        self.stats.rejected += 1

    def apply_backfill(
        self, chunk: Chunk, answer: Mapping[str, list[dict[str, Any]]], *, now: datetime
    ) -> GapReport:
        """Publish the REST bars of the asked minutes; what REST did not return had no trades."""
        if self.detector is None:
            raise RuntimeError("apply_backfill needs a GapDetector")
        found: list[Minute] = []
        rejected: list[Minute] = []
        for symbol, raws in answer.items():
            wanted = set(chunk.asked.get(symbol, ()))
            for raw in raws:
                minute = _minute(raw)
                if minute is not None and minute not in wanted:
                    continue  # REST answers the whole span; other minutes are not ours to fill
                bar = self.rest_bar(symbol, raw, now=now)
                if bar is not None:
                    found.append((bar.symbol, bar.ts))
                elif minute is not None:
                    rejected.append((symbol, minute))
        return self.detector.resolve(chunk, found, rejected)

    def _admit(self, bar: Bar, kind: Kind) -> Bar | None:
        admitted = self.book.admit(bar, kind)
        if admitted is None:
            self.stats.duplicates += 1
            return None
        if self.detector is not None:
            self.detector.observe(admitted.symbol, admitted.ts)
        self.sink.send(admitted)
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        return admitted


def _minute(raw: Mapping[str, Any]) -> datetime | None:
    """The minute a REST bar is for, when its timestamp parses at all."""
    try:
        return parse_ts(raw.get("t"))
    except BarRejected:
        return None
