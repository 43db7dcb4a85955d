"""The relay of a worker: one SourceRelay per source whose checkpoint partition it holds.

A source's relay runs on the worker that holds its checkpoint partition as active, so a
group of workers runs each source exactly once and hands it over on rebalance.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mode import Service

from app.settings import SourceSettings
from relay.source import SourceRelay
from tables.checkpoints import CheckpointStore, partition_of, source_to_checkpoint

log = logging.getLogger(__name__)


class RelayManager(Service):
    """Starts the relays whose checkpoint partitions this worker holds, stops revoked ones."""

    def __init__(self, app: Any, sources: tuple[SourceSettings, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.sources = sources
        self.store = CheckpointStore()
        self.relays: dict[str, SourceRelay] = {}
        self._lock = asyncio.Lock()

    def owned(self) -> list[SourceSettings]:
        topic = source_to_checkpoint.changelog_topic_name
        partitions = {
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic
        }
        return [s for s in self.sources if partition_of(s.name) in partitions]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per source this worker runs, its relay's state (see ``relay.source``)."""
        return {name: relay.status() for name, relay in sorted(self.relays.items())}

    async def on_recovered(self) -> None:
        """After table recovery: run what we own, stop what we no longer own."""
        async with self._lock:
            wanted = {s.name: s for s in self.owned()}
            for name in list(self.relays):
                if name not in wanted:
                    await self.relays.pop(name).stop()
            for name, source in wanted.items():
                if name not in self.relays:
                    relay = self.relays[name] = SourceRelay(self.app, source, self.store)
                    relay.start()

    async def on_revoked(self, revoked: set[Any]) -> None:
        topic = source_to_checkpoint.changelog_topic_name
        lost = {tp.partition for tp in revoked if tp.topic == topic}
        async with self._lock:
            for name in [n for n in self.relays if partition_of(n) in lost]:
                log.info("relay %s: partition revoked; stopping", name)
                await self.relays.pop(name).stop()

    async def on_stop(self) -> None:
        async with self._lock:
            await asyncio.gather(*(relay.stop() for relay in self.relays.values()))
            self.relays.clear()
