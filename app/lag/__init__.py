"""The lag report: how far each relay is behind MySQL and each consumer behind Kafka.

It reads only what outlives a worker: relay checkpoints and consumer positions from the
ZooKeeper mirror (or, with the mirror off, from their Kafka changelog topics), MySQL's current
position, and Kafka's offsets; so ``aesop lag`` works with no
worker up, and ``GET /lag`` on a worker shows the same numbers (plus the relay's state there).

``app.lag.probes`` does the reading; ``app.lag.report`` assembles the report from what was read,
with no I/O, and defines what each number means.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from app.lag.probes import probe_changelogs, probe_kafka, probe_mysql, probe_zookeeper
from app.lag.report import LagReport, assemble, grade, unread_sources, worst
from app.settings import Settings

__all__ = ["LagReport", "assemble", "build_report", "grade", "unread_sources", "worst"]


async def build_report(
    settings: Settings, relay_states: Mapping[str, str] | None = None
) -> LagReport:
    """The lag report: the probes, then :func:`~app.lag.report.assemble`.

    ``relay_states``: the state of the relays this worker runs, by source name.
    Never raises for an unreachable service: it is reported under ``services``.
    """
    if settings.zookeeper_enabled:
        zookeeper = await probe_zookeeper(settings)
    else:
        zookeeper = await probe_changelogs(settings)
    mirrored = zookeeper.mirrored
    servers, kafka = await asyncio.gather(
        asyncio.gather(*(probe_mysql(s, mirrored.relays.get(s.name)) for s in settings.sources)),
        probe_kafka(settings, mirrored),
    )
    mysql = {s.name: probe for s, probe in zip(settings.sources, servers, strict=True)}
    now_ms = int(time.time() * 1000)
    return assemble(settings, zookeeper, mysql, kafka, now_ms, relay_states)
