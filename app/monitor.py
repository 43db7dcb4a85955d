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


def health(report: dict[str, Any], relays: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What is down: unreachable services, and relays of this worker that are not reading."""
    down = mail.down_services(report)
    for name, status in relays.items():
        if status["state"] != "reading":
            reason = f": {status['reason']}" if status["reason"] else ""
            down.append(f"relay {name}: {status['state']}{reason}")
    return {"ok": not down, "down": down, "services": report["services"], "relays": relays}


@app.page("/health")
class Health(web.View):
    """200 when MySQL (each source), Kafka and ZooKeeper answer and every relay here reads."""

    async def get(self, request: web.Request) -> web.Response:
        body = health(await reports.get(), relay_status())
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
