"""Kafka for tests: read a topic from the beginning, wait for it to grow, delete topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support.stack import KAFKA


def read_topic(
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 60.0,
    raw: bool = False,
    bootstrap: str = KAFKA,
) -> list[dict[str, Any]]:
    """Every message of ``topic`` from the beginning, as {key, value, partition, offset};
    ``raw``: key and value as bytes, plus the headers; ``bootstrap``: another broker."""
    return asyncio.run(_read_topic(topic, until, timeout, raw, bootstrap))


async def _read_topic(
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
    raw: bool,
    bootstrap: str,
) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    messages: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while not (partitions := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                return messages
            await consumer._client.force_metadata_update()  # test-only: refresh metadata
            await asyncio.sleep(0.3)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        while time.monotonic() < deadline and not until(messages):
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if raw:
                        messages.append(
                            {
                                "key": record.key,
                                "value": record.value,
                                "headers": list(record.headers),
                                "partition": record.partition,
                                "offset": record.offset,
                            }
                        )
                        continue
                    messages.append(
                        {
                            "key": orjson.loads(record.key) if record.key else None,
                            "value": orjson.loads(record.value) if record.value else None,
                            "partition": record.partition,
                            "offset": record.offset,
                        }
                    )
        return messages
    finally:
        await consumer.stop()


def count_at_least(n: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda messages: len(messages) >= n


def identities(messages: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(m["value"]["scn"], m["value"]["row"]) for m in messages]


def count_then_settle(n: int, settle: float = 1.5) -> Callable[[list[dict[str, Any]]], bool]:
    """Until at least ``n`` messages arrived, and then ``settle`` more seconds (to see extras)."""
    reached: list[float] = []

    def until(messages: list[dict[str, Any]]) -> bool:
        if len(messages) < n:
            return False
        if not reached:
            reached.append(time.monotonic())
        return time.monotonic() - reached[0] >= settle

    return until


def delete_topics(*topics: str, timeout: float = 60.0, bootstrap: str = KAFKA) -> None:
    """Delete topics and wait until the broker no longer lists them."""
    asyncio.run(_delete_topics(list(topics), timeout, bootstrap))


async def _delete_topics(topics: list[str], timeout: float, bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t in existing]
        if wanted:
            await admin.delete_topics(wanted)
        deadline = time.monotonic() + timeout
        while set(wanted) & set(await admin.list_topics()):
            if time.monotonic() > deadline:
                raise AssertionError(f"topics {wanted} still listed after {timeout}s")
            await asyncio.sleep(0.3)
    finally:
        await admin.close()


def act_then_wait_for_messages(
    topic: str, action: Callable[[], Any], at_least: int, timeout: float = 60.0
) -> None:
    """Run ``action``, then return as soon as ``topic`` grew by ``at_least`` messages.

    The consumer is started before the action, and only end offsets are polled, so this
    returns within milliseconds of the broker having the messages (to stop a worker mid-way).
    """
    asyncio.run(_act_then_wait(topic, action, at_least, timeout))


async def _act_then_wait(
    topic: str, action: Callable[[], Any], at_least: int, timeout: float
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while not (partitions := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} does not exist")
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.3)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        baseline = sum((await consumer.end_offsets(tps)).values())
        action()
        while sum((await consumer.end_offsets(tps)).values()) - baseline < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic} did not grow by {at_least} within {timeout}s")
            await asyncio.sleep(0.01)
    finally:
        await consumer.stop()


def delete_topics_starting_with(
    *prefixes: str, timeout: float = 60.0, bootstrap: str = KAFKA
) -> None:
    """Delete every topic whose name starts with one of ``prefixes`` (test clean-up)."""

    async def names() -> list[str]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(prefixes)]
        finally:
            await admin.close()

    found = asyncio.run(names())
    if found:
        delete_topics(*found, timeout=timeout, bootstrap=bootstrap)
