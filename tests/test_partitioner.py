"""The partitioner is Kafka's default, bit for bit: same key, same partition as aiokafka's."""

from __future__ import annotations

import random

import orjson
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from app.partitioner import murmur2, partition_for_key


def test_murmur2_matches_aiokafka_for_every_length_and_byte() -> None:
    rng = random.Random(5)
    for length in range(300):
        data = bytes(rng.randrange(256) for _ in range(length))
        assert murmur2(data) == aiokafka_murmur2(data), length
    assert murmur2(bytes(range(256))) == aiokafka_murmur2(bytes(range(256)))


def test_partition_for_key_matches_the_default_partitioner() -> None:
    rng = random.Random(6)
    default = DefaultPartitioner()
    for n in (1, 3, 8, 64):
        partitions = list(range(n))
        for _ in range(2000):
            pk = {"id": rng.getrandbits(64), "name": "é" * rng.randrange(4)}
            key = orjson.dumps({"db": "shop", "table": "orders", "pk": pk})
            assert partition_for_key(key, partitions, partitions) == default(
                key, partitions, partitions
            )


def test_a_message_without_key_goes_to_an_available_partition() -> None:
    assert partition_for_key(None, [0, 1, 2], [2]) == 2
