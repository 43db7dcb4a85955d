"""A ``[[consumer]]``: a Faust app of its own (its id, and so its Kafka consumer group, is the
consumer's name), hosted by the aesop worker, with one agent over the consumer's topics.

The agent takes the consumer's messages a fetch round at a time (``agents.fetch``), in
batches of at most ``BATCH_MAX``. Per batch it:
1. checks each partition's offsets run on from the last one processed (else it seeks back:
   nothing is passed by);
2. checks each message is a change event (``agents.event``); one that is not goes to
   ``<name>.dlq``;
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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from operator import attrgetter
from typing import Any

from faust.types import TP
from mode import Service

from agents.event import BadMessage, Change, decode_head, fast_decode_head
from agents.fetch import Round, RoundApp
from agents.handlers import Applied, EventFailed, Handler, build_handler
from app.assignor import WholeAssignor
from app.errors import AesopError
from app.partitioner import partition_for_key
from app.retry import RECONNECT
from app.settings import ConsumerSettings, Settings
from tables.zookeeper import ZooKeeperMirror, ZooKeeperUnavailable

log = logging.getLogger(__name__)

_head, _source, _op = attrgetter("head"), attrgetter("source"), attrgetter("op")

BATCH_MAX = 4000  # records per fetch round, so per batch handed to the handler
QUEUED_ROUNDS = 2  # fetch rounds queued for the agent before the fetcher waits
MIRROR_EVERY_S = 1.0
COMMIT_EVERY_S = 1.0
STOP_TIMEOUT_S = 5.0
REVOKE_TIMEOUT_S = 10.0
# Deadlines of the steps of a stop or a revocation, so that neither outlives the session
# timeout when Kafka is slow or gone: waiting for position writes, committing offsets.
SETTLE_TIMEOUT_S = 5.0
COMMIT_TIMEOUT_S = 5.0
STOP_COMMIT_TIMEOUT_S = 5.0
RECORDS_IN_FLIGHT = 4  # batches whose position writes may await Kafka's ack at once
PAUSE_STEP_S = 0.2
REBALANCE_POLL_S = 0.05  # how often a round fetched during a rebalance looks for its end
STALL_CHECK_EVERY_S = 5.0  # how often the partitions held are checked for stalls


class Abandoned(Exception):
    """A batch waiting on a transient error is given up because the worker stops or its
    partitions are being revoked; it is not committed, so whoever owns them next reads it again
    (and skips what was applied by ``(scn, row)``)."""


def applied_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def mirror_path(consumer: str, topic: str, partition: int) -> str:
    return f"/consumers/{consumer}/{topic}/{partition}"


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
            web_enabled=False,
            autodiscover=False,
            loop=self.loop,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout,
            # As the worker's own app: a topic missing from the leader's metadata is looked
            # up again at once, so no partition stays unassigned (see app.assignor).
            PartitionAssignor=WholeAssignor,
            consumer_metadata_max_age_ms=60_000,
            broker_max_poll_records=BATCH_MAX,
            producer_acks=-1,
            producer_partitioner=partition_for_key,
            producer_linger_ms=5,
        )
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
        self._mirrored_at: dict[TP, float] = {}
        self._dirty: set[TP] = set()
        self._fallback: dict[TP, dict[str, Any] | None] = {}
        # Per partition taken: the last change the destination itself recorded as applied.
        self._held_by_destination: dict[TP, Applied | None] = {}
        self._warned_sources: set[TP] = set()
        self._stopping = False
        # Per partition: the offset that must come next (nothing is passed by), the fetch
        # serial at which a seek back to it was made, the next offset to commit (everything
        # before it is applied, skipped or dead-lettered) and the last one committed.
        self._next: dict[TP, int] = {}
        self._sought: dict[TP, int] = {}
        self._processed: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._sending: deque[asyncio.Future[Any]] = deque()  # position writes not yet acked
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
        self.app.on_partitions_revoked.connect(self._on_revoked)

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
        self._publish_all()
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
            error = await asyncio.wait_for(self.app.consumer.commit_offsets(todo), COMMIT_TIMEOUT_S)
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
        if self._sought or queue.empty():
            return batch  # a seek back is under way: rounds go one by one, by their serials
        merged: dict[TP, list[Any]] = {tp: list(records) for tp, records in batch.records.items()}
        count = sum(map(len, merged.values()))
        while count < BATCH_MAX and not queue.empty():
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
            records = await self._in_sequence(tp, records, batch.serial)
            if not records:
                continue
            self.stats.consumed += len(records)
            document = await self._position(tp)
            scn = row = source = None
            if document is not None:
                scn, row, source = document["scn"], document["row"], document.get("source")
            held = await self._held(tp)
            if held is not None:
                if held.scn is not None and (
                    document is None or held.offset > document.get("offset", -1)
                ):
                    # The destination recorded a later change than the table did (the
                    # table's write was lost in a crash): its (scn, row) is the one to skip by.
                    scn, row, source = held.scn, held.row, held.source
                if records[0].offset <= held.offset:
                    kept = [r for r in records if r.offset > held.offset]
                    skipped += len(records) - len(kept)
                    if not kept:
                        ends[tp] = records[-1].offset
                        continue
                    records = kept
            topic, partition = tp.topic, tp.partition
            append = changes.append
            before = len(changes)
            for record in records:
                value = record.value
                try:
                    head = fast_decode_head(value)
                except Exception:
                    try:
                        head = decode_head(value)  # the reason, in our words
                    except BadMessage as exc:
                        await self._dead_letter(record.key, value, record, exc)
                        continue
                if scn is not None:
                    if source is None or head.source.name == source:
                        if head.scn < scn or (head.scn == scn and head.row <= row):
                            skipped += 1
                            continue
                    else:
                        self._warn_sources(tp)
                scn, row, source = head.scn, head.row, head.source.name
                append(Change(head, record.key, value, topic, partition, record.offset))
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

    async def _in_sequence(self, tp: TP, records: list[Any], serial: int) -> list[Any]:
        """The records of a partition that may be processed now: all of them when they run
        on from the offset expected next (or go back before it: read again, to be skipped),
        none when they start after it (it was passed by: seek back to it)."""
        expected = self._next.get(tp)
        if expected is None:
            document = await self._position(tp)
            if document is not None and document.get("offset") is not None:
                expected = int(document["offset"]) + 1
        first = records[0].offset
        if expected is not None and first > expected:
            sought = self._sought.get(tp)
            if sought is None or serial <= sought:
                if sought is None:
                    log.warning(
                        "consumer %s: %s/%d: expected offset %d next, got %d; reading "
                        "again from %d", self.name, tp.topic, tp.partition, expected, first,
                        expected,
                    )  # fmt: skip
                await self.app.consumer.seek_now(tp, expected)
                self._sought[tp] = self.app.consumer.fetches_started
                return []
            # Read again from there, and still not there: Kafka no longer has them.
            log.warning(
                "consumer %s: %s/%d offsets %d to %d are no longer in Kafka (retention or "
                "compaction removed them); going on from %d",
                self.name, tp.topic, tp.partition, expected, first - 1, first,
            )  # fmt: skip
        self._sought.pop(tp, None)
        self._next[tp] = records[-1].offset + 1
        return records

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
                    await self._dead_letter(failed.key, failed.value, failed, failure)
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
        (``ends``: skipped and dead-lettered records count); wait for the changelog's ack.
        ``lasts``, the last of ``changes`` per partition, when the caller knows them."""
        last: dict[Any, Change] = (
            {(c.topic, c.partition): c for c in changes} if lasts is None else lasts  # type: ignore[misc]
        )
        heads = list(map(_head, changes))
        counts = Counter(zip(map(_source, heads), map(_op, heads), strict=True))
        applied = self.stats.applied
        for (source, op), count in counts.items():
            applied[(source.name, f"{source.db}.{source.table}", op)] += count
        offsets = {tp: change.offset for tp, change in last.items()}
        if ends:
            offsets.update(ends)
        sends = []
        ts_ms = int(time.time() * 1000)
        for key, offset in offsets.items():
            tp = TP(*key)
            name = applied_key(*key)
            change = last.get(key)
            if change is not None:
                head = change.head
                document = {"scn": head.scn, "row": head.row, "offset": offset, "ts_ms": ts_ms,
                            "source": head.source.name}  # fmt: skip
            else:
                known = self.applied.data.get(name) or self._fallback.get(tp)
                document = None if known is None else {**known, "offset": offset, "ts_ms": ts_ms}
            if document is not None:
                self.applied.data[name] = document
                sends.append(self.applied.send_changelog(tp.partition, name, document))
        processed = {TP(*key): offset + 1 for key, offset in offsets.items()}
        if not sends:
            self._recorded(processed, None)
            return
        # The next batch goes on while Kafka acks these writes; what they record counts as
        # processed (its offsets may commit, its position is mirrored) once acked.
        sent = asyncio.gather(*sends)
        sent.add_done_callback(functools.partial(self._recorded, processed))
        self._sending.append(sent)
        while len(self._sending) > RECORDS_IN_FLIGHT:
            oldest = self._sending[0]
            if oldest.done():
                # Acked, but its callback has not run yet: awaiting a done future does not
                # yield, so waiting on it here would spin without ever letting it run.
                self._sending.popleft()
                continue
            await asyncio.shield(oldest)  # a cancelled wait must not cancel sends

    def _recorded(self, processed: dict[TP, int], sent: asyncio.Future[Any] | None) -> None:
        """The position writes of a batch are acked (or failed): its offsets may commit."""
        while self._sending and self._sending[0].done():
            self._sending.popleft()
        if sent is not None and (sent.cancelled() or sent.exception() is not None):
            error = "cancelled" if sent.cancelled() else sent.exception()
            log.error(
                "consumer %s: applied positions not stored (%s); their offsets are not "
                "committed, so they are read again (and applied again) after a restart",
                self.name, error,
            )  # fmt: skip
            return
        now = time.monotonic()
        for tp, offset in processed.items():
            if offset > self._processed.get(tp, -1):
                self._processed[tp] = offset
                self._moved_at[tp] = now
                self._retrying = None
            if sent is not None:
                self._dirty.add(tp)
                if now - self._mirrored_at.get(tp, 0.0) >= MIRROR_EVERY_S:
                    self._publish(tp)

    async def _settle(self) -> bool:
        """Wait until every position write sent is acked (before a commit that must count);
        False if they were not within ``SETTLE_TIMEOUT_S``."""
        if self._sending:
            pending = asyncio.gather(*self._sending, return_exceptions=True)
            try:
                await asyncio.wait_for(asyncio.shield(pending), SETTLE_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "consumer %s: position writes not acknowledged within %gs; offsets "
                    "stay uncommitted, the next owner skips by the recorded positions",
                    self.name, SETTLE_TIMEOUT_S,
                )  # fmt: skip
                return False
        return True

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

    async def _position(self, tp: TP) -> dict[str, Any] | None:
        """Last applied position of a partition: the table, else the ZooKeeper mirror."""
        document = self.applied.data.get(applied_key(*tp))
        if document is not None:
            return document  # type: ignore[no-any-return]
        if tp not in self._fallback:
            self._fallback[tp] = await self._mirrored(tp)
        return self._fallback[tp]

    async def _mirrored(self, tp: TP) -> dict[str, Any] | None:
        if not self.mirror.enabled:
            return None
        delays = RECONNECT.delays()
        while True:
            try:
                return await self.mirror.read(mirror_path(self.name, *tp))  # type: ignore[no-any-return]
            except (ZooKeeperUnavailable, AesopError) as exc:
                delay = next(delays)
                log.warning(
                    "consumer %s: no applied position for %s/%d in the table and ZooKeeper "
                    "cannot be read (%s); retrying in %.1fs",
                    self.name, tp[0], tp[1], exc, delay,
                )  # fmt: skip
                await self._pause(delay, f"reading the applied position from ZooKeeper: {exc}")

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

    async def _dead_letter(self, key: bytes | None, value: bytes | None, where: Any,
                           error: BaseException) -> None:  # fmt: skip
        """Send the original bytes to ``<name>.dlq`` with the error in headers; wait for the ack."""
        self.stats.dead_lettered += 1
        reason = str(error)
        log.error(
            "consumer %s: %s/%d offset %d dead-lettered to %s: %s",
            self.name, where.topic, where.partition, where.offset, self.dlq.get_topic_name(),
            reason,
        )  # fmt: skip
        headers = [
            ("aesop.error", reason.encode()),
            ("aesop.error.class", type(getattr(error, "cause", error)).__name__.encode()),
            ("aesop.consumer", self.name.encode()),
            ("aesop.topic", where.topic.encode()),
            ("aesop.partition", str(where.partition).encode()),
            ("aesop.offset", str(where.offset).encode()),
        ]
        delays = RECONNECT.delays()
        while True:
            try:
                future = await self.dlq.send(key=key, value=value, headers=headers)
                await future
                return
            except Exception as exc:  # Kafka down: the event must not be lost, so wait.
                delay = next(delays)
                log.warning("consumer %s: dead-letter send failed (%s); retrying in %.1fs",
                            self.name, exc, delay)  # fmt: skip
                await self._pause(delay, f"sending a dead letter: {exc}")

    # -- the ZooKeeper mirror ----------------------------------------------------------

    def _publish(self, tp: tuple[str, int]) -> None:
        document = self.applied.data.get(applied_key(*tp))
        if document is None:
            return
        self.mirror.publish(
            mirror_path(self.name, *tp),
            {k: document[k] for k in ("scn", "row", "offset", "ts_ms")},
        )
        self._mirrored_at[tp] = time.monotonic()
        self._dirty.discard(tp)

    def _publish_all(self) -> None:
        for tp in list(self._dirty):
            self._publish(tp)

    @Service.timer(MIRROR_EVERY_S)
    async def _mirror_idle(self) -> None:
        """Partitions that went quiet after a burst still get their last position mirrored."""
        self._publish_all()

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
        known = [self._processed.get(tp), self.app.consumer._committed_offset.get(tp)]
        document = self.applied.data.get(applied_key(*tp))
        if document is not None and document.get("offset") is not None:
            known.append(int(document["offset"]) + 1)
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
                self._next[tp] = position
                self._sought.pop(tp, None)
                await self.app.consumer.seek_now(tp, position)
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
        self._publish_all()
        for tp in revoked:
            for state in (self._fallback, self._held_by_destination, self._next, self._sought,
                          self._processed, self._committed, self._moved_at):  # fmt: skip
                state.pop(tp, None)
        await self.mirror.flush(timeout=5.0)
