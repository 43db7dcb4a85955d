"""The soak's view of Kafka: a tail of the change topic, and a consumer group's offsets.

The tail reads every partition from the beginning for the whole run and notes when each
message arrived, so a recovery time is measured from the message appearing in Kafka, not
from a timestamp the producer chose. It survives broker outages: aiokafka reconnects on its
own, and a consumer that fails outright is rebuilt at the offsets already read.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.support.stack import KAFKA

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Record:
    received: float  # wall time the tail got it
    partition: int
    offset: int
    timestamp: int  # Kafka's (the producer's CreateTime), ms
    key: bytes | None
    value: bytes | None


class TopicTail:
    """Reads ``topic`` from the beginning in a thread of its own until stopped."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.records: list[Record] = []
        self.positions: dict[int, int] = {}  # next offset to read, per partition
        self.rebuilt = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._thread = threading.Thread(target=self._main, name="soak-tail", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"topic {self.topic} did not appear within {timeout:.0f}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def behind(self, timeout: float = 15.0) -> int | None:
        """Messages in the topic not read yet; None while Kafka cannot say."""
        try:
            ends = self._call(self._end_offsets(), timeout)
        except Exception:
            return None
        return sum(max(0, end - self.positions.get(tp.partition, 0)) for tp, end in ends.items())

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _end_offsets(self) -> dict[TopicPartition, int]:
        assert self._consumer is not None
        return await self._consumer.end_offsets(list(self._consumer.assignment()))  # type: ignore[no-any-return]

    def _main(self) -> None:
        try:
            asyncio.run(self._tail())
        except BaseException as exc:
            self.failure = exc

    async def _tail(self) -> None:
        self._loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=KAFKA, enable_auto_commit=False, auto_offset_reset="earliest"
            )
            try:
                await consumer.start()
                partitions = await self._partitions(consumer)
                if partitions is None:
                    return
                tps = [TopicPartition(self.topic, p) for p in partitions]
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, self.positions.setdefault(tp.partition, 0))
                self._consumer = consumer
                self._ready.set()
                while not self._stop.is_set():
                    batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                    now = time.time()
                    for tp, records in batches.items():
                        for r in records:
                            self.records.append(
                                Record(now, tp.partition, r.offset, r.timestamp, r.key, r.value)
                            )
                        if records:
                            self.positions[tp.partition] = records[-1].offset + 1
            except Exception:
                self.rebuilt += 1  # the broker went away under us: build a new consumer
                await asyncio.sleep(1.0)
            finally:
                self._consumer = None
                await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[int] | None:
        while not self._stop.is_set():
            found = consumer.partitions_for_topic(self.topic)
            if found:
                return sorted(found)
            await consumer._client.force_metadata_update()  # a topic created after start
            await asyncio.sleep(0.5)
        return None


def group_offsets(group: str, topic: str) -> dict[int, tuple[int | None, int]]:
    """Per partition of ``topic``: (the group's committed offset, the log end offset)."""

    async def read() -> dict[int, tuple[int | None, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=10_000)
        consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            # Not subscribed: the topic's metadata must be asked for (else no partitions,
            # and the group would look as if it had committed nothing).
            consumer._client.add_topic(topic)
            while not consumer.partitions_for_topic(topic):
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.1)
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
            return {
                tp.partition: (
                    committed[tp].offset if tp in committed else None,
                    end,
                )
                for tp, end in ends.items()
            }
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(asyncio.wait_for(read(), 30))


def quiet_aiokafka() -> None:
    """The tail and the admin client log every failed connection in an outage; the soak
    reports outages itself."""
    for name in ("aiokafka", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
