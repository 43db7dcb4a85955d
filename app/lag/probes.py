"""What the lag report reads: MySQL's current position, Kafka's offsets and the ZooKeeper mirror.

Each probe returns a small result: what it read, or one line naming why it could not (it never
raises for an unreachable service). The drivers (PyMySQL, aiokafka, kazoo) are imported inside
the functions that use them, so importing this module loads none of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.errors import SourceError
from app.settings import Settings, SourceSettings
from tables.mirrored import Mirrored, ZooKeeperUnreachable, read_mirrored
from tables.positions import file_sequence

CONNECT_TIMEOUT_S = 5.0
FETCH_TIMEOUT_S = 2.0
# Events that may follow a relay's resume position without it being behind: the headers a
# server writes at the start of each binlog file, and the rotation to the next.
FILE_HEADER_EVENTS = frozenset(
    {"Format_desc", "Gtid_list", "Binlog_checkpoint", "Previous_gtids", "Start_encryption"}
)


def bootstrap_servers(kafka: str) -> list[str]:
    """``kafka://a:9092,b:9092`` (or ``;``-separated) -> ``["a:9092", "b:9092"]``."""
    return [part.split("://", 1)[-1] for part in kafka.replace(";", ",").split(",") if part]


def _error(exc: BaseException) -> str:
    """One line naming what failed, for the report and for ``aesop lag``."""
    text = str(exc.args[-1]) if getattr(exc, "args", None) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- MySQL -----------------------------------------------------------------------------


@dataclass
class ServerPosition:
    """A source server's current binlog position and the size of each binlog file."""

    file: str
    pos: int
    sizes: dict[str, int]
    # For a checkpoint in the current file: True when only file headers follow it.
    headers_only_after: dict[int, bool] = field(default_factory=dict)

    def bytes_behind(self, file: str, pos: int) -> int | None:
        """Binlog bytes from ``file:pos`` to this position; None if ``file`` is gone."""
        if file == self.file:
            return max(0, self.pos - pos)
        if file not in self.sizes:
            return None
        first, last = file_sequence(file), file_sequence(self.file)
        later = [f for f in self.sizes if first < file_sequence(f) < last]
        return max(0, self.sizes[file] - pos) + sum(self.sizes[f] for f in later) + self.pos


@dataclass(frozen=True)
class MySQLProbe:
    """One source's server as read, or why it could not be read."""

    server: ServerPosition | None = None
    error: str | None = None


def read_server(source: SourceSettings, checkpoint: Mapping[str, Any] | None) -> ServerPosition:
    """The binlog status and SHOW BINARY LOGS (blocking: run it in a thread)."""
    import pymysql

    from relay.binlog_status import binary_log_status

    with pymysql.connect(
        **source.mysql.connect_args(), connect_timeout=CONNECT_TIMEOUT_S, read_timeout=10
    ) as conn, conn.cursor() as cur:  # fmt: skip
        row = binary_log_status(cur)
        if row is None:
            raise SourceError("binary logging is off on this server")
        file, pos = str(row[0]), int(row[1])
        cur.execute("SHOW BINARY LOGS")
        sizes = {str(r[0]): int(r[1]) for r in cur.fetchall()}
        found = ServerPosition(file, pos, sizes)
        if checkpoint is not None and checkpoint.get("file") == file:
            at = int(checkpoint.get("pos", 0))
            if at < pos:
                try:
                    cur.execute(f"SHOW BINLOG EVENTS IN %s FROM {at} LIMIT 16", (file,))
                    kinds = [str(r[2]) for r in cur.fetchall()]
                except pymysql.MySQLError:
                    kinds = ["unknown"]  # no privilege: count it as behind
                found.headers_only_after[at] = bool(kinds) and set(kinds) <= FILE_HEADER_EVENTS
        return found


async def probe_mysql(source: SourceSettings, checkpoint: Mapping[str, Any] | None) -> MySQLProbe:
    """The source server's position (``checkpoint``: the relay's, to see what follows it)."""
    try:
        server = await asyncio.wait_for(
            asyncio.to_thread(read_server, source, checkpoint), 3 * CONNECT_TIMEOUT_S
        )
    except Exception as exc:
        return MySQLProbe(error=f"cannot reach {source.mysql}: {_error(exc)}")
    return MySQLProbe(server=server)


# -- ZooKeeper -------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooKeeperProbe:
    """The mirror as read (empty when disabled or unreachable), or why it could not be read."""

    mirrored: Mirrored = field(default_factory=Mirrored)
    error: str | None = None


async def probe_zookeeper(settings: Settings) -> ZooKeeperProbe:
    """Relay checkpoints, heartbeats and consumer positions; nothing when the mirror is off."""
    if not settings.zookeeper_enabled:
        return ZooKeeperProbe()
    try:
        mirrored = await asyncio.wait_for(
            asyncio.to_thread(read_mirrored, settings, CONNECT_TIMEOUT_S), 3 * CONNECT_TIMEOUT_S
        )
    except ZooKeeperUnreachable as exc:
        return ZooKeeperProbe(error=str(exc))
    except Exception as exc:
        return ZooKeeperProbe(
            error=f"cannot reach ZooKeeper at {settings.zookeeper}: {_error(exc)}"
        )
    return ZooKeeperProbe(mirrored=mirrored)


async def probe_changelogs(settings: Settings) -> ZooKeeperProbe:
    """With the mirror off: relay checkpoints and consumer positions from their changelog
    topics (no heartbeats); ``error`` says why they could not be read."""
    from tables.changelogs import read_changelogs

    try:
        mirrored = await asyncio.wait_for(
            read_changelogs(settings, bootstrap_servers(settings.kafka)), 4 * CONNECT_TIMEOUT_S
        )
    except Exception as exc:
        return ZooKeeperProbe(
            error=f"cannot read the changelog topics from Kafka at {settings.kafka}: {_error(exc)}"
        )
    return ZooKeeperProbe(mirrored=mirrored)


# -- Kafka -----------------------------------------------------------------------------


@dataclass
class Offsets:
    """Kafka's view of the consumers' topics: partitions, offsets, oldest waiting message."""

    partitions: dict[str, list[int]] = field(default_factory=dict)
    beginning: dict[tuple[str, int], int] = field(default_factory=dict)
    end: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: dict[tuple[str, str, int], int] = field(default_factory=dict)
    timestamps: dict[tuple[str, int, int], int] = field(default_factory=dict)  # (t, p, offset)

    def position(self, consumer: str, topic: str, partition: int, mirrored: Mirrored) -> int:
        """The next offset the consumer processes: past its last applied change or its
        committed offset (skipped and dead-lettered messages commit too), whichever is
        further."""
        applied = mirrored.consumers.get((consumer, topic, partition))
        candidates = [self.beginning.get((topic, partition), 0)]
        if applied is not None and applied.offset is not None:
            candidates.append(applied.offset + 1)
        committed = self.committed.get((consumer, topic, partition))
        if committed is not None:
            candidates.append(committed)
        return max(candidates)


@dataclass(frozen=True)
class KafkaProbe:
    """The consumers' offsets as read, or why Kafka could not be read."""

    offsets: Offsets | None = None
    error: str | None = None


async def read_kafka(settings: Settings, mirrored: Mirrored) -> Offsets:
    """Partitions, beginning and end offsets of the consumers' topics, the groups' committed
    offsets, and the timestamp of the first message each consumer has yet to process."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    servers = bootstrap_servers(settings.kafka)
    found = Offsets()
    topics = sorted({t for c in settings.consumers for t in c.topics})
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers,
        enable_auto_commit=False,
        request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
        max_partition_fetch_bytes=64 * 1024,
    )
    admin = AIOKafkaAdminClient(
        bootstrap_servers=servers, request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000)
    )
    try:
        await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT_S)
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
        if not topics:
            return found
        described = await asyncio.wait_for(admin.describe_topics(topics), CONNECT_TIMEOUT_S)
        tps = []
        for topic in described:
            if topic["error_code"] == 0 and topic["partitions"]:
                partitions = sorted(p["partition"] for p in topic["partitions"])
                found.partitions[topic["topic"]] = partitions
                tps += [TopicPartition(topic["topic"], p) for p in partitions]
        if tps:
            ends = await asyncio.wait_for(consumer.end_offsets(tps), CONNECT_TIMEOUT_S)
            starts = await asyncio.wait_for(consumer.beginning_offsets(tps), CONNECT_TIMEOUT_S)
            found.end = {(tp.topic, tp.partition): o for tp, o in ends.items()}
            found.beginning = {(tp.topic, tp.partition): o for tp, o in starts.items()}
        for group in settings.consumers:
            committed = await asyncio.wait_for(
                admin.list_consumer_group_offsets(group.name), CONNECT_TIMEOUT_S
            )
            for tp, meta in committed.items():
                if meta.offset >= 0:
                    found.committed[(group.name, tp.topic, tp.partition)] = meta.offset
        wanted = _waiting(settings, mirrored, found)
        if wanted:
            await _first_timestamps(consumer, wanted, found)
        return found
    finally:
        await asyncio.gather(consumer.stop(), admin.close(), return_exceptions=True)


def _waiting(
    settings: Settings, mirrored: Mirrored, found: Offsets
) -> dict[tuple[str, int], set[int]]:
    """Per topic partition, each offset that some consumer has yet to process next."""
    wanted: dict[tuple[str, int], set[int]] = {}
    for consumer in settings.consumers:
        for topic in consumer.topics:
            for partition in found.partitions.get(topic, ()):
                position = found.position(consumer.name, topic, partition, mirrored)
                if position < found.end.get((topic, partition), 0):
                    wanted.setdefault((topic, partition), set()).add(position)
    return wanted


async def _first_timestamps(
    consumer: Any, wanted: dict[tuple[str, int], set[int]], found: Offsets
) -> None:
    """The Kafka timestamp of the message at each wanted offset: one small fetch each, all
    partitions at once per round (consumers of one topic rarely wait at different offsets)."""
    from aiokafka import TopicPartition

    rounds = max(len(offsets) for offsets in wanted.values())
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    for index in range(rounds):
        at = {
            TopicPartition(t, p): sorted(offsets)[index]
            for (t, p), offsets in wanted.items()
            if index < len(offsets)
        }
        consumer.assign(list(at))
        for tp, offset in at.items():
            consumer.seek(tp, offset)
        missing = set(at)
        while missing and time.monotonic() < deadline:
            batches = await consumer.getmany(*missing, timeout_ms=200)
            for tp, records in batches.items():
                if records and tp in missing:
                    # At the offset, or just after it if compaction removed that message.
                    found.timestamps[(tp.topic, tp.partition, at[tp])] = records[0].timestamp
                    missing.discard(tp)
                    consumer.pause(tp)
        consumer.resume(*at)


async def probe_kafka(settings: Settings, mirrored: Mirrored) -> KafkaProbe:
    """The consumers' offsets (``mirrored``: their applied positions, to see what waits)."""
    try:
        offsets = await asyncio.wait_for(read_kafka(settings, mirrored), 4 * CONNECT_TIMEOUT_S)
    except Exception as exc:
        return KafkaProbe(error=f"cannot reach Kafka at {settings.kafka}: {_error(exc)}")
    return KafkaProbe(offsets=offsets)
