"""Registers the relay with the worker: relays follow their checkpoint partitions."""

from __future__ import annotations

from typing import Any

from app import group_lease
from app.settings import Settings
from relay.service import RelayManager
from tables.checkpoints import CheckpointStore


def install(app: Any, settings: Settings, store: CheckpointStore) -> RelayManager:
    """Add the relay manager to the app, started after the ZooKeeper mirror, and tie it to
    the checkpoint table's recovery and to revoked partitions."""
    relays = RelayManager(
        app,
        settings.sources,
        store,
        settings.lag.unread_seconds,
        group_lease.install(app, settings.session_timeout),
        settings.session_timeout,
        loop=app.loop,
        beacon=app.beacon,
    )
    relays.add_dependency(store.zk)
    app.service(relays)

    async def start_owned_relays() -> None:
        await relays.on_recovered()

    async def stop_revoked_relays(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        await relays.on_revoked(revoked)

    store.table.on_recover(start_owned_relays)
    app.on_partitions_revoked.connect(stop_revoked_relays)
    # Relays stop first when the worker stops: they drain and save their checkpoints while
    # the producer and the group are still there (the manager itself, and the ZooKeeper
    # mirror it depends on, stop later, after the consumers).
    app.first_at_stop.append(relays.stop_relays)
    return relays
