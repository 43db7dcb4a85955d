"""The relay of a worker: one SourceRelay per source whose checkpoint partition it holds.

A source's relay runs on the worker that holds its checkpoint partition as active, so a
group of workers runs each source exactly once and hands it over on rebalance.

Faust's callbacks alone do not keep that true: a recovery cut short, callbacks in an
unexpected order, or a group leader whose metadata lacks the checkpoint topic (after a Kafka
restart, or when two workers start together) can leave a partition active with no relay, or
assigned to nobody. So every ``RECONCILE_S`` seconds, once the worker is settled (no rebalance
or recovery under way), the manager makes "relay runs here" equal to "partition active here",
and writes a heartbeat for each relay it runs to ``<zk_root>/heartbeats/<source>``. A worker
that sees a source without a fresh heartbeat for ``[lag] unread_seconds`` reports it (``GET
/health`` is 503, ``/lag`` and ``aesop lag`` say so) and asks the group to rebalance with fresh
metadata, at most once per ``REJOIN_EVERY_S``.

Two relays of one source must never publish at once, and an assignment alone does not
guarantee that: a worker cut off from Kafka keeps its partitions until it hears from the
group again, while the broker has given them to another worker. So a relay publishes only
under the group lease (:mod:`app.group_lease`), which lapses well before the broker can expire
the worker; and a worker that is given a source waits, before it starts the relay, until the
worker named by the source's heartbeat has stopped its relay (``stopped``) or stopped beating
(``HANDED_OVER_AFTER_S``), at most ``session_timeout`` + ``DRAIN_TIMEOUT_S``; it then resumes
from the later of its table and the ZooKeeper mirror, which that worker wrote last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from mode import Service

from app.settings import SourceSettings
from relay.source import DRAIN_TIMEOUT_S, STOPPED, UNLEASED, Lease, SourceRelay
from tables.checkpoints import CheckpointStore
from tables.paths import heartbeat_path

log = logging.getLogger(__name__)

RECONCILE_S = 2.0
REJOIN_EVERY_S = 30.0
READ_TIMEOUT_S = 2.0
HANDED_OVER_AFTER_S = 3 * RECONCILE_S  # a heartbeat this old: its writer has stopped beating
RELEASE_FLUSH_S = 2.0
STOP_FLUSH_S = 1.0


def worker_name(web_port: int) -> str:
    return f"{socket.gethostname()}:{web_port} (pid {os.getpid()})"


class RelayManager(Service):
    """Starts the relays whose checkpoint partitions this worker holds, stops revoked ones."""

    def __init__(
        self,
        app: Any,
        sources: tuple[SourceSettings, ...],
        store: CheckpointStore,
        unread_seconds: float = 10.0,
        lease: Lease = UNLEASED,
        session_timeout: float = 45.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.sources = sources
        self.unread_seconds = unread_seconds
        self.store = store
        self.lease = lease
        # How long a source given to this worker waits for the previous reader to stop.
        self.handover_wait = session_timeout + DRAIN_TIMEOUT_S
        self._waiting_since: dict[str, float] = {}
        self._releasing: set[asyncio.Future[None]] = set()
        self.relays: dict[str, SourceRelay] = {}
        self.worker = worker_name(app.conf.web_port)
        # Per source, the latest heartbeat read from ZooKeeper (None: none there).
        self.heartbeats: dict[str, dict[str, Any] | None] = {}
        self.started_at = time.time()
        # Since when ZooKeeper could be read without a break: after an outage, heartbeats
        # are as old as the outage until their writers catch up, which is no sign of a stall.
        self._readable_since: float | None = None
        self._last_rejoin = 0.0
        self._closed = False
        self._lock = asyncio.Lock()

    def owned(self) -> list[SourceSettings]:
        topic = self.store.topic
        partitions = {
            tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic
        }
        return [s for s in self.sources if self.store.partition_of(s.name) in partitions]

    def status(self) -> dict[str, dict[str, Any]]:
        """Per source this worker runs, its relay's state (see ``relay.source``)."""
        return {name: relay.status() for name, relay in sorted(self.relays.items())}

    def settled(self) -> bool:
        """No rebalance or table recovery under way: the assignment can be trusted."""
        recovery = self.app.tables.recovery
        return not self.app.rebalancing and recovery.completed.is_set()

    async def on_recovered(self) -> None:
        """After table recovery: run what we own, stop what we no longer own."""
        await self._reconcile()

    async def _reconcile(self) -> None:
        async with self._lock:
            if self._closed:
                return  # stopping: nothing starts any more
            wanted = {s.name: s for s in self.owned()}
            for name in list(self.relays):
                if name not in wanted:
                    log.info("relay %s: partition no longer active here; stopping", name)
                    await self.relays.pop(name).stop()
                    self._release(name)
                elif self.relays[name].fenced and self.relays[name].finished:
                    # Fenced, and drained: it may start again.
                    relay = self.relays.pop(name)
                    log.info("relay %s: stopped after its lease lapsed, checkpoint saved at %s",
                             name, relay.saved and relay.saved.position)  # fmt: skip
                    self._release(name)
            for name in list(self._waiting_since):
                if name not in wanted:  # given elsewhere meanwhile: a later wait starts afresh
                    del self._waiting_since[name]
            if self.lease.held():
                for name, source in wanted.items():
                    if name not in self.relays and await self._free(name):
                        relay = SourceRelay(self.app, source, self.store, self.lease)
                        self.relays[name] = relay
                        relay.start()
            self._beat()

    def _fence(self) -> None:
        """No word from the group for too long: every relay stops publishing."""
        if not self.lease.held():
            for relay in self.relays.values():
                relay.fence()

    async def _free(self, name: str) -> bool:
        """Whether no other worker still runs the source, as its heartbeat tells: it says
        ``stopped``, or is older than ``HANDED_OVER_AFTER_S``, or comes from this worker;
        unknown (no ZooKeeper) counts as free, and so does a wait past ``handover_wait``."""
        zk = self.store.zk
        if not zk.enabled or not zk.connected:
            return True
        try:
            beat = await zk.read(heartbeat_path(name), timeout=READ_TIMEOUT_S)
        except Exception:  # ZooKeeperUnavailable, or one of kazoo's kinds: cannot tell
            return True
        if not isinstance(beat, dict) or not isinstance(beat.get("ts_ms"), int):
            return True
        age = time.time() - beat["ts_ms"] / 1000
        holder = beat.get("worker")
        if holder == self.worker or beat.get("state") == STOPPED or age > HANDED_OVER_AFTER_S:
            self._waiting_since.pop(name, None)
            return True
        if name not in self._waiting_since:
            self._waiting_since[name] = time.monotonic()
            log.info("relay %s: waiting for %s to stop its relay (state %s)",
                     name, holder, beat.get("state"))  # fmt: skip
        waited = time.monotonic() - self._waiting_since[name]
        if waited > self.handover_wait:
            log.warning(
                "relay %s: %s still beats (state %s) %.0fs after this worker was given the "
                "source; starting it here",
                name, holder, beat.get("state"), waited,
            )  # fmt: skip
            self._waiting_since.pop(name, None)
            return True
        return False

    def _release(self, name: str) -> None:
        """Say, once its checkpoint is in ZooKeeper, that this worker no longer runs ``name``
        (if ZooKeeper does not take it in time, the heartbeat goes stale instead)."""
        if self.store.zk.enabled:
            task = asyncio.ensure_future(self._released(name))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _released(self, name: str, flush_s: float = RELEASE_FLUSH_S) -> None:
        zk = self.store.zk
        if await zk.flush(flush_s) and name not in self.relays:
            now_ms = int(time.time() * 1000)
            document = {"worker": self.worker, "state": STOPPED, "ts_ms": now_ms}
            zk.publish(heartbeat_path(name), document)

    async def on_revoked(self, revoked: set[Any]) -> None:
        topic = self.store.topic
        lost = {tp.partition for tp in revoked if tp.topic == topic}
        async with self._lock:
            for name in [n for n in self.relays if self.store.partition_of(n) in lost]:
                log.info("relay %s: partition revoked; stopping", name)
                await self.relays.pop(name).stop()
                self._release(name)

    def _beat(self) -> None:
        now_ms = int(time.time() * 1000)
        for name, relay in self.relays.items():
            document = {"worker": self.worker, "state": relay.state, "ts_ms": now_ms}
            self.store.zk.publish(heartbeat_path(name), document)

    def unread_for(self, name: str, now: float | None = None) -> float | None:
        """Seconds the source has gone without a live relay anywhere, as far as this worker
        knows (counted from its own start at the most); None when it is read, or unknown."""
        if name in self.relays or name not in self.heartbeats:
            return None
        now = time.time() if now is None else now
        heartbeat = self.heartbeats[name]
        last = max(self.started_at, self._readable_since or now)
        if heartbeat is not None and isinstance(heartbeat.get("ts_ms"), int):
            last = max(last, heartbeat["ts_ms"] / 1000)
        silent = now - last
        return silent if silent >= self.unread_seconds else None

    @Service.timer(RECONCILE_S)
    async def _keep_relays_running(self) -> None:
        if self._closed or not self.sources:
            return
        self._fence()
        if self.settled():
            await self._reconcile()
        else:
            self._beat()
        await self._read_heartbeats()
        unread = {
            name: seconds
            for name in (s.name for s in self.sources)
            if (seconds := self.unread_for(name)) is not None
        }
        if unread and self.settled():
            self._rejoin(unread)

    async def _read_heartbeats(self) -> None:
        zk = self.store.zk
        if not zk.enabled or not zk.connected:
            self.heartbeats.clear()  # unknown: nothing to judge by
            self._readable_since = None
            return
        if self._readable_since is None:
            self._readable_since = time.time()
        for source in self.sources:
            if source.name in self.relays:
                continue
            try:
                document = await zk.read(heartbeat_path(source.name), timeout=READ_TIMEOUT_S)
            except Exception:  # ZooKeeperUnavailable, or one of kazoo's many kinds while down
                self.heartbeats.clear()
                self._readable_since = None
                return
            self.heartbeats[source.name] = document if isinstance(document, dict) else None

    def _rejoin(self, unread: dict[str, float]) -> None:
        """Ask the group to rebalance, with fresh metadata, so the partitions get assigned."""
        if time.monotonic() - self._last_rejoin < REJOIN_EVERY_S:
            return
        self._last_rejoin = time.monotonic()
        names = ", ".join(f"{name} ({seconds:.0f}s)" for name, seconds in sorted(unread.items()))
        log.warning(
            "relay: no worker has run %s; asking the group to rebalance with fresh metadata",
            names,
        )
        from app.assignor import request_rejoin

        request_rejoin(self.app)

    async def stop_relays(self) -> None:
        """Stop every relay (each drains and saves its checkpoint); none starts afterwards.
        The worker calls it first when it stops; the manager's own stop comes later."""
        async with self._lock:
            self._closed = True
            await asyncio.gather(*(relay.stop() for relay in self.relays.values()))
            names = list(self.relays)
            self.relays.clear()
            # Before the mirror stops: it writes what is pending as it stops. Briefly, as the
            # worker has 10 s to stop in all.
            await asyncio.gather(*(self._released(name, STOP_FLUSH_S) for name in names),
                                 *self._releasing)  # fmt: skip

    async def on_stop(self) -> None:
        await self.stop_relays()
