"""The lag report: how far each relay is behind MySQL and each consumer behind Kafka.

It reads only what outlives a worker: relay checkpoints and consumer positions from the
ZooKeeper mirror, MySQL's current position, and Kafka's offsets; so ``aesop lag`` works with no
worker up, and ``GET /lag`` on a worker shows the same numbers (plus the relay's state there).

Seconds behind, as the report defines it:
- a relay: 0 when its checkpoint is at MySQL's current position (nothing but binlog file
  headers lies between); else how long ago the checkpoint was written (``now - ts_ms``). A
  running relay moves its checkpoint about once a second, even when every change is filtered
  out, so this grows only while the relay does not keep up.
- a consumer partition: 0 when it has processed up to Kafka's end offset; else the age of the
  oldest change it has not processed (now minus that message's Kafka timestamp), or, when that
  message cannot be read, how long ago the last applied position was written.
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
from tables.paths import relay_path
from tables.positions import file_sequence, scn_of

CONNECT_TIMEOUT_S = 5.0
FETCH_TIMEOUT_S = 2.0
STATUS_ORDER = ("ok", "unknown", "warn", "critical")
# Events that may follow a relay's resume position without it being behind: the headers a
# server writes at the start of each binlog file, and the rotation to the next.
FILE_HEADER_EVENTS = frozenset(
    {"Format_desc", "Gtid_list", "Binlog_checkpoint", "Previous_gtids", "Start_encryption"}
)


def worst(statuses: list[str]) -> str:
    """The most alarming of ``statuses`` (critical > warn > unknown > ok); ok for none."""
    return max(statuses, key=STATUS_ORDER.index, default="ok")


def grade(seconds: float | None, warn: float, critical: float) -> str:
    if seconds is None:
        return "unknown"
    if seconds >= critical:
        return "critical"
    return "warn" if seconds >= warn else "ok"


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


def _read_server(source: SourceSettings, checkpoint: Mapping[str, Any] | None) -> ServerPosition:
    """SHOW MASTER STATUS and SHOW BINARY LOGS (blocking: run it in a thread)."""
    import pymysql

    with pymysql.connect(
        **source.mysql.connect_args(), connect_timeout=CONNECT_TIMEOUT_S, read_timeout=10
    ) as conn, conn.cursor() as cur:  # fmt: skip
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
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


def _bytes_behind(server: ServerPosition, file: str, pos: int) -> int | None:
    """Binlog bytes from ``file:pos`` to the server's position; None if ``file`` is gone."""
    if file == server.file:
        return max(0, server.pos - pos)
    if file not in server.sizes:
        return None
    first, last = file_sequence(file), file_sequence(server.file)
    later = [f for f in server.sizes if first < file_sequence(f) < last]
    return max(0, server.sizes[file] - pos) + sum(server.sizes[f] for f in later) + server.pos


# -- ZooKeeper -------------------------------------------------------------------------


# -- Kafka -----------------------------------------------------------------------------


@dataclass
class Offsets:
    """Kafka's view of the consumers' topics: partitions, offsets, oldest waiting message."""

    partitions: dict[str, list[int]] = field(default_factory=dict)
    beginning: dict[tuple[str, int], int] = field(default_factory=dict)
    end: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: dict[tuple[str, str, int], int] = field(default_factory=dict)
    timestamps: dict[tuple[str, int, int], int] = field(default_factory=dict)  # (t, p, offset)


async def _read_kafka(settings: Settings, mirrored: Mirrored) -> Offsets:
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
                position = _position(consumer.name, topic, partition, mirrored, found)
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


# -- the report ------------------------------------------------------------------------


def _service(error: str | None, **extra: Any) -> dict[str, Any]:
    return {"ok": error is None, "error": error, **extra}


def _source_entry(
    settings: Settings,
    source: SourceSettings,
    server: ServerPosition | None,
    checkpoint: Any | None,
    state: str | None,
    now_ms: int,
    why: str | None,
) -> dict[str, Any]:
    mysql = None if server is None else {
        "file": server.file, "pos": server.pos, "scn": scn_of(server.file, server.pos)
    }  # fmt: skip
    behind: dict[str, Any] = {"bytes": None, "scn": None, "seconds": None}
    error = why
    status = "unknown"
    if server is not None and checkpoint is not None:
        file, pos = str(checkpoint["file"]), int(checkpoint["pos"])
        caught_up = (file_sequence(file), pos) >= (file_sequence(server.file), server.pos) or (
            server.headers_only_after.get(pos, False) and file == server.file
        )
        if caught_up:
            behind = {"bytes": 0, "scn": 0, "seconds": 0.0}
        else:
            age = max(0.0, (now_ms - int(checkpoint.get("ts_ms") or 0)) / 1000)
            behind = {
                "bytes": _bytes_behind(server, file, pos),
                "scn": max(0, scn_of(server.file, server.pos) - scn_of(file, pos)),
                "seconds": round(age, 3),
            }
        status = grade(behind["seconds"], settings.lag.warn_seconds, settings.lag.critical_seconds)
        if not caught_up and behind["bytes"] is None:
            status = "critical"
            error = (
                f"the checkpoint's binlog {file} is no longer on the server; the relay cannot "
                "resume from it"
            )
    return {
        "name": source.name,
        "topic": source.topic,
        "state": state,
        "mysql": mysql,
        "checkpoint": checkpoint,
        "behind": behind,
        "status": status,
        "error": error,
    }


def _partition_entry(
    consumer: str,
    topic: str,
    partition: int,
    mirrored: Mirrored,
    offsets: Offsets | None,
    now_ms: int,
) -> dict[str, Any]:
    applied = mirrored.consumers.get((consumer, topic, partition)) or {}
    entry: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "scn": applied.get("scn"),
        "row": applied.get("row"),
        "offset": applied.get("offset"),
        "ts_ms": applied.get("ts_ms"),
        "committed": None,
        "end_offset": None,
        "events_behind": None,
        "seconds_behind": None,
    }
    if offsets is None or (topic, partition) not in offsets.end:
        return entry
    end = offsets.end[(topic, partition)]
    committed = offsets.committed.get((consumer, topic, partition))
    position = _position(consumer, topic, partition, mirrored, offsets)
    entry.update(committed=committed, end_offset=end, events_behind=max(0, end - position))
    if position >= end:
        entry["seconds_behind"] = 0.0
        return entry
    waiting_since = offsets.timestamps.get((topic, partition, position))
    if waiting_since is None or waiting_since < 0:
        waiting_since = entry["ts_ms"]
    if waiting_since is not None:
        entry["seconds_behind"] = round(max(0.0, (now_ms - waiting_since) / 1000), 3)
    return entry


def _position(
    consumer: str, topic: str, partition: int, mirrored: Mirrored, offsets: Offsets
) -> int:
    """The next offset the consumer processes: past its last applied change or its
    committed offset (skipped and dead-lettered messages commit too), whichever is further."""
    applied = mirrored.consumers.get((consumer, topic, partition)) or {}
    candidates = [offsets.beginning.get((topic, partition), 0)]
    if isinstance(applied.get("offset"), int):
        candidates.append(applied["offset"] + 1)
    committed = offsets.committed.get((consumer, topic, partition))
    if committed is not None:
        candidates.append(committed)
    return max(candidates)


def _consumer_entry(
    settings: Settings, consumer: Any, mirrored: Mirrored, offsets: Offsets | None, now_ms: int
) -> dict[str, Any]:
    keys: set[tuple[str, int]] = {(t, p) for (c, t, p) in mirrored.consumers if c == consumer.name}
    if offsets is not None:
        keys |= {(t, p) for t in consumer.topics for p in offsets.partitions.get(t, ())}
    partitions = [
        _partition_entry(consumer.name, t, p, mirrored, offsets, now_ms) for t, p in sorted(keys)
    ]
    events = [p["events_behind"] for p in partitions if p["events_behind"] is not None]
    seconds = [p["seconds_behind"] for p in partitions if p["seconds_behind"] is not None]
    unknown = not partitions or len(seconds) < len(partitions)
    seconds_behind = None if unknown else max(seconds)
    error = None
    if offsets is None:
        error = "Kafka is unreachable; offsets unknown"
    elif missing := [t for t in consumer.topics if t not in offsets.partitions]:
        error = f"not in Kafka (yet): {', '.join(missing)}"
    return {
        "name": consumer.name,
        "topics": list(consumer.topics),
        "events_behind": None if unknown else sum(events),
        "seconds_behind": seconds_behind,
        "status": grade(seconds_behind, settings.lag.warn_seconds, settings.lag.critical_seconds),
        "error": error,
        "partitions": partitions,
    }


def _no_checkpoint(settings: Settings, name: str, mirrored: Mirrored, zk_error: str | None) -> str:
    """Why a source shows no checkpoint."""
    path = f"{settings.zk_root}{relay_path(name)}"
    if not settings.zookeeper_enabled:
        return 'no checkpoint to read: the ZooKeeper mirror is disabled (zookeeper = "")'
    if zk_error is not None:
        return zk_error
    if path in mirrored.bad:
        return f"ZooKeeper {path}: {mirrored.bad[path]}"
    return f"no checkpoint at ZooKeeper {path} yet (has the relay run?)"


def _add_reader(
    settings: Settings,
    entry: dict[str, Any],
    beat: Mapping[str, Any] | None,
    here: bool,
    known: bool,
    now_ms: int,
) -> None:
    """Which worker runs the source's relay (its heartbeat), and whether none does: a stale
    heartbeat, or none at all beside a checkpoint, means no live worker reads the source."""
    reader: dict[str, Any] | None = None
    if beat is not None:
        seconds_ago = round(max(0.0, (now_ms - int(beat["ts_ms"])) / 1000), 3)
        reader = {
            "worker": beat.get("worker"),
            "state": beat.get("state"),
            "seconds_ago": seconds_ago,
        }
    unread: bool | None = None
    if here:
        unread = False
    elif known and reader is not None:
        unread = reader["seconds_ago"] >= settings.lag.unread_seconds
    elif known and entry["checkpoint"] is not None:
        unread = True
    entry["reader"], entry["unread"] = reader, unread
    if unread:
        entry["status"] = "critical"
        if reader is None:
            note = "no worker runs its relay (no heartbeat in ZooKeeper)"
        else:
            note = (
                f"no worker runs its relay: the last heartbeat, from {reader['worker']}, "
                f"is {reader['seconds_ago']:.0f}s old"
            )
        entry["error"] = note if entry["error"] is None else f"{entry['error']}; {note}"


def unread_sources(report: Mapping[str, Any]) -> list[str]:
    """One line per source that no live worker reads."""
    return [f"source {s['name']}: {s['error']}" for s in report["sources"] if s.get("unread")]


async def build_report(
    settings: Settings, relay_states: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The lag report (see the module's docstring for the meaning of each number).

    ``relay_states``: the state of the relays this worker runs, by source name.
    Never raises for an unreachable service: it is reported under ``services``.
    """

    async def mysql(source: SourceSettings, checkpoint: Any) -> ServerPosition | str:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(_read_server, source, checkpoint), 3 * CONNECT_TIMEOUT_S
            )
        except Exception as exc:
            return f"cannot reach {source.mysql}: {_error(exc)}"

    zk_error: str | None = None
    mirrored = Mirrored()
    if settings.zookeeper_enabled:
        try:
            mirrored = await asyncio.wait_for(
                asyncio.to_thread(read_mirrored, settings, CONNECT_TIMEOUT_S),
                3 * CONNECT_TIMEOUT_S,
            )
        except ZooKeeperUnreachable as exc:
            zk_error = str(exc)
        except Exception as exc:
            zk_error = f"cannot reach ZooKeeper at {settings.zookeeper}: {_error(exc)}"

    async def kafka() -> Offsets | str:
        try:
            return await asyncio.wait_for(_read_kafka(settings, mirrored), 4 * CONNECT_TIMEOUT_S)
        except Exception as exc:
            return f"cannot reach Kafka at {settings.kafka}: {_error(exc)}"

    servers, kafka_result = await asyncio.gather(
        asyncio.gather(*(mysql(s, mirrored.relays.get(s.name)) for s in settings.sources)),
        kafka(),
    )
    kafka_error = kafka_result if isinstance(kafka_result, str) else None
    offsets = None if isinstance(kafka_result, str) else kafka_result
    now_ms = int(time.time() * 1000)
    sources = []
    mysql_services = {}
    for source, server in zip(settings.sources, servers, strict=True):
        mysql_error = server if isinstance(server, str) else None
        mysql_services[source.name] = _service(mysql_error)
        checkpoint = mirrored.relays.get(source.name)
        why = mysql_error
        if checkpoint is None and why is None:
            why = _no_checkpoint(settings, source.name, mirrored, zk_error)
        entry = _source_entry(
            settings,
            source,
            None if isinstance(server, str) else server,
            checkpoint,
            (relay_states or {}).get(source.name),
            now_ms,
            why,
        )
        here = source.name in (relay_states or {})
        known = settings.zookeeper_enabled and zk_error is None
        _add_reader(settings, entry, mirrored.heartbeats.get(source.name), here, known, now_ms)
        sources.append(entry)
    consumers = [
        _consumer_entry(settings, c, mirrored, offsets, now_ms) for c in settings.consumers
    ]
    return {
        "ts_ms": now_ms,
        "status": worst([s["status"] for s in sources] + [c["status"] for c in consumers]),
        "services": {
            "mysql": mysql_services,
            "kafka": _service(kafka_error),
            "zookeeper": _service(zk_error, enabled=settings.zookeeper_enabled),
        },
        "sources": sources,
        "consumers": consumers,
        "thresholds": {
            "warn_seconds": settings.lag.warn_seconds,
            "critical_seconds": settings.lag.critical_seconds,
        },
    }
