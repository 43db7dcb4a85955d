"""Each worker's ``GET /health`` and ``GET /lag``, and the scheduled lag email.

Both views share one lag report, built at most every ``REFRESH_S`` seconds however often they
are asked, so a busy health checker costs one round of MySQL, ZooKeeper and Kafka reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from faust import web

from app import mail
from app.errors import AesopError
from app.lag import LagReport, build_report
from app.settings import Settings

log = logging.getLogger(__name__)

REFRESH_S = 2.0


def health(
    report: LagReport,
    relays: dict[str, dict[str, Any]],
    unread: list[str] | None,
    stalled: list[str],
) -> dict[str, Any]:
    """What is down: unreachable services, relays of this worker that are not reading,
    sources no live worker reads, as this worker has watched them (``unread``; None while it
    is younger than ``[lag] unread_seconds``), and consumer partitions stalled here."""
    down = mail.down_services(report)
    for name, status in relays.items():
        if status["state"] != "reading":
            reason = f": {status['reason']}" if status["reason"] else ""
            down.append(f"relay {name}: {status['state']}{reason}")
    down += unread or []
    down += stalled
    services = report.services.to_json()
    return {"ok": not down, "down": down, "services": services, "relays": relays}


class Monitor:
    """What this worker knows of the pipeline: the latest lag report (concurrent callers wait
    for one build instead of starting many), its relays and its consumers."""

    def __init__(self, settings: Settings, relays: Any, consumers: Sequence[Any]) -> None:
        self.settings = settings
        self.relays = relays
        self.consumers = consumers
        self._report: LagReport | None = None
        self._built_at = 0.0
        self._lock = asyncio.Lock()

    async def report(self) -> LagReport:
        async with self._lock:
            if self._report is None or time.monotonic() - self._built_at >= REFRESH_S:
                states = {name: s["state"] for name, s in self.relay_status().items()}
                self._report = await build_report(self.settings, states)
                self._built_at = time.monotonic()
            return self._report

    def relay_status(self) -> dict[str, dict[str, Any]]:
        """The state of each relay this worker runs (``relay.source``), by source name."""
        status: dict[str, dict[str, Any]] = self.relays.status()
        return status

    def unread_here(self) -> list[str] | None:
        """Sources this worker has seen go unread for ``[lag] unread_seconds`` (counted from
        its own start at the most, so a fresh worker waits before it judges)."""
        if time.time() - self.relays.started_at < self.settings.lag.unread_seconds:
            return None
        lines = []
        for source in self.settings.sources:
            seconds = self.relays.unread_for(source.name)
            if seconds is not None:
                lines.append(
                    f"source {source.name}: no worker has run its relay for {seconds:.0f}s"
                )
        return lines

    def stalled_here(self) -> list[str]:
        """Consumer partitions held by this worker with changes waiting and none processed
        for ``[lag] stalled_seconds`` (``agents.consumer``)."""
        return [line for runner in self.consumers for line in runner.stalled()]

    async def health(self) -> dict[str, Any]:
        return health(
            await self.report(), self.relay_status(), self.unread_here(), self.stalled_here()
        )

    async def email_lag(self) -> None:
        """Send the lag report through [smtp]; a failure is logged, the next run tries again."""
        smtp = self.settings.smtp
        assert smtp is not None
        try:
            await mail.send(self.settings, await self.report())
        except AesopError as exc:
            log.error("lag email: %s", exc)
        else:
            log.info("lag email: sent to %s", ", ".join(smtp.to))


def install(app: Any, settings: Settings, relays: Any, consumers: Sequence[Any]) -> Monitor:
    """Serve ``/health`` and ``/lag``, and schedule the lag email when [smtp] asks for one."""
    monitor = Monitor(settings, relays, consumers)

    class Health(web.View):
        """200 when MySQL (each source), Kafka and ZooKeeper answer, every relay here reads,
        every source is read somewhere and no consumer partition here is stalled."""

        async def get(self, request: web.Request) -> web.Response:
            body = await monitor.health()
            return self.json(body, status=200 if body["ok"] else 503)

    class Lag(web.View):
        """The lag report (``app.lag``), as JSON."""

        async def get(self, request: web.Request) -> web.Response:
            report = await monitor.report()
            return self.json(report.to_json())

    app.page("/health")(Health)
    app.page("/lag")(Lag)
    if settings.smtp is not None and settings.smtp.schedule:
        # On the leader only: a group of workers sends one email per run, not one each.
        app.crontab(settings.smtp.schedule, on_leader=True)(monitor.email_lag)
    return monitor
