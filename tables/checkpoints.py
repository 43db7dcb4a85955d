"""Relay checkpoints: the changelog-backed ``source_to_checkpoint`` table, mirrored to ZooKeeper.

The relay writes checkpoints itself (it is not a stream processor), so it picks the
changelog partition of each source explicitly; the worker that holds that partition as
active is the one that runs the source's reader.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from app.settings import Settings
from tables.paths import relay_path
from tables.positions import Checkpoint
from tables.zookeeper import CALL_TIMEOUT_S, ZooKeeperMirror

TABLE_NAME = "source_to_checkpoint"


def partition_of(source_name: str, partitions: int) -> int:
    """The changelog partition holding a source's checkpoint; stable across workers."""
    return zlib.crc32(source_name.encode()) % partitions


class CheckpointStore:
    """Reads and writes checkpoints: table first, ZooKeeper mirror second."""

    def __init__(self, table: Any, zk: ZooKeeperMirror, partitions: int) -> None:
        self.table = table
        self.zk = zk
        self.partitions = partitions

    @property
    def topic(self) -> str:
        """The table's changelog topic, whose partitions decide where each relay runs."""
        return str(self.table.changelog_topic_name)

    def partition_of(self, source_name: str) -> int:
        return partition_of(source_name, self.partitions)

    def stored(self, source_name: str) -> Checkpoint | None:
        data = self.table.data.get(source_name)
        return None if data is None else Checkpoint.from_json(data)

    async def mirrored(
        self, source_name: str, timeout: float = CALL_TIMEOUT_S
    ) -> Checkpoint | None:
        data = await self.zk.read(relay_path(source_name), timeout)
        return None if data is None else Checkpoint.from_json(data)

    async def save(self, source_name: str, checkpoint: Checkpoint) -> None:
        """Write to the table's changelog and wait for Kafka's ack; then mirror, lazily."""
        document = checkpoint.to_json()
        self.table.data[source_name] = document
        sent = self.table.send_changelog(self.partition_of(source_name), source_name, document)
        # Shielded: a cancelled saver must not cancel the send (Faust then fails to set its
        # result, with a traceback); the relay saves again after cancelling it.
        await asyncio.shield(sent)
        self.zk.publish(relay_path(source_name), document)


def install(app: Any, settings: Settings) -> CheckpointStore:
    """Register the checkpoint table and the ZooKeeper mirror (a service) on the app."""
    table = app.Table(
        TABLE_NAME,
        default=None,
        partitions=settings.partitions,
        help="Relay checkpoint per source: {file, pos, gtid, scn, row, ts_ms}.",
    )
    mirror = ZooKeeperMirror(settings.zookeeper, settings.zk_root, loop=app.loop, beacon=app.beacon)
    app.service(mirror)
    return CheckpointStore(table, mirror, settings.partitions)
