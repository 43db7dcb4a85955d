"""A ``[[consumer]]``: a Faust app of its own (its id, and so its Kafka consumer group, is the
consumer's name), hosted by the aesop worker, with one agent over the consumer's topics.

Per batch of events the agent:
1. parses each message; one that is not JSON or not a change event goes to ``<name>.dlq``;
2. skips each event at or below the last applied ``(scn, row)`` of its topic partition
   (a relay re-publishes after a crash; the identity tells a re-publish from a new change);
3. hands the rest to the handler in order, retrying a transient failure with backoff (the
   partition waits: no change is skipped or reordered) and dead-lettering a change the
   handler rejects;
4. records the last applied ``(scn, row)`` per partition in the changelog-backed table
   ``<name>-applied`` (waiting for Kafka's ack), then acks the events so their offsets commit.
The table is mirrored to ZooKeeper at ``<zk_root>/consumers/<name>/<topic>/<partition>``
about once a second per busy partition, and on every rebalance and clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
from faust.types import TP
from mode import Service

from agents.handlers import Change, EventFailed, Handler, build_handler
from agents.safeack import StaleSafeApp
from app.errors import AesopError
from app.partitioner import partition_for_key
from app.retry import RECONNECT
from app.settings import ConsumerSettings, Settings
from tables.zookeeper import ZooKeeperMirror, ZooKeeperUnavailable

log = logging.getLogger(__name__)

BATCH_MAX = 1000
BATCH_WITHIN_S = 0.05
MIRROR_EVERY_S = 1.0
STOP_TIMEOUT_S = 30.0
PAUSE_STEP_S = 0.2
OPS = frozenset("cudr")


class Abandoned(Exception):
    """A batch waiting on a transient error is given up because the worker stops or its
    partitions are being revoked; it is not acked, so whoever owns them next reads it again
    (and skips what was applied by ``(scn, row)``)."""


class BadMessage(Exception):
    """A consumed message that is not a change event."""


def parse(value: bytes | None) -> dict[str, Any]:
    """The change event in a message value, or BadMessage saying why it is not one."""
    if value is None:
        raise BadMessage("null value (tombstone); expected a change event")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise BadMessage(f"not a change event: a JSON {type(event).__name__}, not an object")
    if event.get("op") not in OPS:
        raise BadMessage(f"not a change event: op is {event.get('op')!r}, not c/u/d/r")
    scn, row = event.get("scn"), event.get("row")
    if type(scn) is not int or type(row) is not int:
        raise BadMessage("not a change event: scn and row must be integers")
    source = event.get("source")
    if not isinstance(source, dict) or not all(
        isinstance(source.get(k), str) for k in ("name", "db", "table")
    ):
        raise BadMessage("not a change event: source must have name, db and table")
    return event


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
        self.app = StaleSafeApp(
            consumer.name,
            broker=settings.kafka,
            store="memory://",
            topic_partitions=settings.partitions,
            web_enabled=False,
            autodiscover=False,
            loop=self.loop,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=settings.session_timeout,
            producer_acks=-1,
            producer_partitioner=partition_for_key,
            producer_linger_ms=5,
        )
        self.topic = self.app.topic(*consumer.topics, key_serializer="raw", value_serializer="raw")
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
        self._mirrored_at: dict[tuple[str, int], float] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._fallback: dict[tuple[str, int], dict[str, Any] | None] = {}
        self._warned_sources: set[tuple[str, int]] = set()
        self._stopping = False
        self._abandoned_generation: int | None = None
        # Per partition, the offset that must come next. Faust may drop messages around a
        # rebalance (they come again after a seek) and hand over later ones first: applying
        # those would pass the dropped ones by, and (scn, row) would then skip them for good.
        self._next: dict[tuple[str, int], int] = {}
        self._seeking: set[tuple[str, int]] = set()
        self._stop_requested = asyncio.Event()
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
        # Before the app (and its agent) stops: let the batch in hand finish, so that its
        # events are acked and their offsets committed by the app's own stop.
        self._stopping = True
        self._stop_requested.set()
        try:
            await asyncio.wait_for(self._idle.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("consumer %s: a batch was still being applied at stop", self.name)
        else:
            await self._commit()
        self._publish_all()
        await self.handler.stop()

    async def _commit(self) -> None:
        """Commit the acked offsets now (the app's own stop may find its consumer stopping).

        Faust's commit returns without committing when another commit is under way (its
        periodic one), so commit until nothing acked is left uncommitted, a few times at most.
        """
        consumer = self.app.consumer
        try:
            for _ in range(5):
                await consumer.commit()
                if not self._uncommitted(consumer):
                    break
                await asyncio.sleep(0.1)
        except Exception as exc:  # the next owner re-reads and skips by (scn, row)
            log.warning("consumer %s: offsets not committed at stop (%s)", self.name, exc)
            return
        left = self._uncommitted(consumer)
        if left:
            log.warning("consumer %s: offsets not committed at stop: %s", self.name, left)
        committed = {
            f"{tp.topic}/{tp.partition}": offset
            for tp, offset in sorted(consumer._committed_offset.items())
            if offset
        }
        log.info("consumer %s: stopping at committed offsets %s", self.name, committed)  # fmt: skip

    @staticmethod
    def _uncommitted(consumer: Any) -> dict[Any, int]:
        """Acked offsets beyond the committed ones, per partition (Faust's own bookkeeping)."""
        left = {}
        for tp, acked in consumer._acked.items():
            if acked and (consumer._committed_offset[tp] or 0) <= max(acked):
                left[tp] = max(acked) + 1
        return left

    # -- the agent --------------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for events in stream.noack_take(BATCH_MAX, within=BATCH_WITHIN_S):
            if self._stopping:
                self._forget(events)
                return  # not acked: the next owner of these partitions gets them again
            if self._abandoned_generation is not None:
                # Fetched in the assignment whose batch was abandoned: processing them would
                # pass that batch by. The rebalance seeks every partition to its committed
                # offset, so they come again, after it.
                stale = [e for e in events if e.message.generation_id == self._abandoned_generation]
                if stale:
                    self._forget(stale)
                    events = [e for e in events if e not in stale]
                    if not events:
                        continue
            self._idle.clear()
            try:
                held_back = await self.process(events)
            except Abandoned:
                self._forget(events)
                if self._stopping:
                    return
                self._abandoned_generation = events[0].message.generation_id
                continue
            else:
                if held_back:
                    self._forget(held_back)
                    held = {id(e) for e in held_back}
                    events = [e for e in events if id(e) not in held]
                applied = self.app.consumer.applied
                for event in events:
                    applied.add(id(event.message))
                    await stream.ack(event)
            finally:
                self._idle.set()

    def _forget(self, events: Sequence[Any]) -> None:
        """Stop the app's consumer waiting for these events' acks, without acking them: a
        rebalance waits for every event in hand, and an ack would commit their offsets."""
        unacked = self.app.consumer._unacked_messages
        for event in events:
            unacked.discard(event.message)

    async def process(self, events: Sequence[Any]) -> list[Any]:
        """Apply one batch; returns when every event is applied, skipped or dead-lettered,
        but for those held back (out of sequence: to be read again, not to be acked)."""
        self.stats.consumed += len(events)
        changes: list[Change] = []
        skipped = 0
        last: dict[tuple[str, int], dict[str, Any]] = {}
        held_back: list[Any] = []
        for event in events:
            message = event.message
            tp = (message.topic, message.partition)
            if not await self._in_sequence(tp, message.offset):
                held_back.append(event)
                continue
            try:
                parsed = parse(message.value)
            except BadMessage as exc:
                await self._dead_letter(message.key, message.value, message, exc)
                continue
            change = Change(
                parsed, message.key, message.value, message.topic, message.partition,
                message.offset,
            )  # fmt: skip
            position = last.get(tp) or await self._position(tp)
            if position is not None and self._already_applied(tp, position, parsed):
                skipped += 1
                continue
            changes.append(change)
            last[tp] = self._document(change)
        if skipped:
            self.stats.skipped += skipped
            log.info(
                "consumer %s: skipped %d changes already applied (at or below the applied "
                "(scn, row) of their partition; %d in all)",
                self.name, skipped, self.stats.skipped,
            )  # fmt: skip
        await self._apply(changes)
        return held_back

    async def _in_sequence(self, tp: tuple[str, int], offset: int) -> bool:
        """Whether this offset may be processed now: the next one, or an older one again."""
        expected = self._next.get(tp)
        if expected is None:
            document = await self._position(tp)
            if document is not None and "offset" in document:
                expected = int(document["offset"]) + 1
        if expected is not None and offset > expected:
            if tp not in self._seeking:
                self._seeking.add(tp)
                log.warning(
                    "consumer %s: %s/%d offset %d came before %d; reading again from %d",
                    self.name, tp[0], tp[1], offset, expected, expected,
                )  # fmt: skip
                await self.app.consumer.seek(TP(tp[0], tp[1]), expected)
            self._next[tp] = expected
            return False
        self._seeking.discard(tp)
        self._next[tp] = offset + 1
        return True

    def _already_applied(
        self, tp: tuple[str, int], position: dict[str, Any], event: dict[str, Any]
    ) -> bool:
        if position.get("source", event["source"]["name"]) != event["source"]["name"]:
            if tp not in self._warned_sources:
                self._warned_sources.add(tp)
                log.warning(
                    "consumer %s: %s/%d carries changes of several sources; re-published "
                    "changes of one source cannot be told apart there",
                    self.name, tp[0], tp[1],
                )  # fmt: skip
            return False
        return (event["scn"], event["row"]) <= (position["scn"], position["row"])

    async def _apply(self, changes: list[Change]) -> None:
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
                await self._pause(delay)
                pending = pending[failure.index :]
                continue
            await self._record(pending)
            return

    async def _record(self, changes: Sequence[Change]) -> None:
        """Store the last applied ``(scn, row)`` per partition; wait for the changelog's ack."""
        if not changes:
            return
        last: dict[tuple[str, int], Change] = {}
        for change in changes:
            last[(change.topic, change.partition)] = change
            source = change.event["source"]
            self.stats.applied[(source["name"], f"{source['db']}.{source['table']}",
                                change.event["op"])] += 1  # fmt: skip
        sends = []
        now = time.monotonic()
        for tp, change in last.items():
            document = self._document(change)
            key = applied_key(*tp)
            self.applied.data[key] = document
            sends.append(self.applied.send_changelog(tp[1], key, document))
            self._dirty.add(tp)
            if now - self._mirrored_at.get(tp, 0.0) >= MIRROR_EVERY_S:
                self._publish(tp)
        await asyncio.shield(asyncio.gather(*sends))  # a cancelled wait must not cancel sends

    @staticmethod
    def _document(change: Change) -> dict[str, Any]:
        return {
            "scn": change.event["scn"],
            "row": change.event["row"],
            "offset": change.offset,
            "ts_ms": int(time.time() * 1000),
            "source": change.event["source"]["name"],
        }

    async def _position(self, tp: tuple[str, int]) -> dict[str, Any] | None:
        """Last applied position of a partition: the table, else the ZooKeeper mirror."""
        document = self.applied.data.get(applied_key(*tp))
        if document is not None:
            return document  # type: ignore[no-any-return]
        if tp not in self._fallback:
            self._fallback[tp] = await self._mirrored(tp)
        return self._fallback[tp]

    async def _mirrored(self, tp: tuple[str, int]) -> dict[str, Any] | None:
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
                await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Sleep before a retry; raise Abandoned if the worker stops or a rebalance starts."""
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
                await self._pause(delay)

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

    async def _on_revoked(self, sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        self._publish_all()
        for tp in revoked:
            self._fallback.pop((tp.topic, tp.partition), None)
            self._next.pop((tp.topic, tp.partition), None)
            self._seeking.discard((tp.topic, tp.partition))
        await self.mirror.flush(timeout=5.0)
