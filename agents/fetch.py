"""The consumer apps' data path: whole fetch rounds, handed to the agent as they came.

Faust hands each fetched message to its conductor one at a time (two tasks per message),
decodes it into an Event, queues it for the stream and tracks it for acks and commits. It
also keeps a per-partition read offset, set for messages it never delivered (a delivery
cut short by a rebalance), which can make it drop the messages that follow a seek. For a
consumer app, the :class:`RoundConsumer` instead puts each fetch round of the consumer's
topics, as the aiokafka records per partition in offset order, into the topic's queue as
one :class:`Round`, tagged with the group generation it was fetched in and a serial number.

A round is delivered when its fetch returns while the flow is active, tagged with the
generation of that moment; the agent processes a partition's records only when they run on
from the offset it processed last (else it seeks back), and drops a round only when it was
fetched in an earlier generation, whose end had Faust seek every partition to its committed
offset: nothing dropped is passed by. A round of the current generation that arrives while
its rebalance is still finishing waits for it. Messages of any other topic (the applied
table's changelog) take Faust's own per-message path.

Nothing of a round is acked to Faust: the agent commits the offsets it processed itself
(:meth:`RoundConsumer.commit_offsets`), and it finishes or gives up its batch in hand when
partitions are revoked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from app.errors import LibraryVersionError
from app.kafka_start import WaitingConsumer, WaitingConsumerThread
from app.producer import IdempotentProducer

FETCH_MAX_WAIT_MS = 100  # how long Kafka may hold a fetch that found nothing new
DELIVERY_WAIT_S = 0.002  # how often a fetched round looks for room in the agent's queue

FAUST = "faust-streaming"
# The versions whose private names below (and app.assignor's) these classes were checked
# against; checked at worker start (``check_faust``).
FAUST_VERSIONS = ("0.15.3",)
PRIVATE_METHODS = {
    faust_aiokafka.Consumer: ("_drain_messages", "_to_message", "_wait_next_records"),
    faust_aiokafka.AIOKafkaConsumerThread: ("_ensure_consumer",),
}


def check_faust(installed: str | None = None) -> None:
    """Raise LibraryVersionError unless the installed Faust is one this module was written
    for: it overrides and reads Faust's private consumer internals."""
    if installed is None:
        try:
            installed = metadata.version(FAUST)
        except metadata.PackageNotFoundError:
            installed = "none"
    missing = [
        f"{cls.__name__}.{name}"
        for cls, names in PRIVATE_METHODS.items()
        for name in names
        if not hasattr(cls, name)
    ]
    if installed not in FAUST_VERSIONS or missing:
        lacking = f" (it lacks {', '.join(missing)})" if missing else ""
        raise LibraryVersionError(
            f"{FAUST} {installed} is installed{lacking}, but aesop's consumers were written "
            f"for {', '.join(FAUST_VERSIONS)}; install that (pip install -r requirements.lock)"
        )


@dataclass(slots=True)
class Round:
    """The records of one fetch, per partition in offset order (aiokafka ConsumerRecords)."""

    generation: int
    serial: int  # fetches started before this one have smaller serials
    records: dict[TP, list[Any]]


class RoundTopic(faust.Topic):
    """A topic whose messages reach its stream as :class:`Round` values."""


class RoundConsumerThread(WaitingConsumerThread):
    """The consumer app's consumer thread: Kafka holds a fetch at most FETCH_MAX_WAIT_MS.

    aiokafka keeps one fetch in flight per broker. A partition left out of it (its previous
    records were not taken yet when it was sent) waits for its answer, however many changes
    arrive meanwhile, and Kafka holds a fetch whose partitions are quiet up to
    ``fetch_max_wait``: faust's 1.5 s showed as 1.4 s gaps between rounds under a steady load,
    and as the consumer's p99 latency."""

    fetch_max_wait_ms = FETCH_MAX_WAIT_MS


class RoundConsumer(WaitingConsumer):
    """Faust's aiokafka consumer, delivering the messages of a RoundTopic a round at a time
    (and, like the worker's own, waiting for Kafka at start: see app.kafka_start)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetches_started = 0

    def _new_consumer_thread(self) -> WaitingConsumerThread:
        return RoundConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _round_channel(self, tp: TP) -> RoundTopic | None:
        channels = self.app.topics._tp_index.get(tp)  # type: ignore[attr-defined]
        if channels and len(channels) == 1:
            (channel,) = channels
            if isinstance(channel, RoundTopic):
                return channel
        return None

    def _fresh(self, generation: int) -> bool:
        return self.flow_active and self.app.consumer_generation_id == generation

    async def commit_offsets(self, offsets: Mapping[TP, int]) -> str | None:
        """Commit these next-to-read offsets of the partitions still assigned; the error, if
        the commit failed (Faust's own commit would crash the app on most errors)."""
        thread = self._thread
        return await thread.call_thread(_commit, thread._ensure_consumer(), offsets)

    def committed_offset(self, tp: TP) -> int | None:
        """The offset last committed for the partition, as this consumer knows it."""
        return self._committed_offset.get(tp)

    async def seek_now(self, tp: TP, offset: int) -> None:
        """Seek a partition, in the consumer's own thread; fetches started after this
        returns read from ``offset``."""
        thread = self._thread
        await thread.call_thread(_seek, thread._ensure_consumer(), tp, offset)

    async def _deliver(self, queue: Any, batch: Round) -> None:
        """Queue a round for the agent once it has room, unless the round goes stale first.

        Not ``queue.put``: that waits for the app's flow control, which stays suspended while
        a changelog is recovered, and this loop must go on delivering that changelog."""
        flow_control = self.app.flow_control
        while self._fresh(batch.generation) and flow_control.is_active():
            if not queue.full():
                queue.put_nowait(batch)
                return
            await asyncio.sleep(DELIVERY_WAIT_S)

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's own Consumer._drain_messages and getmany, but for RoundTopic records.
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offsets = self._read_offset
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        to_message = self._to_message
        track_end_offset = self.app.monitor.track_tp_end_offset
        fetching = faust_consumer.CONSUMER_FETCHING
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(fetching)
                self.fetches_started += 1
                serial = self.fetches_started
                records, active_partitions = await self._wait_next_records(1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning(f"exception performing seek when flow not active {exc}")
                    continue
                # Records that came back while the flow is active belong to the partitions
                # assigned now, whenever the fetch started; the agent checks that each
                # partition's offsets run on from what it processed (and seeks back if not).
                generation = self.app.consumer_generation_id
                rounds: dict[RoundTopic, Round] = {}
                for tp, tp_records in records.items():
                    if not tp_records or not (
                        active_partitions is None
                        or tp in active_partitions
                        or tp in self._buffered_partitions
                    ):
                        continue
                    track_end_offset(tp, self.highwater(tp))
                    channel = self._round_channel(tp)
                    if channel is not None:
                        batch = rounds.get(channel)
                        if batch is None:
                            batch = rounds[channel] = Round(generation, serial, {})
                        batch.records[tp] = tp_records
                        continue
                    for record in tp_records:  # Faust's own path, message by message
                        if not self._fresh(generation):
                            break
                        message = to_message(tp, record)
                        r_offset = read_offsets[tp]
                        if r_offset is None or message.offset >= r_offset:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            if not self._fresh(generation):
                                break  # cut short: not delivered, so not read either
                            read_offsets[tp] = message.offset
                for channel, batch in rounds.items():
                    await self._deliver(channel.queue, batch)
                unset_flag(fetching)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(fetching)


async def _commit(consumer: AIOKafkaConsumer, offsets: Mapping[TP, int]) -> str | None:
    assigned = consumer.assignment()
    todo = {}
    for tp, offset in offsets.items():
        partition = TopicPartition(tp.topic, tp.partition)
        if partition in assigned:
            todo[partition] = OffsetAndMetadata(offset, "")
    if not todo:
        return None
    try:
        await consumer.commit(todo)
    except Exception as exc:  # a rebalance under way, the coordinator gone: commit later
        return f"{type(exc).__name__}: {exc}"
    return None


async def _seek(consumer: AIOKafkaConsumer, tp: TP, offset: int) -> None:
    consumer.seek(TopicPartition(tp.topic, tp.partition), offset)


class RoundTransport(faust_aiokafka.Transport):
    Consumer = RoundConsumer
    Producer = IdempotentProducer  # dead letters and routed changes are never written twice


class RoundApp(faust.App):
    """A Faust app whose consumer is a :class:`RoundConsumer`."""

    # Of every topic its producer creates (see app.producer.durable).
    min_insync_replicas: int = 1

    def _new_transport(self) -> Any:
        return RoundTransport(self.conf.broker_consumer, self)

    @property
    def round_consumer(self) -> RoundConsumer:
        """``consumer``, typed as what this app makes."""
        return cast(RoundConsumer, self.consumer)

    def round_topic(self, *topics: str, **kwargs: Any) -> RoundTopic:
        return RoundTopic(self, topics=topics, **kwargs)
