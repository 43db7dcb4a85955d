"""Batches of change events passed from a reader thread to the event loop, bounded in memory."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

from tables.positions import Position, SnapshotProgress


class Stopped(Exception):
    """The reader was asked to stop while waiting for room. Control flow, not an error: it
    must not be caught by the ``except AesopError`` of a retry loop it passes through."""


@dataclass(slots=True)
class SerializedChange:
    """One serialized change event, ready for Kafka."""

    key: bytes
    value: bytes
    scn: int
    row: int


@dataclass(slots=True)
class Batch:
    """Changes in binlog order, and where to resume once Kafka acknowledged all of them.

    ``resume`` is the last transaction boundary at or before the end of the batch; a batch
    may end mid-transaction (a large one is streamed, not held), and then ``resume`` stays
    at that transaction's start while ``last`` moves on.
    """

    changes: list[SerializedChange] = field(default_factory=list)
    resume: Position | None = None
    last: tuple[int, int] | None = None
    # For the metrics: changes per (db, table, op), and the binlog timestamp (seconds) of
    # the last rows event, added once per rows event rather than per change (a rows event's
    # last change, held until its transaction's end is known, may travel in the next batch).
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    commit_ts: int | None = None
    # A snapshot's progress once this batch is acknowledged (``snapshot_set``; None: done).
    snapshot: SnapshotProgress | None = None
    snapshot_set: bool = False


class Handoff:
    """A deque the reader thread appends to and the loop pops from.

    At most ``capacity`` batches are in flight (handed off and not yet acknowledged): the
    reader blocks beyond that, so a slow or absent Kafka bounds memory instead of growing it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._items: deque[Batch] = deque()
        self._slots = threading.Semaphore(capacity)
        self._ready = asyncio.Event()

    def put(self, batch: Batch, stop: threading.Event) -> None:
        """Called from the reader thread; waits for room, or raises Stopped."""
        while not self._slots.acquire(timeout=0.2):
            if stop.is_set():
                raise Stopped
        self._items.append(batch)
        self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> Batch:
        while not self._items:
            self._ready.clear()
            if self._items:
                break
            await self._ready.wait()
        return self._items.popleft()

    def take_ready(self) -> list[Batch]:
        """The batches already handed off, without waiting: send them in one go."""
        ready = []
        while self._items:
            ready.append(self._items.popleft())
        return ready

    def done(self) -> None:
        """A batch was acknowledged (or dropped): free its slot."""
        self._slots.release()
