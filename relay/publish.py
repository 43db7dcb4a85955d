"""Change batches to Kafka as one record batch per partition, not one producer.send per change."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from relay.handoff import Batch, SerializedChange


class _RecordBatch:
    """An aiokafka record batch being filled for one partition; its future once submitted."""

    __slots__ = ("builder", "future")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.future: Awaitable[Any] | None = None

    def append(self, change: SerializedChange) -> bool:
        """False when full; an empty record batch takes any first change."""
        return self.builder.append(key=change.key, value=change.value, timestamp=None) is not None

    async def submit(self, producer: Any, topic: str, partition: int) -> None:
        # Closed, it is sent as soon as the partition is free instead of lingering.
        self.builder.close()
        self.future = await producer.send_batch(self.builder, topic, partition=partition)


class Publisher:
    """Publishes the handed-off batches of one topic through faust's aiokafka producer.

    ``producer.send`` costs a coroutine, a metadata wait and a future per change, which was
    as much CPU as converting and serializing the change, on the same GIL as the binlog
    parser. Here a change costs one append to its partition's record batch, and a handoff
    batch waits on one future per partition it touched.

    Order is kept: partitions come from the producer's own partitioner (a key lands where
    ``send`` would put it), one partition's record batches are submitted in binlog order,
    and aiokafka holds one record batch per partition until the previous one was drained,
    so each key's changes reach Kafka in binlog order.
    """

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def publish(self, batches: Sequence[Batch]) -> list[list[Awaitable[Any]]]:
        """Submit every change of ``batches``; per batch, the futures that acknowledge it."""
        topic = self.topic
        aio = self.producer._ensure_producer()  # faust exposes no public handle on it
        partition_of = self.producer.partitioner
        partitions = sorted(await aio.partitions_for(topic))
        available = list(aio.client.cluster.available_partitions_for_topic(topic) or ())
        filling: dict[int, _RecordBatch] = {}
        touched_per_batch: list[set[_RecordBatch]] = []
        for batch in batches:
            touched: set[_RecordBatch] = set()
            for change in batch.changes:
                partition = partition_of(change.key, partitions, available)
                record_batch = filling.get(partition)
                if record_batch is None or not record_batch.append(change):
                    if record_batch is not None:
                        await record_batch.submit(aio, topic, partition)
                    record_batch = filling[partition] = _RecordBatch(aio.create_batch())
                    record_batch.append(change)
                touched.add(record_batch)
            touched_per_batch.append(touched)
        for partition, record_batch in filling.items():
            await record_batch.submit(aio, topic, partition)
        return [
            [record_batch.future for record_batch in touched if record_batch.future is not None]
            for touched in touched_per_batch
        ]
