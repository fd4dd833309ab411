"""Topic administration: create topics from their specs (idempotently), list and describe them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from opsinfra.errors import PipelineError


class TopicLike(Protocol):
    """What creating a topic needs of its spec (schemas.topics.TopicSpec)."""

    @property
    def name(self) -> str: ...

    @property
    def partitions(self) -> int: ...

    def config(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    config: dict[str, str]


def create_topics(
    admin: AdminClient,
    specs: Sequence[TopicLike],
    *,
    prefix: str = "",
    replication_factor: int = -1,  # the broker's default (1 on Tansu, 3 on MSK)
    timeout: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [s for s in specs if prefix + s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(prefix + s.name, s.partitions, replication_factor, config=s.config()) for s in wanted],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            err: Any = exc.args[0]
            if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise PipelineError(f"creating topic {name}: {err}") from exc
    return sorted(created)


def list_topics(admin: AdminClient, *, timeout: float = 15.0) -> dict[str, int]:
    """Every topic on the broker (internal ones excluded) with its partition count."""
    meta = admin.list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in sorted(meta.topics.items()) if not name.startswith("__")}


def describe_topics(admin: AdminClient, names: list[str], *, timeout: float = 15.0) -> list[TopicInfo]:
    meta = admin.list_topics(timeout=timeout)
    missing = [n for n in names if n not in meta.topics]
    if missing:
        raise PipelineError(f"no such topic(s): {', '.join(missing)}")
    futures = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names], request_timeout=timeout
    )
    out = []
    for res, fut in futures.items():
        entries = fut.result()
        config = {k: v.value for k, v in entries.items() if v.value is not None}
        out.append(TopicInfo(res.name, len(meta.topics[res.name].partitions), config))
    return sorted(out, key=lambda t: t.name)
