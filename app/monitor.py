"""Each worker's ``GET /health`` and ``GET /lag``, and the scheduled lag email.

Both views share one lag report, built at most every ``REFRESH_S`` seconds however often they
are asked, so a busy health checker costs one round of MySQL, ZooKeeper and Kafka reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust import web

from app import mail
from app.errors import AesopError
from app.lag import build_report
from app.main import app, settings

log = logging.getLogger(__name__)

REFRESH_S = 2.0


def relay_status() -> dict[str, dict[str, Any]]:
    """The state of each relay this worker runs (``relay.source``), by source name."""
    from relay.worker import relays

    return relays.status()


def unread_here() -> list[str] | None:
    """Sources this worker has seen go unread for ``[lag] unread_seconds`` (counted from its
    own start at the most, so a fresh worker waits before it judges)."""
    from relay.worker import relays

    if time.time() - relays.started_at < settings.lag.unread_seconds:
        return None
    lines = []
    for source in settings.sources:
        seconds = relays.unread_for(source.name)
        if seconds is not None:
            lines.append(f"source {source.name}: no worker has run its relay for {seconds:.0f}s")
    return lines


class Reports:
    """The latest lag report; concurrent callers wait for one build instead of starting many."""

    def __init__(self) -> None:
        self._report: dict[str, Any] | None = None
        self._built_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._report is None or time.monotonic() - self._built_at >= REFRESH_S:
                states = {name: s["state"] for name, s in relay_status().items()}
                self._report = await build_report(settings, states)
                self._built_at = time.monotonic()
            return self._report


reports = Reports()


def stalled_here() -> list[str]:
    """Consumer partitions held by this worker with changes waiting and none processed for
    ``[lag] stalled_seconds`` (``agents.consumer``)."""
    from agents.worker import consumers

    return [line for runner in consumers for line in runner.stalled()]


def health(
    report: dict[str, Any],
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
    return {"ok": not down, "down": down, "services": report["services"], "relays": relays}


@app.page("/health")
class Health(web.View):
    """200 when MySQL (each source), Kafka and ZooKeeper answer, every relay here reads, every
    source is read somewhere and no consumer partition here is stalled."""

    async def get(self, request: web.Request) -> web.Response:
        body = health(await reports.get(), relay_status(), unread_here(), stalled_here())
        return self.json(body, status=200 if body["ok"] else 503)


@app.page("/lag")
class Lag(web.View):
    """The lag report (``app.lag``), as JSON."""

    async def get(self, request: web.Request) -> web.Response:
        return self.json(await reports.get())


async def email_lag() -> None:
    """Send the lag report through [smtp]; a failure is logged, and the next run tries again."""
    assert settings.smtp is not None
    try:
        await mail.send(settings, await reports.get())
    except AesopError as exc:
        log.error("lag email: %s", exc)
    else:
        log.info("lag email: sent to %s", ", ".join(settings.smtp.to))


if settings.smtp is not None and settings.smtp.schedule:
    # On the leader only: a group of workers sends one email per run, not one each.
    app.crontab(settings.smtp.schedule, on_leader=True)(email_lag)
