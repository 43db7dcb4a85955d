"""What ``aesop check`` says about Kafka's durability: aesop's topics and the brokers' settings.

Every topic aesop creates gets ``[aesop] replication_factor`` and ``min_insync_replicas``
(``app.producer.durable``), but a topic made before, by hand or with other settings, keeps
what it was made with. :func:`check_kafka` reads the cluster once and returns one line each:

- ``warning:`` for each aesop topic whose replication factor or ``min.insync.replicas`` is below
  the setting (both capped as the worker caps them: the factor at the live brokers, the minimum
  at the factor), and one line when the factor is capped. The pipeline runs; a broker loss may
  stall or lose what such a topic holds, so the line says how to raise it.
- ``error:`` when a broker allows unclean leader election: a lagging replica may then become
  leader and drop acknowledged changes, which no setting of aesop can make up for.
- ``ok:`` otherwise, one line for the topics and one for the brokers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.errors import AesopError
from app.lag.probes import bootstrap_servers
from app.settings import Settings

TIMEOUT_S = 10.0
UNCLEAN = "unclean.leader.election.enable"
MIN_INSYNC = "min.insync.replicas"


def is_aesop_topic(settings: Settings, name: str) -> bool:
    """A topic aesop creates for these settings: change topics, their routed topics, dead
    letters, and the worker's and consumers' Faust topics (changelogs, the leader topic)."""
    changes = {s.topic for s in settings.sources}
    changes |= {t for c in settings.consumers for t in c.topics}
    routed = {t for c in settings.consumers if c.handler == "route" for t in c.topics}
    apps = [settings.id, *(c.name for c in settings.consumers)]
    return (
        name in changes
        or any(name.startswith(f"{t}.") for t in routed)
        or any(name == f"{c.name}.dlq" for c in settings.consumers)
        or any(name.startswith(f"{app}-") for app in apps)
    )


@dataclass(frozen=True)
class TopicState:
    """An existing topic's replication factor (its smallest partition's) and minimum ISR."""

    name: str
    replication: int
    min_insync: int


@dataclass(frozen=True)
class Cluster:
    """What the check reads: live brokers, aesop's topics, each broker's unclean setting."""

    brokers: int
    topics: tuple[TopicState, ...]
    unclean: dict[int, bool]


def report(settings: Settings, cluster: Cluster) -> list[str]:
    """The check's lines for what was read (no I/O)."""
    lines = []
    wanted = settings.replication_factor
    factor = max(1, min(wanted, cluster.brokers))
    min_insync = min(settings.min_insync_replicas, factor)
    if factor < wanted:
        lines.append(
            f"warning: kafka: replication_factor = {wanted} but only {cluster.brokers} "
            f"broker(s) are live; topics are created with replication factor {factor}"
        )
    low = 0
    for topic in cluster.topics:
        if topic.replication < factor:
            low += 1
            lines.append(
                f"warning: kafka topic {topic.name}: replication factor {topic.replication} is "
                f"below {factor}; raise it with kafka-reassign-partitions"
            )
        if topic.min_insync < min_insync:
            low += 1
            lines.append(
                f"warning: kafka topic {topic.name}: {MIN_INSYNC} = {topic.min_insync} is below "
                f"{min_insync}; raise it with kafka-configs --alter --add-config "
                f"{MIN_INSYNC}={min_insync}"
            )
    if not low:
        lines.append(
            f"ok: kafka: {len(cluster.topics)} aesop topic(s), each with replication factor "
            f">= {factor} and {MIN_INSYNC} >= {min_insync}"
        )
    unclean = sorted(broker for broker, allowed in cluster.unclean.items() if allowed)
    if unclean:
        ids = ", ".join(str(b) for b in unclean)
        lines.append(
            f"error: kafka broker(s) {ids}: {UNCLEAN} = true lets a lagging replica become "
            f"leader and drop acknowledged changes; set {UNCLEAN}=false"
        )
    else:
        lines.append(f"ok: kafka: {UNCLEAN} = false on {len(cluster.unclean)} broker(s)")
    return lines


def _entries(resource: Any) -> dict[str, str | None]:
    """A DescribeConfigs resource's entries: (error_code, message, type, name, entries)."""
    return {str(entry[0]): entry[1] for entry in resource[4]}


def _configs(responses: Iterable[Any]) -> dict[str, dict[str, str | None]]:
    found = {}
    for response in responses:
        for resource in response.resources:
            if resource[0] == 0:
                found[str(resource[3])] = _entries(resource)
    return found


async def read_cluster(settings: Settings) -> Cluster:
    """Brokers, aesop's topics and their settings, in one admin session."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings.kafka),
        request_timeout_ms=int(TIMEOUT_S * 1000),
    )
    try:
        await asyncio.wait_for(admin.start(), TIMEOUT_S)
        brokers = [b.nodeId for b in admin._client.cluster.brokers()]
        names = sorted(n for n in await admin.list_topics() if is_aesop_topic(settings, n))
        described = await admin.describe_topics(names) if names else []
        replication = {
            t["topic"]: min((len(p["replicas"]) for p in t["partitions"]), default=0)
            for t in described
            if t["error_code"] == 0
        }
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in replication]
        resources += [ConfigResource(ConfigResourceType.BROKER, str(b)) for b in brokers]
        configs = _configs(await admin.describe_configs(resources)) if resources else {}
    finally:
        await admin.close()
    topics = tuple(
        TopicState(name, factor, int(configs.get(name, {}).get(MIN_INSYNC) or 1))
        for name, factor in sorted(replication.items())
    )
    unclean = {b: (configs.get(str(b), {}).get(UNCLEAN) or "false") == "true" for b in brokers}
    return Cluster(len(brokers), topics, unclean)


def check_kafka(settings: Settings) -> list[str]:
    """The check's lines about Kafka; raises AesopError (one line) when it cannot be read."""
    try:
        cluster = asyncio.run(asyncio.wait_for(read_cluster(settings), 3 * TIMEOUT_S))
    except Exception as exc:
        text = str(exc.args[-1]) if getattr(exc, "args", None) else ""
        why = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise AesopError(f"cannot read Kafka at {settings.kafka} ({why}); is it running?") from None
    return report(settings, cluster)
