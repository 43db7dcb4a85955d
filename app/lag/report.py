"""The lag report: how far each relay is behind MySQL and each consumer behind Kafka.

:func:`assemble` builds it from what the probes (``app.lag.probes``) read: relay checkpoints,
heartbeats and consumer positions from the ZooKeeper mirror (with the mirror off, checkpoints
and positions from their Kafka changelog topics, and no heartbeats), MySQL's current position,
and Kafka's offsets. It does no I/O. :meth:`LagReport.to_json` is the document ``GET /lag``
serves and ``aesop lag --json`` prints: its keys are the dataclasses' field names, in their
order (each service adds ``ok``, and ZooKeeper's ``enabled`` is its own key there);
``positions`` says where checkpoints and positions were read from.

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

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from app.lag.probes import KafkaProbe, MySQLProbe, Offsets, ServerPosition, ZooKeeperProbe
from app.settings import ConsumerSettings, Settings, SourceSettings
from tables.changelogs import changelog_topics, checkpoint_changelog
from tables.mirrored import Mirrored
from tables.paths import relay_path
from tables.positions import Checkpoint, file_sequence, scn_of

STATUS_ORDER = ("ok", "unknown", "warn", "critical")


def worst(statuses: Iterable[str]) -> str:
    """The most alarming of ``statuses`` (critical > warn > unknown > ok); ok for none."""
    return max(statuses, key=STATUS_ORDER.index, default="ok")


def grade(seconds: float | None, warn: float, critical: float) -> str:
    if seconds is None:
        return "unknown"
    if seconds >= critical:
        return "critical"
    return "warn" if seconds >= warn else "ok"


# -- the report's parts ----------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """Whether a service answered the probes; ``error`` says why not."""

    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error}


@dataclass(frozen=True)
class Services:
    """Each source's MySQL (by source name), Kafka and ZooKeeper."""

    mysql: Mapping[str, ServiceStatus]
    kafka: ServiceStatus
    zookeeper: ServiceStatus
    zookeeper_enabled: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "mysql": {name: status.to_json() for name, status in self.mysql.items()},
            "kafka": self.kafka.to_json(),
            "zookeeper": {**self.zookeeper.to_json(), "enabled": self.zookeeper_enabled},
        }


@dataclass(frozen=True)
class PositionsSource:
    """Where the report read relay checkpoints and consumer positions: ``read_from`` is
    ``"zookeeper"`` (the mirror) or ``"changelogs"`` (the tables' Kafka changelog topics, when
    the mirror is off); ``where`` names the ensemble and root, or the topics."""

    read_from: str
    where: str
    error: str | None = None

    def line(self) -> str:
        """The text report's line."""
        text = f"positions: read from {self.where}"
        return text if self.error is None else f"{text}: {self.error}"


def positions_source(settings: Settings, error: str | None) -> PositionsSource:
    if settings.zookeeper_enabled:
        where = f"ZooKeeper {settings.zookeeper} {settings.zk_root}"
        return PositionsSource("zookeeper", where, error)
    where = f"Kafka changelogs {', '.join(changelog_topics(settings))}"
    return PositionsSource("changelogs", where, error)


@dataclass(frozen=True)
class BinlogPosition:
    """MySQL's current position."""

    file: str
    pos: int
    scn: int


@dataclass(frozen=True)
class Behind:
    """How far a relay's checkpoint is behind MySQL; None where that is not known."""

    bytes: int | None = None
    scn: int | None = None
    seconds: float | None = None


CAUGHT_UP = Behind(bytes=0, scn=0, seconds=0.0)


@dataclass(frozen=True)
class Reader:
    """The worker whose heartbeat says it runs a source's relay, as the heartbeat has it."""

    worker: Any
    state: Any
    seconds_ago: float


@dataclass(frozen=True)
class SourceLag:
    """One source's relay: where MySQL is, where the relay's checkpoint is, how far apart."""

    name: str
    topic: str
    state: str | None  # of the relay on the worker building the report; None elsewhere
    mysql: BinlogPosition | None
    checkpoint: Checkpoint | None
    behind: Behind
    status: str
    error: str | None
    reader: Reader | None
    unread: bool | None  # None when it cannot be told (no ZooKeeper, no checkpoint)

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as stored: with its ``snapshot`` while one is under way."""
        data = asdict(self)
        data["checkpoint"] = None if self.checkpoint is None else self.checkpoint.to_json()
        return data


@dataclass(frozen=True)
class PartitionLag:
    """A consumer in one partition: its applied position as the mirror holds it (``scn``,
    ``row`` and ``ts_ms`` unchecked) and Kafka's offsets; None where not known."""

    topic: str
    partition: int
    scn: Any
    row: Any
    offset: int | None
    ts_ms: Any
    committed: int | None = None
    end_offset: int | None = None
    events_behind: int | None = None
    seconds_behind: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConsumerLag:
    """A consumer: its partitions, and their sum (events) and maximum (seconds) when every
    partition's seconds are known."""

    name: str
    topics: tuple[str, ...]
    events_behind: int | None
    seconds_behind: float | None
    status: str
    error: str | None
    partitions: tuple[PartitionLag, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "topics": list(self.topics),
            "events_behind": self.events_behind,
            "seconds_behind": self.seconds_behind,
            "status": self.status,
            "error": self.error,
            "partitions": [p.to_json() for p in self.partitions],
        }


@dataclass(frozen=True)
class Thresholds:
    warn_seconds: float
    critical_seconds: float


@dataclass(frozen=True)
class LagReport:
    """The whole report; ``status`` is the worst of its sources' and consumers'."""

    ts_ms: int
    status: str
    services: Services
    sources: tuple[SourceLag, ...]
    consumers: tuple[ConsumerLag, ...]
    thresholds: Thresholds
    positions: PositionsSource

    def to_json(self) -> dict[str, Any]:
        return {
            "ts_ms": self.ts_ms,
            "status": self.status,
            "services": self.services.to_json(),
            "positions": asdict(self.positions),
            "sources": [s.to_json() for s in self.sources],
            "consumers": [c.to_json() for c in self.consumers],
            "thresholds": asdict(self.thresholds),
        }


def unread_sources(report: LagReport) -> list[str]:
    """One line per source that no live worker reads."""
    return [f"source {s.name}: {s.error}" for s in report.sources if s.unread]


# -- assembly --------------------------------------------------------------------------


def assemble(
    settings: Settings,
    zookeeper: ZooKeeperProbe,
    mysql: Mapping[str, MySQLProbe],
    kafka: KafkaProbe,
    now_ms: int,
    relay_states: Mapping[str, str] | None = None,
) -> LagReport:
    """The report from the probes' results: ``mysql`` by source name, ``now_ms`` the time it
    is taken at, ``relay_states`` the state of the relays this worker runs, by source name.
    ``zookeeper`` is what the ZooKeeper mirror held, or, with the mirror off, what the
    changelog topics held (its error is then not ZooKeeper's)."""
    states = relay_states or {}
    sources = tuple(
        _source(settings, source, mysql[source.name], zookeeper, states, now_ms)
        for source in settings.sources
    )
    mirrored = zookeeper.mirrored
    consumers = tuple(
        _consumer(settings, c, mirrored, kafka.offsets, now_ms) for c in settings.consumers
    )
    return LagReport(
        ts_ms=now_ms,
        status=worst([s.status for s in sources] + [c.status for c in consumers]),
        services=Services(
            mysql={s.name: ServiceStatus(mysql[s.name].error) for s in settings.sources},
            kafka=ServiceStatus(kafka.error),
            zookeeper=ServiceStatus(zookeeper.error if settings.zookeeper_enabled else None),
            zookeeper_enabled=settings.zookeeper_enabled,
        ),
        sources=sources,
        consumers=consumers,
        thresholds=Thresholds(settings.lag.warn_seconds, settings.lag.critical_seconds),
        positions=positions_source(settings, zookeeper.error),
    )


def _source(
    settings: Settings,
    source: SourceSettings,
    probe: MySQLProbe,
    zookeeper: ZooKeeperProbe,
    relay_states: Mapping[str, str],
    now_ms: int,
) -> SourceLag:
    server = probe.server
    position = None
    if server is not None:
        position = BinlogPosition(server.file, server.pos, scn_of(server.file, server.pos))
    document = zookeeper.mirrored.relays.get(source.name)
    checkpoint = None if document is None else Checkpoint.from_json(document)
    error = probe.error
    if checkpoint is None and error is None:
        error = _no_checkpoint(settings, source.name, zookeeper)
    behind, status = Behind(), "unknown"
    if server is not None and checkpoint is not None:
        behind = _relay_behind(server, checkpoint, now_ms)
        status = grade(behind.seconds, settings.lag.warn_seconds, settings.lag.critical_seconds)
        if behind.bytes is None:
            status = "critical"
            error = (
                f"the checkpoint's binlog {checkpoint.file} is no longer on the server; the "
                "relay cannot resume from it"
            )
    reader = _reader(zookeeper.mirrored.heartbeats.get(source.name), now_ms)
    here = source.name in relay_states
    unread = _unread(settings, zookeeper, here, reader, checkpoint)
    if unread:
        status = "critical"
        note = _unread_note(reader)
        error = note if error is None else f"{error}; {note}"
    return SourceLag(
        name=source.name,
        topic=source.topic,
        state=relay_states.get(source.name),
        mysql=position,
        checkpoint=checkpoint,
        behind=behind,
        status=status,
        error=error,
        reader=reader,
        unread=unread,
    )


def _relay_behind(server: ServerPosition, checkpoint: Checkpoint, now_ms: int) -> Behind:
    """Nothing when the checkpoint is at (or past) the server's position, or only file headers
    follow it; else the binlog distance (bytes None when its file is gone) and its age."""
    file, pos = checkpoint.file, checkpoint.pos
    caught_up = (file_sequence(file), pos) >= (file_sequence(server.file), server.pos) or (
        server.headers_only_after.get(pos, False) and file == server.file
    )
    if caught_up:
        return CAUGHT_UP
    age = max(0.0, (now_ms - checkpoint.ts_ms) / 1000)
    return Behind(
        bytes=server.bytes_behind(file, pos),
        scn=max(0, scn_of(server.file, server.pos) - scn_of(file, pos)),
        seconds=round(age, 3),
    )


def _no_checkpoint(settings: Settings, name: str, zookeeper: ZooKeeperProbe) -> str:
    """Why a source shows no checkpoint."""
    path = f"{settings.zk_root}{relay_path(name)}"
    if zookeeper.error is not None:
        return zookeeper.error
    if not settings.zookeeper_enabled:
        topic = checkpoint_changelog(settings)
        bad = zookeeper.mirrored.bad.get(f"{topic} key {name!r}")
        if bad is not None:
            return f"Kafka changelog {topic}, key {name!r}: {bad}"
        return f"no checkpoint in Kafka changelog {topic} yet (has the relay run?)"
    if path in zookeeper.mirrored.bad:
        return f"ZooKeeper {path}: {zookeeper.mirrored.bad[path]}"
    return f"no checkpoint at ZooKeeper {path} yet (has the relay run?)"


def _reader(beat: Mapping[str, Any] | None, now_ms: int) -> Reader | None:
    """Which worker runs the source's relay, by its heartbeat."""
    if beat is None:
        return None
    seconds_ago = round(max(0.0, (now_ms - int(beat["ts_ms"])) / 1000), 3)
    return Reader(worker=beat.get("worker"), state=beat.get("state"), seconds_ago=seconds_ago)


def _unread(
    settings: Settings,
    zookeeper: ZooKeeperProbe,
    here: bool,
    reader: Reader | None,
    checkpoint: Checkpoint | None,
) -> bool | None:
    """Whether no live worker reads the source: False when its relay runs on this worker
    (``here``); else, as ZooKeeper tells, a stale heartbeat, or none beside a checkpoint. None
    when that cannot be told (no ZooKeeper, or neither heartbeat nor checkpoint)."""
    if here:
        return False
    if not settings.zookeeper_enabled or zookeeper.error is not None:
        return None
    if reader is not None:
        return reader.seconds_ago >= settings.lag.unread_seconds
    return True if checkpoint is not None else None


def _unread_note(reader: Reader | None) -> str:
    """The line saying no live worker reads a source."""
    if reader is None:
        return "no worker runs its relay (no heartbeat in ZooKeeper)"
    return (
        f"no worker runs its relay: the last heartbeat, from {reader.worker}, "
        f"is {reader.seconds_ago:.0f}s old"
    )


def _consumer(
    settings: Settings,
    consumer: ConsumerSettings,
    mirrored: Mirrored,
    offsets: Offsets | None,
    now_ms: int,
) -> ConsumerLag:
    keys: set[tuple[str, int]] = {(t, p) for (c, t, p) in mirrored.consumers if c == consumer.name}
    if offsets is not None:
        keys |= {(t, p) for t in consumer.topics for p in offsets.partitions.get(t, ())}
    partitions = tuple(
        _partition(consumer.name, t, p, mirrored, offsets, now_ms) for t, p in sorted(keys)
    )
    events = [p.events_behind for p in partitions if p.events_behind is not None]
    seconds = [p.seconds_behind for p in partitions if p.seconds_behind is not None]
    unknown = not partitions or len(seconds) < len(partitions)
    seconds_behind = None if unknown else max(seconds)
    error = None
    if offsets is None:
        error = "Kafka is unreachable; offsets unknown"
    elif missing := [t for t in consumer.topics if t not in offsets.partitions]:
        error = f"not in Kafka (yet): {', '.join(missing)}"
    return ConsumerLag(
        name=consumer.name,
        topics=tuple(consumer.topics),
        events_behind=None if unknown else sum(events),
        seconds_behind=seconds_behind,
        status=grade(seconds_behind, settings.lag.warn_seconds, settings.lag.critical_seconds),
        error=error,
        partitions=partitions,
    )


def _partition(
    consumer: str,
    topic: str,
    partition: int,
    mirrored: Mirrored,
    offsets: Offsets | None,
    now_ms: int,
) -> PartitionLag:
    applied = mirrored.consumers.get((consumer, topic, partition))
    mirror = PartitionLag(
        topic=topic,
        partition=partition,
        scn=None if applied is None else applied.scn,
        row=None if applied is None else applied.row,
        offset=None if applied is None else applied.offset,
        ts_ms=None if applied is None else applied.ts_ms,
    )
    if offsets is None or (topic, partition) not in offsets.end:
        return mirror
    end = offsets.end[(topic, partition)]
    position = offsets.position(consumer, topic, partition, mirrored)
    seconds: float | None = 0.0
    if position < end:
        waiting_since = offsets.timestamps.get((topic, partition, position))
        if waiting_since is None or waiting_since < 0:
            waiting_since = mirror.ts_ms
        seconds = None
        if waiting_since is not None:
            seconds = round(max(0.0, (now_ms - waiting_since) / 1000), 3)
    return replace(
        mirror,
        committed=offsets.committed.get((consumer, topic, partition)),
        end_offset=end,
        events_behind=max(0, end - position),
        seconds_behind=seconds,
    )
