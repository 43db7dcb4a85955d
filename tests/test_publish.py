"""Publisher without a broker: record batches per partition, filled, submitted and acknowledged.

A fake faust producer hands out a fake aiokafka producer whose record batch builders take
``capacity`` records each; ``send_batch`` records what was submitted, in order, and returns a
future per record batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from app.partitioner import partition_for_key
from relay.handoff import Batch, SerializedChange
from relay.publish import Publisher

TOPIC = "aesop.shop"


class FakeBuilder:
    """An aiokafka BatchBuilder that is full after ``capacity`` records."""

    def __init__(self, number: int, capacity: int) -> None:
        self.number = number
        self.capacity = capacity
        self.records: list[tuple[bytes, bytes, Any]] = []
        self.closed = False

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object | None:
        assert not self.closed, "appended to a closed record batch"
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, timestamp))
        return object()  # aiokafka returns the record's metadata

    def close(self) -> None:
        self.closed = True


@dataclass
class Sent:
    builder: FakeBuilder
    topic: str
    partition: int
    future: asyncio.Future[Any]


@dataclass
class FakeAio:
    """The aiokafka producer as the publisher uses it."""

    partitions: list[int]  # as the metadata lists them, not necessarily sorted
    available: set[int] | None
    capacity: int
    builders: list[FakeBuilder] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    # ("create", n) and ("send", n) in the order they happened.
    events: list[tuple[str, int]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = SimpleNamespace(
            cluster=SimpleNamespace(available_partitions_for_topic=self._available)
        )

    def _available(self, topic: str) -> set[int] | None:
        assert topic == TOPIC
        return self.available

    async def partitions_for(self, topic: str) -> list[int]:
        self.asked.append(topic)
        return list(self.partitions)

    def create_batch(self) -> FakeBuilder:
        builder = FakeBuilder(len(self.builders), self.capacity)
        self.builders.append(builder)
        self.events.append(("create", builder.number))
        return builder

    async def send_batch(self, builder: FakeBuilder, topic: str, *, partition: int) -> Any:
        assert builder.closed, "a record batch was submitted open (it would linger)"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(builder, topic, partition, future))
        self.events.append(("send", builder.number))
        return future

    def records_of(self, partition: int) -> list[bytes]:
        """The keys a partition received, in submission order."""
        return [
            key for s in self.sent if s.partition == partition for key, _, _ in s.builder.records
        ]


class FakeProducer:
    """faust's producer: ``_ensure_producer()`` and ``partitioner``."""

    def __init__(self, aio: FakeAio, partitioner: Callable[..., int]) -> None:
        self.aio = aio
        self.partitioner = partitioner

    def _ensure_producer(self) -> FakeAio:
        return self.aio


def by_prefix(key: bytes, partitions: Sequence[int], available: Sequence[int]) -> int:
    """Keys look like b"<partition>:<name>"."""
    return int(key.split(b":")[0])


def change(key: str, scn: int = 1, row: int = 0) -> SerializedChange:
    return SerializedChange(key.encode(), b"value of " + key.encode(), scn, row)


def batch(*keys: str) -> Batch:
    return Batch(changes=[change(k, row=i) for i, k in enumerate(keys)])


def publisher(
    partitions: int = 4,
    capacity: int = 100,
    partitioner: Callable[..., int] = by_prefix,
    available: set[int] | None = None,
) -> tuple[Publisher, FakeAio]:
    aio = FakeAio(list(range(partitions)), available, capacity)
    return Publisher(FakeProducer(aio, partitioner), TOPIC), aio


async def test_each_change_goes_with_its_key_and_value_where_the_partitioner_says() -> None:
    calls: list[tuple[bytes, list[int], list[int]]] = []

    def recording(key: bytes, partitions: Sequence[int], available: Sequence[int]) -> int:
        calls.append((key, list(partitions), list(available)))
        return by_prefix(key, partitions, available)

    aio = FakeAio([3, 0, 2, 1], {1, 3}, capacity=100)
    pub = Publisher(FakeProducer(aio, recording), TOPIC)
    await pub.publish([batch("2:a", "0:b", "3:c"), batch("2:d")])

    assert aio.asked == [TOPIC]
    # The partitioner sees the partitions sorted and the available ones, per change.
    assert calls == [(k, [0, 1, 2, 3], [1, 3]) for k in (b"2:a", b"0:b", b"3:c", b"2:d")]
    assert {s.topic for s in aio.sent} == {TOPIC}
    placed = {s.partition: s.builder.records for s in aio.sent}
    assert placed == {
        2: [(b"2:a", b"value of 2:a", None), (b"2:d", b"value of 2:d", None)],
        0: [(b"0:b", b"value of 0:b", None)],
        3: [(b"3:c", b"value of 3:c", None)],
    }


async def test_no_available_partitions_reach_the_partitioner_as_an_empty_list() -> None:
    seen: list[list[int]] = []

    def recording(key: bytes, partitions: Sequence[int], available: Sequence[int]) -> int:
        seen.append(list(available))
        return 0

    aio = FakeAio([1, 0], None, capacity=10)
    await Publisher(FakeProducer(aio, recording), TOPIC).publish([batch("0:a")])
    assert seen == [[]]


async def test_changes_keep_their_order_within_each_partition_across_record_batches() -> None:
    pub, aio = publisher(partitions=3, capacity=2)
    keys = [f"{p}:{i}" for i in range(7) for p in (i % 3, (i + 1) % 3)]
    batches = [batch(*keys[:5]), batch(*keys[5:9]), batch(*keys[9:])]
    await pub.publish(batches)

    for p in range(3):
        expected = [k.encode() for k in keys if k.startswith(f"{p}:")]
        assert aio.records_of(p) == expected, p
    # Every change went out once, and every builder made was submitted once.
    assert sum(len(s.builder.records) for s in aio.sent) == len(keys)
    assert sorted(s.builder.number for s in aio.sent) == [b.number for b in aio.builders]


async def test_a_full_record_batch_is_submitted_before_the_next_one_is_started() -> None:
    pub, aio = publisher(partitions=1, capacity=2)
    await pub.publish([batch("0:a", "0:b", "0:c", "0:d", "0:e")])

    assert [len(b.records) for b in aio.builders] == [2, 2, 1]
    assert aio.events == [
        ("create", 0),
        ("send", 0),
        ("create", 1),
        ("send", 1),
        ("create", 2),
        ("send", 2),
    ]
    assert [s.partition for s in aio.sent] == [0, 0, 0]


async def test_a_full_partition_does_not_submit_the_other_partitions_record_batches() -> None:
    pub, aio = publisher(partitions=2, capacity=2)
    await pub.publish([batch("0:a", "1:b", "0:c", "0:d")])

    # Partition 0's first record batch filled up; partition 1's waited for the end.
    assert aio.events[:4] == [("create", 0), ("create", 1), ("send", 0), ("create", 2)]
    assert sorted(aio.events[4:]) == [("send", 1), ("send", 2)]
    sent = sorted((s.partition, s.builder.number, len(s.builder.records)) for s in aio.sent)
    assert sent == [(0, 0, 2), (0, 2, 1), (1, 1, 1)]


async def test_each_batch_waits_on_exactly_the_record_batches_it_touched() -> None:
    pub, aio = publisher(partitions=3, capacity=2)
    first = batch("0:a1", "0:a2", "0:a3", "1:a4")
    second = batch("0:b1", "2:b2")
    third = batch("1:c1")
    futures = await pub.publish([first, second, third])

    sent = {(s.partition, tuple(k for k, _, _ in s.builder.records)): s.future for s in aio.sent}
    p0_first = sent[(0, (b"0:a1", b"0:a2"))]
    p0_shared = sent[(0, (b"0:a3", b"0:b1"))]
    p1 = sent[(1, (b"1:a4", b"1:c1"))]
    p2 = sent[(2, (b"2:b2",))]
    assert len(sent) == 4
    assert len(futures) == 3
    assert len(futures[0]) == 3 and set(futures[0]) == {p0_first, p0_shared, p1}
    assert len(futures[1]) == 2 and set(futures[1]) == {p0_shared, p2}
    assert futures[2] == [p1]


async def test_a_batch_whose_changes_share_one_record_batch_waits_on_one_future() -> None:
    pub, aio = publisher(partitions=2, capacity=10)
    futures = await pub.publish([batch("1:a", "1:b", "1:c")])
    assert len(aio.sent) == 1
    assert futures == [[aio.sent[0].future]]


async def test_no_batches_send_nothing() -> None:
    pub, aio = publisher()
    assert await pub.publish([]) == []
    assert aio.builders == [] and aio.sent == []


async def test_batches_without_changes_wait_on_nothing() -> None:
    pub, aio = publisher(partitions=2)
    futures = await pub.publish([Batch(), batch("1:x"), Batch()])
    assert len(aio.sent) == 1
    assert futures == [[], [aio.sent[0].future], []]


async def test_many_partitions_with_the_default_partitioner() -> None:
    partitions = 64
    pub, aio = publisher(partitions=partitions, capacity=3, partitioner=partition_for_key)
    keys = [f'{{"db":"shop","table":"orders","pk":{{"id":{i}}}}}' for i in range(1000)]
    batches = [batch(*keys[i : i + 50]) for i in range(0, len(keys), 50)]
    futures = await pub.publish(batches)

    default = DefaultPartitioner()
    every = list(range(partitions))
    expected: dict[int, list[bytes]] = {}
    for key in keys:
        expected.setdefault(default(key.encode(), every, every), []).append(key.encode())
    assert len(expected) == partitions  # the keys spread over every partition
    for p in every:
        assert aio.records_of(p) == expected.get(p, []), p
    # No record batch holds more than its capacity, and none is submitted twice.
    assert all(1 <= len(s.builder.records) <= 3 for s in aio.sent)
    assert len({id(s.builder) for s in aio.sent}) == len(aio.sent)
    # Every submitted record batch is waited on by some batch, and by no batch that has
    # no change in it.
    waited = {f for fs in futures for f in fs}
    assert waited == {s.future for s in aio.sent}
    for b, fs in zip(batches, futures, strict=True):
        mine = {k.key for k in b.changes}
        for s in aio.sent:
            touched = any(key in mine for key, _, _ in s.builder.records)
            assert (s.future in fs) == touched
