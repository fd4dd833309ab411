"""Minute closures onto clock.minutes: each to the partition it closes, with the end of what the
stage delivered to that partition of its data topic (known from delivery reports, and from the
broker's end offsets for what an earlier run delivered)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from opsinfra.kafka_io import end_offsets
from schemas.records import MinuteClosed
from schemas.topics import CLOCK
from streams.app import PipelineApp
from trading.clock import Clock
from trading.watermarks import Closure

log = logging.getLogger(__name__)


class ClosurePublisher:
    """One stage's closures of its `data_topic` (physical name), stamped with `clock`."""

    def __init__(self, papp: PipelineApp, bootstrap: str, data_topic: str, stage: str, clock: Clock) -> None:
        self.papp = papp
        self.bootstrap = bootstrap
        self.data_topic = data_topic
        self.stage = stage
        self.clock = clock
        self.clock_topic = papp.settings.topic(CLOCK.name)
        self.ends: dict[int, int] | None = None  # data partition -> end of what was delivered
        self.sent = 0

    async def known_ends(self) -> dict[int, int]:
        """What an earlier run delivered (the broker's end offsets): every closure's floor."""
        if self.ends is None:
            try:
                got = await asyncio.to_thread(end_offsets, self.papp.settings, self.bootstrap,
                                              [self.data_topic])
            except Exception as exc:  # noqa: BLE001 - unknown: closures count what this run delivers
                log.warning("%s: end offsets of %s unknown (%s)", self.stage, self.data_topic, exc)
                got = {}
            self.ends = {p: o for (t, p), o in got.items() if t == self.data_topic}
        return self.ends

    async def delivered(self, futures: Sequence[Awaitable[Any]], sent: dict[int, int] | None = None) -> None:
        """Delivery futures of the data topic: the ends move past them. `sent`: records per
        partition when a future stands for a batch (its metadata: the batch's base offset)."""
        ends = await self.known_ends()
        first: dict[int, int] = {}
        for fut in futures:
            r = await fut
            if getattr(r, "topic", None) != self.data_topic:
                continue
            if sent is None:
                ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
            else:
                first[r.partition] = min(first.get(r.partition, r.offset), r.offset)
        for p, base in first.items():
            ends[p] = max(ends.get(p, 0), base + (sent or {}).get(p, 0))

    async def publish(self, closures: Sequence[tuple[Closure, int]]) -> None:
        """Each (closure, input_upto) to its partition of clock.minutes; returns once delivered."""
        ends = await self.known_ends()
        at = self.clock.now()
        codec, producer = self.papp.codec, self.papp.app.producer
        futures = []
        for c, input_upto in closures:
            record = MinuteClosed(self.stage, c.partition, c.minute, c.reason, ends.get(c.partition, 0),
                                  input_upto, at)
            value, headers = codec.encode(self.clock_topic, record)
            futures.append(await producer.send(self.clock_topic, record.key().encode(), value, c.partition,
                                               None, headers))
        await asyncio.gather(*futures)
        self.sent += len(closures)
