"""Registers the relay with the worker: relays follow their checkpoint partitions."""

from __future__ import annotations

from typing import Any

from app.main import app, settings
from relay import logfilter
from relay.service import RelayManager
from tables.checkpoints import mirror, source_to_checkpoint

# While Kafka is unreachable aiokafka repeats its connection errors ~130 times a second.
logfilter.install()

relays = RelayManager(
    app, settings.sources, settings.lag.unread_seconds, loop=app.loop, beacon=app.beacon
)
relays.add_dependency(mirror)
app.service(relays)


@source_to_checkpoint.on_recover
async def start_owned_relays() -> None:
    await relays.on_recovered()


@app.on_partitions_revoked.connect
async def stop_revoked_relays(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
    await relays.on_revoked(revoked)
