"""What the benchmark watches: topic end offsets, per-row latency, worker RSS, worker log times."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import DeleteGroupsRequest
from kazoo.client import KazooClient

from tests.support.stack import KAFKA, ZOOKEEPER

_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_time(log: str, text: str) -> float | None:
    """Wall time of the first worker log line containing ``text`` (mode's default format)."""
    for line in log.splitlines():
        if text in line and (match := _LOG_TIME.match(line)):
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    return None


class TopicWatch:
    """Counts the messages of one topic by its partitions' end offsets, without consuming."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> TopicWatch:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def partitions(self, timeout: float = 60.0) -> list[TopicPartition]:
        deadline = time.monotonic() + timeout
        while not self._partitions:
            found = self._consumer.partitions_for_topic(self.topic)
            if found:
                self._partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic} did not appear within {timeout}s")
            await self._consumer._client.force_metadata_update()  # no public way
            await asyncio.sleep(0.2)
        return self._partitions

    async def count(self) -> int:
        offsets = await self._consumer.end_offsets(await self.partitions())
        return sum(offsets.values())

    async def wait_for(self, rows: int, timeout: float, poll: float = 0.05) -> tuple[int, float]:
        """Poll until the topic holds ``rows`` messages; (count, wall time it was seen)."""
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            count = await self.count()
            if count >= rows:
                return count, time.time()
            await asyncio.sleep(poll)
        return count, time.time()


@dataclass
class LatencyProbe:
    """Reads a topic from the beginning and records, per row, when it arrived here and when
    the relay's producer stamped it (CreateTime), against the commit time in ``after.big``."""

    topic: str
    received: list[float] = field(default_factory=list)  # seconds, receive - commit
    stamped: list[float] = field(default_factory=list)  # seconds, CreateTime - commit

    async def run(self, partitions: list[TopicPartition], done: Callable[[int], bool]) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=KAFKA,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.seek_to_beginning()
            while not done(len(self.received)):
                batches = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        committed = orjson.loads(record.value)["after"]["big"] / 1e6
                        self.received.append(now - committed)
                        self.stamped.append(record.timestamp / 1e3 - committed)
        finally:
            await consumer.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RssSampler:
    """Samples a process's VmRSS (and reads VmHWM, the kernel's own peak) in a thread."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid = pid
        self.every = every
        self.peak_rss_kb = 0
        self.hwm_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def status(self) -> dict[str, int]:
        values = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, amount = line.split()[:2]
                    values[key.rstrip(":")] = int(amount)
        return values

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            values = self.status()
            if values:
                self.samples += 1
                self.peak_rss_kb = max(self.peak_rss_kb, values.get("VmRSS", 0))
                self.hwm_kb = max(self.hwm_kb, values.get("VmHWM", 0))
            self._stop.wait(self.every)


async def delete_topics(prefixes: tuple[str, ...]) -> list[str]:
    """Delete the topics this run created (names starting with one of ``prefixes``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


def worker_log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


async def delete_groups(groups: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        for group in groups:
            node = await admin.find_coordinator(group)
            await admin._send_request(DeleteGroupsRequest([group]), node)  # no public way
    finally:
        await admin.close()


def clean_up_run(prefix: str, groups: list[str], app_ids: list[str], tmp: Path) -> None:
    """What a benchmark run leaves in Kafka and ZooKeeper (each step best-effort), then its
    scratch directory."""
    with contextlib.suppress(Exception):
        asyncio.run(delete_topics((prefix,)))
    with contextlib.suppress(Exception):
        asyncio.run(delete_groups(groups))
    zk = KazooClient(hosts=ZOOKEEPER, timeout=10)
    with contextlib.suppress(Exception):
        zk.start(timeout=15)
        for app_id in app_ids:
            zk.delete(f"/aesop-test/{app_id}", recursive=True)
    with contextlib.suppress(Exception):
        zk.stop()
        zk.close()
    # The worker's data directories are directories: remove the whole tree.
    shutil.rmtree(tmp, ignore_errors=True)
