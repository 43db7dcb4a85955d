"""``kill -USR2 <worker pid>``: the worker logs every asyncio task with where it waits.

A worker that stops making progress without an error is waiting on something; this names
it (each task's chain of awaits, innermost last) without stopping or slowing the worker.
Faust runs agents behind awaitables that hide their frames, so the coroutines of aesop's own
modules are listed as well, found among live objects.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_DEPTH = 30
ROOT = str(Path(__file__).resolve().parent.parent)
OWN = tuple(f"{ROOT}/{package}/" for package in ("agents", "app", "relay", "tables"))


def await_chain(awaitable: Any) -> list[str]:
    """Where a task or coroutine waits: ``function file:line`` per coroutine it awaits through."""
    chain: list[str] = []
    if isinstance(awaitable, asyncio.Task):
        awaitable = awaitable.get_coro()
    while awaitable is not None and len(chain) < MAX_DEPTH:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            chain.append(f"<{type(awaitable).__name__}>")
            break
        code = frame.f_code
        chain.append(f"{code.co_qualname} {code.co_filename}:{frame.f_lineno}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return chain


def own_coroutines() -> list[Any]:
    """Suspended coroutines whose code is in aesop's packages, but for those another of them
    awaits (they are in its chain)."""
    # gc.get_objects() leaves out what app.gc_tuning froze: thawed for the look, frozen again
    # (with what was built since, which is long-lived by now as well).
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        objects = gc.get_objects()
    finally:
        if frozen:
            gc.freeze()
    found = [
        obj
        for obj in objects
        if inspect.iscoroutine(obj)
        and obj.cr_frame is not None
        and obj.cr_frame.f_code.co_filename.startswith(OWN)
    ]
    awaited = {id(obj.cr_await) for obj in found}
    return [obj for obj in found if id(obj) not in awaited]


def log_tasks() -> None:
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    lines = [f"{len(tasks)} tasks:"]
    for task in tasks:
        lines.append(f"  {task.get_name()}:")
        lines.extend(f"    {step}" for step in await_chain(task))
    lines.append("aesop's coroutines:")
    for coroutine in own_coroutines():
        chain = await_chain(coroutine)
        lines.append(f"  {chain[0]}")
        lines.extend(f"    {step}" for step in chain[1:])
    log.warning("\n".join(lines))


def install(app: Any) -> None:
    """Log the tasks on SIGUSR2, from the worker's start."""

    async def dump_tasks_on_sigusr2() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, log_tasks)

    app.task(dump_tasks_on_sigusr2)
