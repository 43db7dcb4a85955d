"""Relay checkpoints and consumer applied positions read from their Kafka changelog topics.

With the ZooKeeper mirror off (``zookeeper = ""``, as a Kafka 4 cluster in KRaft mode may run),
``aesop lag``, ``GET /lag`` and the dashboard read what the tables themselves hold: the worker's
``<id>-source_to_checkpoint-changelog`` and each consumer's ``<consumer>-applied-changelog``,
read from their beginning to their end offsets in one short session (the topics are compacted,
so that is about one message per key). Heartbeats live only in ZooKeeper: without it, whether
a live worker reads a source cannot be told.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from app.errors import AesopError
from app.settings import Settings
from tables.mirrored import NOT_JSON, Mirrored
from tables.positions import AppliedPosition, Checkpoint

CHECKPOINT_TABLE = "source_to_checkpoint"
APPLIED_TABLE = "applied"
TIMEOUT_S = 5.0
READ_FOR_S = 10.0


def checkpoint_changelog(settings: Settings) -> str:
    """The worker app's checkpoint table's changelog topic (as Faust names it)."""
    return f"{settings.id}-{CHECKPOINT_TABLE}-changelog"


def applied_changelog(consumer: str) -> str:
    """A consumer app's ``applied`` table's changelog topic."""
    return f"{consumer}-{APPLIED_TABLE}-changelog"


def changelog_topics(settings: Settings) -> list[str]:
    return [
        checkpoint_changelog(settings),
        *(applied_changelog(c.name) for c in settings.consumers),
    ]


class ChangelogsUnreadable(AesopError):
    """The changelog topics could not be read to their end within the time allowed."""


def _json(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)


async def read_latest(servers: list[str], topics: list[str]) -> dict[str, dict[Any, Any]]:
    """The last value of each key (keys and values JSON; a tombstone removes its key) of each
    existing topic in ``topics``, read up to the end offsets taken when reading starts."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    timeout_ms = int(TIMEOUT_S * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=servers, request_timeout_ms=timeout_ms)
    # "earliest" also for the reset the fetcher starts on assignment: with the default,
    # "latest", that reset may land after seek_to_beginning's and skip every record.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=timeout_ms,
    )
    found: dict[str, dict[Any, Any]] = {}
    try:
        await asyncio.wait_for(admin.start(), TIMEOUT_S)
        existing = set(await asyncio.wait_for(admin.list_topics(), TIMEOUT_S))
        wanted = [t for t in topics if t in existing]
        described = (
            await asyncio.wait_for(admin.describe_topics(wanted), TIMEOUT_S) if wanted else []
        )
        tps = [
            TopicPartition(t["topic"], p["partition"])
            for t in described
            if t["error_code"] == 0
            for p in t["partitions"]
        ]
        found = {t: {} for t in wanted}
        if not tps:
            return found
        await asyncio.wait_for(consumer.start(), TIMEOUT_S)
        consumer.assign(tps)
        ends = await asyncio.wait_for(consumer.end_offsets(tps), TIMEOUT_S)
        starts = await asyncio.wait_for(consumer.beginning_offsets(tps), TIMEOUT_S)
        await consumer.seek_to_beginning(*tps)
        # Done by the offsets returned: position() runs ahead of them while fetched records
        # wait in the consumer's buffer.
        left = {tp for tp in tps if starts[tp] < ends[tp]}
        deadline = time.monotonic() + READ_FOR_S
        while left:
            if time.monotonic() > deadline:
                # A partition whose last offsets hold no record (a control record, or a
                # tombstone compacted away) is done once its position is at the end.
                for tp in list(left):
                    if await consumer.position(tp) >= ends[tp]:
                        left.discard(tp)
                if not left:
                    break
                names = sorted({tp.topic for tp in left})
                raise ChangelogsUnreadable(
                    f"{', '.join(names)} not read to the end within {READ_FOR_S:g}s"
                )
            batches = await consumer.getmany(*left, timeout_ms=200)
            for tp, records in batches.items():
                table = found[tp.topic]
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    key, value = _json(record.key), record.value
                    if not isinstance(key, str | int):  # no aesop table has other keys
                        continue
                    if value is None:
                        table.pop(key, None)
                    else:
                        table[key] = value
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        return found
    finally:
        await asyncio.gather(consumer.stop(), admin.close(), return_exceptions=True)


def mirrored_from(settings: Settings, latest: dict[str, dict[Any, Any]]) -> Mirrored:
    """The changelogs' documents as :class:`Mirrored` holds the ZooKeeper mirror's (no
    heartbeats); an entry that is not what its table holds is named in ``bad``."""
    found = Mirrored()
    checkpoints = latest.get(checkpoint_changelog(settings), {})
    for source in settings.sources:
        raw = checkpoints.get(source.name)
        if raw is None:
            continue
        where = f"{checkpoint_changelog(settings)} key {source.name!r}"
        try:
            found.relays[source.name] = Checkpoint.from_json(_json(raw)).to_json()
        except orjson.JSONDecodeError:
            found.bad[where] = NOT_JSON
        except AesopError as exc:
            found.bad[where] = str(exc)[:300]
    for consumer in settings.consumers:
        topic = applied_changelog(consumer.name)
        for key, raw in latest.get(topic, {}).items():
            name, _, partition = str(key).rpartition("/")
            if name not in consumer.topics or not partition.isdigit():
                continue
            try:
                position = AppliedPosition.from_json(_json(raw))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AesopError):
                position = None
            if position is None:
                found.bad[f"{topic} key {key!r}"] = "not an applied position"
                continue
            found.consumers[(consumer.name, name, int(partition))] = position
    return found


async def read_changelogs(settings: Settings, servers: list[str]) -> Mirrored:
    """Relay checkpoints and applied positions of ``settings`` from their changelog topics,
    read from the brokers at ``servers``."""
    latest = await read_latest(servers, changelog_topics(settings))
    return mirrored_from(settings, latest)
