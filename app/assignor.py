"""The group's partition assignment, made whole again when the leader's metadata lacks a topic.

Faust's assignor leaves out a subscribed topic that the leader's metadata does not list
("Ignoring missing topic"): right after a Kafka restart, or when another worker created the
topic a moment before the group formed. Its partitions (the relay's checkpoint partitions
among them) are then assigned to nobody until the leader next refreshes its metadata, five
minutes later by default. Here the leader refreshes at once, and again every
``REFRESH_EVERY_S`` until every topic shows up; aiokafka's coordinator then sees the metadata
change and rebalances the group, this time with every partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faust.assignor import PartitionAssignor

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 1.0
REFRESH_FOR_S = 60.0


def _client(app: Any) -> Any | None:
    """The aiokafka client of the app's consumer (it lives on the consumer's thread)."""
    with contextlib.suppress(Exception):
        return app.consumer._thread._ensure_consumer()
    return None


class WholeAssignor(PartitionAssignor):
    """Faust's assignor; if a subscribed topic is missing, refreshes metadata until it is not."""

    _refreshing: asyncio.Task[None] | None = None

    def assign(self, cluster: Any, member_metadata: Any) -> Any:
        assignment = super().assign(cluster, member_metadata)
        self.watch_missing(cluster, member_metadata)
        return assignment

    def watch_missing(self, cluster: Any, member_metadata: Any) -> None:
        """Refresh metadata in the background while a subscribed topic is missing from it."""
        topics = {t for metadata in member_metadata.values() for t in metadata.subscription}
        missing = sorted(t for t in topics if not cluster.partitions_for_topic(t))
        if missing and (self._refreshing is None or self._refreshing.done()):
            log.warning(
                "assignment: Kafka's metadata lacks %s; their partitions wait for a refresh",
                ", ".join(missing),
            )
            # assign() runs on the consumer thread's loop, where the client lives.
            self._refreshing = asyncio.ensure_future(self._refresh(cluster, missing))

    async def _refresh(self, cluster: Any, missing: list[str]) -> None:
        consumer = _client(self.app)
        if consumer is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REFRESH_FOR_S
        while loop.time() < deadline:
            with contextlib.suppress(Exception):
                await consumer._client.force_metadata_update()
            if all(cluster.partitions_for_topic(t) for t in missing):
                log.info("assignment: metadata lists %s now; rebalancing", ", ".join(missing))
                return
            await asyncio.sleep(REFRESH_EVERY_S)
        log.warning("assignment: %s still missing from Kafka's metadata", ", ".join(missing))


def request_rejoin(app: Any) -> None:
    """Make this worker refresh its metadata and rejoin the group (a rebalance follows)."""
    thread = getattr(app.consumer, "_thread", None)
    consumer = _client(app)
    if thread is None or consumer is None:
        return

    def rejoin() -> None:
        consumer._client.force_metadata_update()
        consumer._coordinator.request_rejoin()

    with contextlib.suppress(RuntimeError):  # the consumer's loop closed at shutdown
        thread.thread_loop.call_soon_threadsafe(rejoin)
