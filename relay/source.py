"""One source's relay: binlog reader thread -> Kafka -> checkpoint, restartable, with a state.

The state says what an operator (and ``GET /health``) needs to know about the source:

- ``starting``: checking the server and the start position, or connecting for the first time;
- ``reading``: the server is streaming its binlog (a heartbeat or a batch arrived);
- ``retrying``: the last attempt failed (``reason``); the relay retries with backoff;
- ``failed``: it cannot go on without an operator (a purged checkpoint, an undecodable
  event); the error line is logged again and the attempt repeated every ``FAILED_RETRY_S``;
- ``stopping``: no longer reading; waiting for Kafka to acknowledge what it sent, to save
  the checkpoint (stopped with the worker, handed over, or the group lease gone);
- ``stopped``: stopped with the worker or handed to another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka.errors import KafkaError

from app.errors import AesopError, DecodeError, GtidError, PositionLostError, SourceError
from app.retry import RECONNECT
from app.settings import SourceSettings
from relay import preflight
from relay.binlog import BinlogReader, RowDecodeError
from relay.handoff import Batch, Handoff
from relay.publish import Publisher
from tables.positions import Checkpoint
from tables.zookeeper import ZooKeeperUnavailable

if TYPE_CHECKING:
    from tables.checkpoints import CheckpointStore

log = logging.getLogger(__name__)

IN_FLIGHT_BATCHES = 64
CHECKPOINT_EVERY_S = 1.0
DRAIN_TIMEOUT_S = 8.0
ZK_CONNECT_TIMEOUT_S = 10.0
FAILED_RETRY_S = 60.0

STARTING = "starting"
READING = "reading"
RETRYING = "retrying"
FAILED = "failed"
STOPPING = "stopping"
STOPPED = "stopped"
MIRROR_READ_S = 2.0


class Lease(Protocol):
    def held(self) -> bool: ...

    def silence(self) -> float | None: ...


class _Unleased:
    """No group to answer to (a relay run outside a worker)."""

    def held(self) -> bool:
        return True

    def silence(self) -> float | None:
        return None


UNLEASED = _Unleased()


def _settle(future: asyncio.Future[BaseException | None], outcome: BaseException | None) -> None:
    if not future.done():
        future.set_result(outcome)


class SourceRelay:
    """One source's relay. ``acked`` only ever holds what Kafka acknowledged.

    ``lease`` says whether this worker is still a member of its Kafka group (see
    :mod:`app.group_lease`): a relay publishes nothing once it is gone, not even what its
    reader already handed over."""

    def __init__(
        self,
        app: Any,
        source: SourceSettings,
        store: CheckpointStore,
        lease: Lease | None = None,
    ) -> None:
        self.app = app
        self.source = source
        self.store = store
        self.lease: Lease = lease or UNLEASED
        self.fenced = False
        self.acked: Checkpoint | None = None
        self.saved: Checkpoint | None = None
        self.reading = False
        self.reconnects = 0
        # What Kafka acknowledged, for the metrics: changes per (db, table, op); the binlog
        # timestamp of the last change and how many seconds after it Kafka acknowledged it.
        self.published: Counter[tuple[str, str, str]] = Counter()
        self.last_commit_ts: int | None = None
        self.lag_s: float | None = None
        self.last_error: str | None = None
        self.state = STARTING
        self.reason: str | None = None
        self.since = time.time()
        self._delays = RECONNECT.delays()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reader: BinlogReader | None = None
        self._in_flight: deque[tuple[Batch, list[Awaitable[Any]]]] = deque()
        self._sent = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return self.source.name

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def status(self) -> dict[str, Any]:
        """What ``GET /health`` shows of this source: state, why, since when, where."""
        acked = self.acked
        return {
            "state": self.state,
            "reason": self.reason,
            "since_ms": int(self.since * 1000),
            "reconnects": self.reconnects,
            "checkpoint": None if acked is None else acked.to_json(),
        }

    def _set_state(self, state: str, reason: str | None = None) -> None:
        if (state, reason) != (self.state, self.reason):
            self.state, self.reason, self.since = state, reason, time.time()
        if reason is not None:
            self.last_error = reason

    def _fail(self, exc: BaseException) -> None:
        """A failure only an operator can fix: ``failed``, and its line at every attempt."""
        self._set_state(FAILED, str(exc))
        log.error("relay %s: %s", self.name, exc)

    def _on_streaming(self) -> None:
        """From the reader thread: the server streams. The next outage backs off afresh."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
                loop.call_soon_threadsafe(self._streaming)

    def _streaming(self) -> None:
        if self._stopping.is_set():
            return
        if self.state in (RETRYING, FAILED):
            log.info("relay %s: reading again (after: %s)", self.name, self.reason)
        self._delays = RECONNECT.delays()
        self._set_state(READING)

    @property
    def finished(self) -> bool:
        """Started, and ended (stopped, or halted and drained)."""
        return self._task is not None and self._task.done()

    @property
    def halted(self) -> bool:
        return self._stopping.is_set()

    def halt(self, reason: str | None = None) -> None:
        """Stop reading at once; what was sent is still acknowledged and saved (``stopping``)
        before the relay ends."""
        self._stopping.set()
        if not self.finished:
            self._set_state(STOPPING, reason)
        if self._reader is not None:
            self._reader.stop()

    def fence(self) -> None:
        """The group lease is gone: stop reading and publish nothing more (what was sent is
        still acknowledged and saved); the manager starts the source again, here or on the
        worker the group gave it to."""
        if self.fenced:
            return
        self.fenced = True
        silence = self.lease.silence()
        heard = "never" if silence is None else f"for {silence:.0f}s"
        self.halt(
            f"no answer from the Kafka group {heard} (the broker may have given the source "
            "to another worker): stopped reading until the group confirms this worker"
        )
        log.warning("relay %s: %s", self.name, self.reason)

    def _may_publish(self) -> bool:
        if not self.fenced and not self.lease.held():
            self.fence()
        return not self.fenced

    async def stop(self) -> None:
        """Stop reading, wait for Kafka to acknowledge what was sent, save the checkpoint."""
        self.halt()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), DRAIN_TIMEOUT_S)
            except TimeoutError:
                log.error("relay %s: Kafka did not acknowledge in time; stopping anyway", self.name)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._set_state(STOPPED)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._relay()
        except Exception as exc:  # a defect: say so loudly, and show it as failed
            log.exception("relay %s: stopped by an unexpected error", self.name)
            self._set_state(FAILED, f"stopped by an unexpected error: {exc!r}")
            return
        self._set_state(STOPPED)

    async def _relay(self) -> None:
        while True:
            try:
                checkpoint = await self._initial_checkpoint()
                break
            except AesopError as exc:  # a purged or malformed checkpoint, a GTID misfit
                self._fail(exc)
            if await self._sleep_or_stop(FAILED_RETRY_S):
                return
        if checkpoint is None:
            return
        self.acked, self.saved = checkpoint, self.store.stored(self.name)
        # The resolved start position is saved before anything is read: a worker that takes
        # the source over must resume from it, not resolve ``start`` again.
        if not await self._save_before_reading():
            return
        await self.app.topic(self.source.topic).maybe_declare()
        log.info(
            "relay %s: reading %s from %s (after scn %d row %d)",
            self.name, self.source.mysql, checkpoint.position, checkpoint.scn, checkpoint.row,
        )  # fmt: skip
        while not self._stopping.is_set():
            try:
                await self._session(checkpoint)
                return
            except KafkaError as exc:
                # Some events may be unacknowledged: start over from what Kafka has.
                self._set_state(RETRYING, f"Kafka did not acknowledge: {exc!r}")
                delay = next(self._delays)
                log.warning("relay %s: %s; restarting from the checkpoint in %.1fs",
                            self.name, self.reason, delay)  # fmt: skip
                self._in_flight.clear()
                assert self.acked is not None
                checkpoint = self.acked
                if await self._sleep_or_stop(delay):
                    return

    async def _save_before_reading(self) -> bool:
        """Save ``acked`` if the table does not hold it yet; False if stopped meanwhile."""
        while not self._stopping.is_set():
            try:
                await self._save()
                return True
            except KafkaError as exc:
                self._set_state(RETRYING, f"cannot save the start checkpoint: {exc!r}")
                delay = next(self._delays)
                log.warning("relay %s: %s; retrying in %.1fs", self.name, self.reason, delay)
            if await self._sleep_or_stop(delay):
                break
        return False

    async def _session(self, checkpoint: Checkpoint) -> None:
        handoff = Handoff(asyncio.get_running_loop(), IN_FLIGHT_BATCHES)
        acker = asyncio.ensure_future(self._ack(handoff))
        saver = asyncio.ensure_future(self._save_periodically())
        try:
            await self._read_and_send(checkpoint, handoff, acker)
            await self._drain(acker)
        finally:
            self._reader_stop()
            saver.cancel()
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError, KafkaError):
                await asyncio.gather(saver, acker)
            self.reading = False
            await self._save()

    async def _initial_checkpoint(self) -> Checkpoint | None:
        """Table, else ZooKeeper mirror, else ``start``; then preflight against the server.

        The mirror is also taken when it holds a later checkpoint than the table, written
        after this worker read the table: the last one saved by the worker that ran the
        source before, when the hand-over came without a rebalance of this worker's table
        (that worker had lost its group membership). The mirror is written only after the
        changelog took the checkpoint, so it is never ahead of what Kafka has."""
        checkpoint = self.store.stored(self.name)
        origin = "table"
        if checkpoint is None and self.store.zk.enabled:
            origin = "zookeeper"
            checkpoint = await self._mirrored()
        elif checkpoint is not None and self.store.zk.enabled:
            later = await self._later_mirror(checkpoint)
            if later is not None:
                checkpoint, origin = later, "zookeeper (later than the table's)"
        if checkpoint is None:
            origin = (
                "snapshot = initial (the server's current position)"
                if self.source.snapshot == "initial"
                else f"start = {self.source.start}"
            )
        for delay in RECONNECT.delays():
            try:
                chosen = await asyncio.to_thread(preflight.preflight, self.source, checkpoint)
                log.info("relay %s: checkpoint from %s", self.name, origin)
                return chosen
            except (PositionLostError, GtidError):
                raise
            except SourceError as exc:
                self._set_state(RETRYING, str(exc))
                log.warning("relay %s: %s; retrying in %.1fs", self.name, exc, delay)
            if await self._sleep_or_stop(delay):
                return None
        return None

    async def _later_mirror(self, stored: Checkpoint) -> Checkpoint | None:
        """The mirror's checkpoint if it is past ``stored`` and was written after it."""
        # Right after start-up the mirror may still be connecting: give it a moment.
        if not await self.store.zk.wait_connected(MIRROR_READ_S):
            log.info("relay %s: ZooKeeper mirror not compared (not connected)", self.name)
            return None
        try:
            mirrored = await self.store.mirrored(self.name, timeout=MIRROR_READ_S)
        except AesopError as exc:  # ZooKeeper down, or a bad node: the table it is
            log.info("relay %s: ZooKeeper mirror not compared (%s)", self.name, exc)
            return None
        if mirrored is None or mirrored.last <= stored.last or mirrored.ts_ms <= stored.ts_ms:
            return None
        return mirrored

    async def _mirrored(self) -> Checkpoint | None:
        """The ZooKeeper copy; waits for ZooKeeper rather than guess a start position."""
        for delay in RECONNECT.delays():
            try:
                if not await self.store.zk.wait_connected(ZK_CONNECT_TIMEOUT_S):
                    raise ZooKeeperUnavailable("not connected")
                return await self.store.mirrored(self.name)
            except Exception as exc:  # kazoo raises many kinds while down
                log.warning(
                    "relay %s: the table has no checkpoint and ZooKeeper %s cannot be read "
                    "(%s); waiting for it rather than restarting from 'start'; retrying in %.1fs",
                    self.name, self.store.zk.hosts, exc, delay,
                )  # fmt: skip
            if await self._sleep_or_stop(delay):
                return None
        return None

    async def _sleep_or_stop(self, delay: float) -> bool:
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _read_and_send(
        self, checkpoint: Checkpoint, handoff: Handoff, acker: asyncio.Future[None]
    ) -> None:
        """Run reader threads until stopped, reconnecting with backoff after failures."""
        resume, published = checkpoint.position, checkpoint.last
        progress = checkpoint.snapshot
        while not self._stopping.is_set():
            reader = self._reader = BinlogReader(
                self.source,
                resume,
                published,
                handoff,
                on_streaming=self._on_streaming,
                snapshot=progress,
            )
            done = self._start_thread(reader)
            self.reading = True
            failure = await self._pump(handoff, done, acker)
            self.reading = False
            resume, published = reader.resume, reader.published_through
            progress = reader.snapshot_progress
            if failure is None or self._stopping.is_set():
                return
            self.reconnects += 1
            if isinstance(failure, RowDecodeError):
                # Shown as failed (not as a connection problem), but read again soon: the
                # table maps are read afresh from the transaction start.
                delay = next(self._delays)
                self._set_state(FAILED, str(failure))
                log.error("relay %s: %s in %.1fs", self.name, failure, delay)
            elif isinstance(failure, DecodeError | PositionLostError):
                self._fail(failure)
                delay = FAILED_RETRY_S
            else:
                # The backoff starts afresh once the server streamed (``_streaming``), so
                # each outage backs off from the initial delay, busy server or idle.
                self._set_state(RETRYING, str(failure))
                delay = next(self._delays)
                log.warning("relay %s: %s; reconnecting in %.1fs", self.name, failure, delay)
            if await self._sleep_or_stop(delay):
                return

    def _start_thread(self, reader: BinlogReader) -> asyncio.Future[BaseException | None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()

        def body() -> None:
            outcome: BaseException | None = None
            try:
                reader.run()
            except BaseException as exc:
                outcome = exc
            loop.call_soon_threadsafe(_settle, done, outcome)

        threading.Thread(target=body, name=f"binlog-{self.name}", daemon=True).start()
        return done

    async def _pump(
        self,
        handoff: Handoff,
        done: asyncio.Future[BaseException | None],
        acker: asyncio.Future[None],
    ) -> BaseException | None:
        """Send batches as they come until the reader thread ends; return its failure."""
        publisher = Publisher(self.app.producer, self.source.topic)
        while True:
            getter = asyncio.ensure_future(handoff.get())
            waited: set[asyncio.Future[Any]] = {getter, done, acker}
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                if acker.done():
                    self._reader_stop()
                    await done
                    acker.result()  # raises the publish failure
                failure = done.result()
                return failure
            # Whatever queued up meanwhile goes along: fuller record batches per partition.
            batches = [getter.result(), *handoff.take_ready()]
            # Asked once per round: a round is submitted whole or not at all, so that what
            # it publishes is tracked, acknowledged and saved (a round cut half-way would be
            # delivered all the same, and published again from the checkpoint).
            if not self._may_publish():
                for _ in batches:
                    handoff.done()  # dropped: the reader, stopping, must not wait for room
                continue
            for batch, futures in zip(batches, await publisher.publish(batches), strict=True):
                self._in_flight.append((batch, futures))
            self._sent.set()

    def _reader_stop(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    async def _ack(self, handoff: Handoff) -> None:
        """Advance ``acked`` batch by batch, in binlog order, as Kafka acknowledges."""
        while True:
            while not self._in_flight:
                self._sent.clear()
                await self._sent.wait()
            batch, futures = self._in_flight[0]
            for future in futures:
                await future
            self._in_flight.popleft()
            handoff.done()
            if batch.counts:
                self.published.update(batch.counts)
            if batch.changes and batch.commit_ts is not None:
                self.last_commit_ts = batch.commit_ts
                self.lag_s = max(0.0, time.time() - batch.commit_ts)
            assert batch.resume is not None and self.acked is not None
            last = batch.last if batch.last is not None else self.acked.last
            progress = batch.snapshot if batch.snapshot_set else self.acked.snapshot
            self.acked = Checkpoint.at(batch.resume, last, progress, self.acked.tables)

    async def _drain(self, acker: asyncio.Future[None]) -> None:
        while self._in_flight and not acker.done():
            await asyncio.sleep(0.01)
        if acker.done():
            acker.result()

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            await self._save()

    async def _save(self) -> None:
        checkpoint = self.acked
        if checkpoint is None or checkpoint == self.saved:
            return
        await self.store.save(self.name, checkpoint)
        self.saved = checkpoint
