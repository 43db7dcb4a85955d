"""A consumer's applied positions: the typed position and its store.

Per topic partition, the last change a consumer applied, ``(scn, row)`` with its source, and
the last offset it processed (applied, skipped or dead-lettered). The store keeps them in the
consumer's changelog-backed table ``applied`` first (its writes acknowledged by Kafka before
their offsets count as processed) and mirrors them to ZooKeeper second, about once a second
per busy partition, at ``<zk_root>/consumers/<consumer>/<topic>/<partition>``. A partition the
table knows nothing of is looked up in the mirror, once per taking.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faust.types import TP

from app.errors import AesopError
from app.retry import RECONNECT
from tables.paths import applied_key, consumer_path
from tables.positions import AppliedPosition
from tables.zookeeper import ZooKeeperMirror, ZooKeeperUnavailable

log = logging.getLogger(__name__)

MIRROR_EVERY_S = 1.0
RECORDS_IN_FLIGHT = 4  # batches whose position writes may await Kafka's ack at once


# Called before a retry: sleeps ``delay`` seconds, or raises to give the wait up.
Pause = Callable[[float, str], Awaitable[None]]


class AppliedStore:
    """One consumer's applied positions: its table first, the ZooKeeper mirror second.

    ``record`` writes a batch's positions and returns once Kafka acknowledged all but the last
    ``RECORDS_IN_FLIGHT`` batches' writes; ``on_acked(processed)`` is called, in order, with
    each batch's next offsets to commit once its writes are acknowledged (or at once, for a
    batch with nothing to write).
    """

    def __init__(
        self,
        table: Any,
        mirror: ZooKeeperMirror,
        consumer: str,
        on_acked: Callable[[dict[TP, int]], None],
    ) -> None:
        self.table = table
        self.mirror = mirror
        self.consumer = consumer
        self._on_acked = on_acked
        self._fallback: dict[TP, AppliedPosition | None] = {}
        self._sending: deque[asyncio.Future[Any]] = deque()  # position writes not yet acked
        self._dirty: set[TP] = set()
        self._mirrored_at: dict[TP, float] = {}

    # -- reading ----------------------------------------------------------------------

    def stored(self, tp: TP) -> AppliedPosition | None:
        """What the table holds for the partition."""
        return AppliedPosition.from_json(self.table.data.get(applied_key(*tp)))

    def known(self, tp: TP) -> AppliedPosition | None:
        """The table's position, else the mirror's if it was read for this taking."""
        return self.stored(tp) or self._fallback.get(tp)

    async def position(self, tp: TP, pause: Pause) -> AppliedPosition | None:
        """The table's position, else the ZooKeeper mirror's (read once per taking; while
        ZooKeeper cannot be read, ``pause`` between attempts)."""
        stored = self.stored(tp)
        if stored is not None:
            return stored
        if tp not in self._fallback:
            self._fallback[tp] = await self._mirrored(tp, pause)
        return self._fallback[tp]

    async def _mirrored(self, tp: TP, pause: Pause) -> AppliedPosition | None:
        if not self.mirror.enabled:
            return None
        delays = RECONNECT.delays()
        while True:
            try:
                found = await self.mirror.read(consumer_path(self.consumer, *tp))
                return AppliedPosition.from_json(found)
            except (ZooKeeperUnavailable, AesopError) as exc:
                delay = next(delays)
                log.warning(
                    "consumer %s: no applied position for %s/%d in the table and ZooKeeper "
                    "cannot be read (%s); retrying in %.1fs",
                    self.consumer, tp[0], tp[1], exc, delay,
                )  # fmt: skip
                await pause(delay, f"reading the applied position from ZooKeeper: {exc}")

    def forget(self, tp: TP) -> None:
        """The partition was revoked: its mirror is read again when it is taken again."""
        self._fallback.pop(tp, None)

    # -- recording ----------------------------------------------------------------------

    async def record(
        self, positions: Mapping[TP, AppliedPosition], processed: dict[TP, int]
    ) -> None:
        """Write the partitions' positions to the table (its changelog) and wait while more
        than ``RECORDS_IN_FLIGHT`` batches' writes are unacknowledged."""
        if not positions:
            self._on_acked(processed)
            return
        sends = []
        table = self.table
        for tp, position in positions.items():
            name = applied_key(*tp)
            document = position.to_json()
            table.data[name] = document
            sends.append(table.send_changelog(tp.partition, name, document))
        # The next batch goes on while Kafka acks these writes; what they record counts as
        # processed (its offsets may commit, its position is mirrored) once acked.
        sent = asyncio.gather(*sends)
        sent.add_done_callback(functools.partial(self._acked, processed))
        self._sending.append(sent)
        while len(self._sending) > RECORDS_IN_FLIGHT:
            oldest = self._sending[0]
            if oldest.done():
                # Acked, but its callback has not run yet: awaiting a done future does not
                # yield, so waiting on it here would spin without ever letting it run.
                self._sending.popleft()
                continue
            await asyncio.shield(oldest)  # a cancelled wait must not cancel sends

    def _acked(self, processed: dict[TP, int], sent: asyncio.Future[Any]) -> None:
        while self._sending and self._sending[0].done():
            self._sending.popleft()
        if sent.cancelled() or sent.exception() is not None:
            error = "cancelled" if sent.cancelled() else sent.exception()
            log.error(
                "consumer %s: applied positions not stored (%s); their offsets are not "
                "committed, so they are read again (and applied again) after a restart",
                self.consumer, error,
            )  # fmt: skip
            return
        self._on_acked(processed)
        now = time.monotonic()
        for tp in processed:
            self._dirty.add(tp)
            if now - self._mirrored_at.get(tp, 0.0) >= MIRROR_EVERY_S:
                self.publish(tp)

    async def settle(self, timeout: float) -> bool:
        """Wait until every position write sent is acked; False if not within ``timeout``."""
        if self._sending:
            pending = asyncio.gather(*self._sending, return_exceptions=True)
            try:
                await asyncio.wait_for(asyncio.shield(pending), timeout)
            except TimeoutError:
                return False
        return True

    # -- the ZooKeeper mirror ----------------------------------------------------------

    def publish(self, tp: TP) -> None:
        position = self.stored(tp)
        if position is None:
            return
        self.mirror.publish(consumer_path(self.consumer, *tp), position.mirror_json())
        self._mirrored_at[tp] = time.monotonic()
        self._dirty.discard(tp)

    def publish_all(self) -> None:
        """Mirror every partition whose position moved since it was last mirrored."""
        for tp in list(self._dirty):
            self.publish(tp)
