"""Where a stage's consumer starts each partition it was assigned: its group's committed offset,
else the earliest. The watermark rules need it: records below it were handled by an earlier run.
"""

from __future__ import annotations

import logging
from typing import Any

from opsinfra.kafka_config import admin_config

log = logging.getLogger(__name__)


def committed_offsets(settings: Any, bootstrap: str, group: str) -> dict[str, dict[int, int]]:
    """A consumer group's committed offsets: topic -> partition -> offset (blocking)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(settings, bootstrap))
    fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    out: dict[str, dict[int, int]] = {}
    for tp in fut.result(timeout=5).topic_partitions:
        if tp.offset >= 0:
            out.setdefault(tp.topic, {})[tp.partition] = tp.offset
    return out


def start_offsets(app: Any, settings: Any, bootstrap: str, topics: dict[str, int]
                  ) -> dict[str, dict[int, int]]:
    """For `topics` (physical name -> partitions): where this worker's faust consumer starts each
    partition it holds (blocking). With no assignment known, every partition is taken as its."""
    assigned: set[tuple[str, int]] = set()
    try:
        assigned = {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
    except Exception as exc:  # noqa: BLE001 - no consumer yet: a single worker has every partition
        log.debug("assignment unknown (%s); assuming every partition", exc)
    if not any(t in topics for t, _ in assigned):
        assigned = {(t, p) for t, n in topics.items() for p in range(n)}
    try:
        committed = committed_offsets(settings, bootstrap, app.conf.id)
    except Exception as exc:  # noqa: BLE001 - the broker cannot say: start from the earliest
        log.warning("%s: committed offsets unknown (%s); assuming the earliest", app.conf.id, exc)
        committed = {}
    out: dict[str, dict[int, int]] = {}
    for topic, p in assigned:
        if topic in topics:
            out.setdefault(topic, {})[p] = committed.get(topic, {}).get(p, 0)
    return out
