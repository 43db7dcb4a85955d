"""The worker's garbage collector: what was built at start-up is frozen out of its scans.

A worker holds a few hundred thousand long-lived objects (Faust, aiokafka, the libraries,
the tables), and CPython's full collection walks every one of them: about 80 ms with the
whole worker stopped, every few seconds under load, which showed as the slowest changes of
the latency benchmark. Once the worker has started, its objects are collected once and
frozen (``gc.freeze``): later full collections walk only what was built since.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

log = logging.getLogger(__name__)

SETTLE_S = 10.0  # after start-up: recovery done and the first batches through


def freeze() -> int:
    """Collect, then freeze what is left; how many objects were frozen."""
    gc.collect()
    count = len(gc.get_objects())
    gc.freeze()
    return count


def install(app: Any) -> None:
    """Freeze the start-up objects ``SETTLE_S`` seconds after the worker starts."""

    async def freeze_start_up_objects() -> None:
        await asyncio.sleep(SETTLE_S)
        count = freeze()
        log.info("worker: %d start-up objects frozen out of garbage collection", count)

    app.task(freeze_start_up_objects)
