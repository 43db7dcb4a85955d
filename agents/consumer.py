"""A ``[[consumer]]``: a Faust app of its own (its id, and so its Kafka consumer group, is the
consumer's name), hosted by the aesop worker, with one agent over the consumer's topics.

The agent takes the consumer's messages a fetch round at a time (``agents.fetch``), in
batches of at most ``RECORDS_PER_ROUND``. Per batch it:
1. checks each partition's offsets run on from the last one processed, and on inside the
   batch (else it seeks back to the first passed by: nothing is passed by);
2. checks each message is a change event (``agents.skip``, by ``app.change_event``); one
   that is not goes to ``<name>.dlq``;
3. skips each event at or below the last applied ``(scn, row)`` of its topic partition
   (a relay re-publishes after a crash; the identity tells a re-publish from a new change),
   and at or below the last offset the destination recorded as applied, if its handler keeps
   one (then also its ``(scn, row)``, when later than the table's);
4. hands the rest to the handler in order, retrying a transient failure with backoff (the
   partition waits: no change is skipped or reordered) and dead-lettering a change the
   handler rejects;
5. records the last applied ``(scn, row)`` and the offset processed per partition in the
   changelog-backed table ``<name>-applied``; the next batch goes on meanwhile, but a
   batch's offsets only count as processed once Kafka acked those writes.
Processed offsets are committed to the group about once a second, on every rebalance and at
a clean stop; the table is mirrored to ZooKeeper at
``<zk_root>/consumers/<name>/<topic>/<partition>`` about once a second per busy partition,
and on every rebalance and clean stop.

A watch checks the partitions held every few seconds: one with changes waiting in Kafka and
none processed for ``[lag] stalled_seconds`` is stalled (``GET /health`` names it); with no
failure being retried and no batch in hand, it is read again from its next offset.

Here: the agent, the batch (retry of transient failures), commits, the stall watch and the
rebalance. Elsewhere: the in-order check (``agents.sequence``), the skip (``agents.skip``),
dead letters (``agents.dead_letters``), the positions and their stores (``tables.applied``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from operator import attrgetter
from typing import Any

from faust.types import TP
from mode import Service

from agents.dead_letters import DeadLetters
from agents.event import Change
from agents.fetch import Round, RoundApp
from agents.handlers import Applied, EventFailed, Handler
from agents.resolve import build_handler
from agents.sequence import OffsetSequence
from agents.skip import select
from app.assignor import WholeAssignor
from app.partitioner import partition_for_key
from app.retry import RECONNECT
from app.settings import ConsumerSettings, Settings
from tables.applied import MIRROR_EVERY_S, AppliedPosition, AppliedStore
from tables.zookeeper import ZooKeeperMirror

log = logging.getLogger(__name__)

_head, _source, _op = attrgetter("head"), attrgetter("source"), attrgetter("op")

RECORDS_PER_ROUND = 4000  # records per fetch round, so per batch handed to the handler
QUEUED_ROUNDS = 2  # fetch rounds queued for the agent before the fetcher waits
COMMIT_EVERY_S = 1.0
STOP_TIMEOUT_S = 5.0
REVOKE_TIMEOUT_S = 10.0
# Deadlines of the steps of a stop or a revocation, so that neither outlives the session
# timeout when Kafka is slow or gone: waiting for position writes, committing offsets.
SETTLE_TIMEOUT_S = 5.0
COMMIT_TIMEOUT_S = 5.0
STOP_COMMIT_TIMEOUT_S = 5.0
PAUSE_STEP_S = 0.2
REBALANCE_POLL_S = 0.05  # how often a round fetched during a rebalance looks for its end
STALL_CHECK_EVERY_S = 5.0  # how often the partitions held are checked for stalls


class Abandoned(Exception):
    """A batch waiting on a transient error is given up because the worker stops or its
    partitions are being revoked; it is not committed, so whoever owns them next reads it again
    (and skips what was applied by ``(scn, row)``). Control flow, not an error: it must not be
    caught by the ``except AesopError`` of a retry loop it passes through."""


class Stats:
    """Counters a consumer keeps for the web views and metrics."""

    def __init__(self) -> None:
        self.consumed = 0
        self.applied: Counter[tuple[str, str, str]] = Counter()  # (source, db.table, op)
        self.skipped = 0
        self.dead_lettered = 0
        self.retries = 0


class ConsumerRunner(Service):
    """Owns one consumer's Faust app, table, agent, handler and dead-letter topic."""

    def __init__(
        self, settings: Settings, consumer: ConsumerSettings, mirror: ZooKeeperMirror, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.consumer = consumer
        self.mirror = mirror
        self.stats = Stats()
        self.app = RoundApp(
            consumer.name,
            broker=settings.kafka,
            store="memory://",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            web_enabled=False,
            autodiscover=False,
            loop=self.loop,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout,
            # As the worker's own app: a topic missing from the leader's metadata is looked
            # up again at once, so no partition stays unassigned (see app.assignor).
            PartitionAssignor=WholeAssignor,
            consumer_metadata_max_age_ms=60_000,
            broker_max_poll_records=RECORDS_PER_ROUND,
            producer_acks=-1,
            producer_partitioner=partition_for_key,
            producer_linger_ms=5,
        )
        self.app.min_insync_replicas = settings.min_insync_replicas
        self.topic = self.app.round_topic(
            *consumer.topics, key_serializer="raw", value_serializer="raw", maxsize=QUEUED_ROUNDS
        )
        self.dlq = self.app.topic(
            f"{consumer.name}.dlq",
            partitions=settings.partitions,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.applied = self.app.Table(
            "applied",
            default=None,
            partitions=settings.partitions,
            help="Last applied change per topic partition: {scn, row, offset, ts_ms, source}.",
        )
        self.handler: Handler = build_handler(settings, consumer, self.app)
        self.positions = AppliedStore(self.applied, mirror, consumer.name, self._acked)
        self.sequence = OffsetSequence(consumer.name, lambda: self.app.round_consumer)
        self.dead_letters = DeadLetters(self.dlq, consumer.name, self.stats, self._pause)
        # Per partition taken: the last change the destination itself recorded as applied.
        self._held_by_destination: dict[TP, Applied | None] = {}
        self._warned_sources: set[TP] = set()
        self._stopping = False
        # Per partition: the next offset to commit (everything before it is applied, skipped
        # or dead-lettered) and the last one committed.
        self._processed: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._stop_requested = asyncio.Event()
        # The stall watch: per partition held, when it last moved on (or was taken, or had
        # nothing waiting); what the transient failure being retried said; partitions found
        # stalled.
        self._moved_at: dict[TP, float] = {}
        self._retrying: str | None = None
        self._stalled: set[TP] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.app.agent(self.topic, name=f"{consumer.name}.apply", concurrency=1)(self._agent)
        # mode types a receiver as (sender, *args, signal=...): it is called (sender, revoked).
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.consumer.name

    async def on_start(self) -> None:
        for topic in self.consumer.topics:
            await self.app.topic(topic).maybe_declare()
        await self.dlq.maybe_declare()
        await self.handler.start()
        await self.add_runtime_dependency(self.app)

    async def on_stop(self) -> None:
        # Before the app (and its agent) stops: let the batch in hand finish, then commit.
        self._stopping = True
        self._stop_requested.set()
        try:
            await asyncio.wait_for(self._idle.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("consumer %s: a batch was still being applied at stop", self.name)
        try:
            await asyncio.wait_for(self._settle_and_commit(), STOP_COMMIT_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "consumer %s: offsets not committed at stop; the next owner reads from the "
                "last committed ones and skips what was applied", self.name,
            )  # fmt: skip
        committed = {f"{tp.topic}/{tp.partition}": o for tp, o in sorted(self._committed.items())}
        log.info("consumer %s: stopping at committed offsets %s", self.name, committed)  # fmt: skip
        self.positions.publish_all()
        await self.handler.stop()

    async def _settle_and_commit(self) -> None:
        while not (await self._settle() and await self._commit()):
            await asyncio.sleep(0.2)

    async def _commit(self) -> bool:
        """Commit the offsets processed since the last commit; whether that worked."""
        todo = {tp: o for tp, o in self._processed.items() if self._committed.get(tp) != o}
        if not todo:
            return True
        try:
            error = await asyncio.wait_for(
                self.app.round_consumer.commit_offsets(todo), COMMIT_TIMEOUT_S
            )
        except TimeoutError:
            error = f"no answer within {COMMIT_TIMEOUT_S:g}s"
        if error is not None:
            log.info("consumer %s: offsets not committed (%s); retrying", self.name, error)
            return False
        self._committed.update(todo)
        return True

    @Service.timer(COMMIT_EVERY_S)
    async def _commit_now_and_then(self) -> None:
        if not (self._stopping or self.app.rebalancing):
            await self._commit()

    # -- the agent --------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for batch in stream:
            if self._stopping:
                return  # not committed: the next owner of these partitions reads them again
            if type(batch) is not Round or not await self._in_force(batch):
                continue
            batch = self._with_queued(stream.channel.queue, batch)
            self._idle.clear()
            try:
                await self.process(batch)
            except Abandoned:
                if self._stopping:
                    return
            finally:
                self._idle.set()

    async def _in_force(self, batch: Round) -> bool:
        """Whether a round belongs to the assignment in force, once a rebalance under way is
        over. A round of an earlier assignment is dropped: the rebalance that ended it seeks
        every partition to its committed offset, so its records are read again. A round of the
        current one is never dropped, as nothing would read it again (Faust's seek may be
        done already, and no more changes may come): it waits for the rebalance to end."""
        app = self.app
        while app.rebalancing or not app.flow_control.is_active():
            if self._stopping or batch.generation != app.consumer_generation_id:
                return False
            await asyncio.sleep(REBALANCE_POLL_S)
        return not self._stopping and batch.generation == app.consumer_generation_id

    def _with_queued(self, queue: Any, batch: Round) -> Round:
        """The round, with the rounds fetched meanwhile of the same assignment appended: under
        a steady load fetches return small rounds, and one batch (one destination transaction,
        one position write per partition) for all that waits keeps the latency down."""
        if self.sequence.seeking or queue.empty():
            return batch  # a seek back is under way: rounds go one by one, by their serials
        merged: dict[TP, list[Any]] = {tp: list(records) for tp, records in batch.records.items()}
        count = sum(map(len, merged.values()))
        while count < RECORDS_PER_ROUND and not queue.empty():
            more = queue.get_nowait()
            if type(more) is not Round or more.generation != batch.generation:
                continue  # of an earlier assignment: read again after the rebalance
            for tp, records in more.records.items():
                merged.setdefault(tp, []).extend(records)
                count += len(records)
        return Round(batch.generation, batch.serial, merged)

    async def process(self, batch: Round) -> None:
        """Apply one fetch round; returns when every record in it is applied, skipped or
        dead-lettered, but for those of a partition whose offsets did not run on (to be
        read again after a seek)."""
        changes: list[Change] = []
        ends: dict[TP, int] = {}
        lasts: dict[TP, Change] = {}
        skipped = 0
        for tp, records in batch.records.items():
            position = await self.positions.position(tp, self._pause)
            due = None if position is None or position.offset is None else position.offset + 1
            records = await self.sequence.admit(tp, records, batch.serial, due)
            if not records:
                continue
            self.stats.consumed += len(records)
            before = len(changes)
            found = select(tp, records, position, await self._held(tp), changes)
            skipped += found.skipped
            for record, why in found.bad:
                await self.dead_letters.send(record.key, record.value, record, why)
            if found.several_sources:
                self._warn_sources(tp)
            ends[tp] = records[-1].offset
            if len(changes) > before:
                lasts[tp] = changes[-1]
        if skipped:
            self.stats.skipped += skipped
            log.info(
                "consumer %s: skipped %d changes already applied (at or below the applied "
                "(scn, row) or offset of their partition; %d in all)",
                self.name, skipped, self.stats.skipped,
            )  # fmt: skip
        await self._apply(changes, ends, lasts)

    def _warn_sources(self, tp: TP) -> None:
        if tp not in self._warned_sources:
            self._warned_sources.add(tp)
            log.warning(
                "consumer %s: %s/%d carries changes of several sources; re-published "
                "changes of one source cannot be told apart there",
                self.name, tp.topic, tp.partition,
            )  # fmt: skip

    async def _apply(
        self, changes: list[Change], ends: dict[TP, int], lasts: dict[TP, Change]
    ) -> None:
        delays = RECONNECT.delays()
        pending = changes
        while pending:
            try:
                await self.handler.apply(pending)
            except EventFailed as failure:
                await self._record(pending[: failure.index])
                failed = pending[failure.index]
                if not failure.transient:
                    await self.dead_letters.send(failed.key, failed.value, failed, failure)
                    await self._record([failed])
                    pending = pending[failure.index + 1 :]
                    delays = RECONNECT.delays()
                    continue
                self.stats.retries += 1
                delay = next(delays)
                log.warning(
                    "consumer %s: %s at %s/%d offset %d; retrying in %.1fs",
                    self.name, failure, failed.topic, failed.partition, failed.offset, delay,
                )  # fmt: skip
                await self._pause(delay, f"{failure} at offset {failed.offset}")
                pending = pending[failure.index :]
                continue
            break
        if pending is not changes:  # some were recorded on the way
            lasts = {(c.topic, c.partition): c for c in pending}  # type: ignore[misc]
        await self._record(pending, ends, lasts)

    async def _record(
        self,
        changes: list[Change],
        ends: dict[TP, int] | None = None,
        lasts: dict[TP, Change] | None = None,
    ) -> None:
        """Store, per partition, the last applied ``(scn, row)`` and the last offset processed
        (``ends``: skipped and dead-lettered records count); they count as processed once
        Kafka acknowledged the writes. ``lasts``, the last of ``changes`` per partition, when
        the caller knows them."""
        last: dict[Any, Change] = (
            {(c.topic, c.partition): c for c in changes} if lasts is None else lasts
        )
        heads = list(map(_head, changes))
        counts = Counter(zip(map(_source, heads), map(_op, heads), strict=True))
        applied = self.stats.applied
        for (source, op), count in counts.items():
            applied[(source.name, f"{source.db}.{source.table}", op)] += count
        offsets = {tp: change.offset for tp, change in last.items()}
        if ends:
            offsets.update(ends)
        positions: dict[TP, AppliedPosition] = {}
        ts_ms = int(time.time() * 1000)
        for key, offset in offsets.items():
            tp = TP(*key)
            change = last.get(key)
            if change is not None:
                head = change.head
                positions[tp] = AppliedPosition(head.scn, head.row, offset, ts_ms, head.source.name)
            else:
                known = self.positions.known(tp)
                if known is not None:
                    positions[tp] = known.moved_to(offset, ts_ms)
        await self.positions.record(positions, {TP(*key): o + 1 for key, o in offsets.items()})

    def _acked(self, processed: dict[TP, int]) -> None:
        """The position writes of a batch are acked: its offsets may commit."""
        now = time.monotonic()
        for tp, offset in processed.items():
            if offset > self._processed.get(tp, -1):
                self._processed[tp] = offset
                self._moved_at[tp] = now
                self._retrying = None

    async def _settle(self) -> bool:
        """Wait until every position write sent is acked (before a commit that must count);
        False if they were not within ``SETTLE_TIMEOUT_S``."""
        if await self.positions.settle(SETTLE_TIMEOUT_S):
            return True
        log.warning(
            "consumer %s: position writes not acknowledged within %gs; offsets stay "
            "uncommitted, the next owner skips by the recorded positions",
            self.name, SETTLE_TIMEOUT_S,
        )  # fmt: skip
        return False

    async def _held(self, tp: TP) -> Applied | None:
        """What the destination records as applied in the partition (read once per taking)."""
        if tp in self._held_by_destination:
            return self._held_by_destination[tp]
        delays = RECONNECT.delays()
        while True:
            try:
                held = await self.handler.applied(tp.topic, tp.partition)
                break
            except Exception as exc:  # the destination is unreachable: nothing applies anyway
                delay = next(delays)
                log.warning(
                    "consumer %s: cannot read the offsets the destination applied (%s); "
                    "retrying in %.1fs", self.name, exc, delay,
                )  # fmt: skip
                await self._pause(delay, f"reading the destination's applied offsets: {exc}")
        self._held_by_destination[tp] = held
        return held

    async def _pause(self, delay: float, why: str) -> None:
        """Sleep before a retry; raise Abandoned if the worker stops or a rebalance starts."""
        self._retrying = why  # until something is processed again
        deadline = self.loop.time() + delay
        while True:
            if self._stopping or self.app.rebalancing:
                raise Abandoned()
            left = deadline - self.loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), min(left, PAUSE_STEP_S))

    @Service.timer(MIRROR_EVERY_S)
    async def _mirror_idle(self) -> None:
        """Partitions that went quiet after a burst still get their last position mirrored."""
        self.positions.publish_all()

    # -- the stall watch ---------------------------------------------------------------

    def stalled(self) -> list[str]:
        """This consumer's partitions held here that have changes waiting in Kafka and none
        processed for ``[lag] stalled_seconds``, one line each (for ``GET /health``)."""
        return [line for _, _, line in self._stalled_partitions()]

    def _stalled_partitions(self) -> list[tuple[TP, int, str]]:
        app = self.app
        if self._stopping or app.rebalancing or not app.flow_control.is_active():
            self._moved_at.clear()  # the count starts again when the rebalance is over
            return []
        now = time.monotonic()
        limit = self.settings.lag.stalled_seconds
        found = []
        try:
            assigned = app.consumer.assignment()
        except Exception:  # not started yet, or stopping: nothing to judge
            return []
        for tp in sorted(assigned):
            if tp.topic not in self.consumer.topics:
                continue
            position = self._position_of(tp)
            try:
                highwater = app.consumer.highwater(tp)
            except AssertionError:  # revoked meanwhile
                continue
            if position is None or highwater is None or highwater <= position:
                self._moved_at.pop(tp, None)  # nothing waiting (or nothing known): not stalled
                continue
            # Counted from the last change processed, or from when changes were first seen
            # waiting (a check finds them up to a period late: a stall is never reported early).
            since = self._moved_at.setdefault(tp, now)
            if now - since >= limit:
                why = f"; retrying: {self._retrying}" if self._retrying else ""
                found.append((tp, position, (
                    f"consumer {self.name}: {tp.topic}/{tp.partition}: {highwater - position} "
                    f"changes waiting, none processed for {now - since:.0f}s{why}"
                )))  # fmt: skip
        return found

    def _position_of(self, tp: TP) -> int | None:
        """The next offset of the partition to process, as far as this worker knows."""
        known = [self._processed.get(tp), self.app.round_consumer.committed_offset(tp)]
        stored = self.positions.stored(tp)
        if stored is not None and stored.offset is not None:
            known.append(stored.offset + 1)
        offsets = [o for o in known if o is not None]
        return max(offsets) if offsets else None

    @Service.timer(STALL_CHECK_EVERY_S)
    async def _watch_stalls(self) -> None:
        await self.check_stalls()

    async def check_stalls(self) -> None:
        """Log each partition that stalls (and moves again). One stalled with no failure being
        retried and no batch in hand is read again from where it is: whatever kept its changes
        from the agent, a seek fetches them anew, and nothing is passed by or applied twice
        (the offsets and positions decide)."""
        found = self._stalled_partitions()
        now_stalled = {tp for tp, _, _ in found}
        for tp in sorted(self._stalled - now_stalled):
            log.info("consumer %s: %s/%d moves again", self.name, tp.topic, tp.partition)
        for tp, position, line in found:
            if tp in self._stalled:
                continue
            if self._retrying is None and self._idle.is_set():
                log.warning("%s; reading it again from offset %d", line, position)
                self.sequence.restart_at(tp, position)
                await self.app.round_consumer.seek_now(tp, position)
                self._moved_at[tp] = time.monotonic()  # a full period before judging again
                continue
            log.warning("%s", line)
            self._stalled.add(tp)
        self._stalled = {tp for tp in self._stalled if tp in now_stalled}

    async def _on_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # Faust has stopped the flow: the batch in hand finishes (or, waiting on a transient
        # error, is given up), then what was processed is committed while the partitions
        # are still ours, and their positions are mirrored.
        try:
            await asyncio.wait_for(self._idle.wait(), REVOKE_TIMEOUT_S)
        except TimeoutError:
            log.warning("consumer %s: a batch was still being applied at rebalance", self.name)
        if await self._settle():
            await self._commit()
        self.positions.publish_all()
        for tp in revoked:
            self.positions.forget(tp)
            self.sequence.forget(tp)
            for state in (self._held_by_destination,
                          self._processed, self._committed, self._moved_at):  # fmt: skip
                state.pop(tp, None)
        await self.mirror.flush(timeout=5.0)
