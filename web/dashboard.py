"""GET /dashboard, the page a person reads, and GET /lag/history, the last hour of lag samples."""

from __future__ import annotations

import html
import logging
from collections import deque
from pathlib import Path
from typing import Any

import orjson
from faust.web import Request, Response, View

from app.lag import LagReport
from app.settings import Settings
from web.health import Monitor

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 10.0
WINDOW_SECONDS = 3600
POLL_SECONDS = 5
TEMPLATE = Path(__file__).with_name("dashboard.html")


def page(app_id: str) -> str:
    return (
        TEMPLATE.read_text(encoding="utf-8")
        .replace("{{app_id}}", html.escape(app_id))
        .replace("{{poll_seconds}}", str(POLL_SECONDS))
    )


def sample_of(report: LagReport) -> dict[str, Any]:
    """What a chart needs of one /lag report; the page reduces its live reports the same way."""
    return {
        "ts_ms": report.ts_ms,
        "sources": {
            s.name: {"seconds": s.behind.seconds, "bytes": s.behind.bytes, "status": s.status}
            for s in report.sources
        },
        "consumers": {
            c.name: {"seconds": c.seconds_behind, "events": c.events_behind, "status": c.status}
            for c in report.consumers
        },
    }


def install(app: Any, settings: Settings, monitor: Monitor) -> deque[dict[str, Any]]:
    """Serve ``/dashboard`` and ``/lag/history``, sampling the lag report every
    ``SAMPLE_SECONDS`` on every worker (each serves its own page); returns the samples."""
    # The worker keeps the last hour in memory: 360 small samples, no store, nothing to clean.
    samples: deque[dict[str, Any]] = deque(maxlen=int(WINDOW_SECONDS / SAMPLE_SECONDS))
    html_page = page(settings.id)

    async def sample_lag() -> None:
        """Adds one sample to the history."""
        try:
            report = await monitor.report()  # the report /lag serves, built at most every 2 s
        except Exception as exc:  # the next tick tries again; the page shows a gap meanwhile
            log.warning("lag history: no sample this time (%s: %s)", type(exc).__name__, exc)
            return
        samples.append(sample_of(report))

    class Dashboard(View):
        """The page: tables and charts drawn by its own script from /lag and /lag/history."""

        async def get(self, request: Request) -> Response:
            return self.html(html_page)

    class LagHistory(View):
        """The samples of the last hour, oldest first, each reduced by :func:`sample_of`."""

        async def get(self, request: Request) -> Response:
            body = {
                "sample_seconds": SAMPLE_SECONDS,
                "window_seconds": WINDOW_SECONDS,
                "samples": list(samples),
            }
            return self.bytes(orjson.dumps(body), content_type="application/json")

    app.timer(interval=SAMPLE_SECONDS, name="sample_lag")(sample_lag)
    app.page("/dashboard")(Dashboard)
    app.page("/lag/history")(LagHistory)
    return samples
