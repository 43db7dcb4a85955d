"""Helpers for tests against the real stack: configs, workers, Kafka and ZooKeeper reads."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pymysql
from aiokafka import AIOKafkaConsumer, TopicPartition
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from app.settings import MySQLURL

ROOT = Path(__file__).resolve().parent.parent
KAFKA = "127.0.0.1:9092"
ZOOKEEPER = "127.0.0.1:2181"


def mysql_url(database: str | None = None) -> MySQLURL:
    return MySQLURL("127.0.0.1", 3306, "root", "", database)


def sql(*statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
    """Run statements (autocommit) and return the last one's rows."""
    with pymysql.connect(**mysql_url(database).connect_args(), autocommit=True) as conn:
        rows: list[tuple[Any, ...]] = []
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
        return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def master_position() -> str:
    file, pos = sql("SHOW MASTER STATUS")[0][:2]
    return f"{file}:{pos}"


@dataclass
class SourceSpec:
    """What a test config says about one source."""

    name: str
    include: list[str]
    server_id: int
    start: str
    topic: str
    exclude: list[str] = field(default_factory=list)
    mysql: str = "mysql://root@127.0.0.1:3306"

    def toml(self) -> str:
        return (
            "[[source]]\n"
            f'name = "{self.name}"\nmysql = "{self.mysql}"\nserver_id = {self.server_id}\n'
            f"include = {orjson.dumps(self.include).decode()}\n"
            f"exclude = {orjson.dumps(self.exclude).decode()}\n"
            f'start = "{self.start}"\ntopic = "{self.topic}"\n'
        )


def write_config(
    path: Path,
    app_id: str,
    sources: Iterable[SourceSpec],
    extra: str = "",
    zookeeper: str = ZOOKEEPER,
    partitions: int = 4,
) -> Path:
    text = (
        f'[aesop]\nid = "{app_id}"\nkafka = "kafka://{KAFKA}"\nzookeeper = "{zookeeper}"\n'
        f'zk_root = "/aesop-test/{app_id}"\nweb_port = {free_port()}\npartitions = {partitions}\n\n'
    )
    text += "\n".join(s.toml() for s in sources) + extra
    path.write_text(text)
    return path


class Worker:
    """One `faust -A app worker` process, started with a config file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        full_env = {
            **os.environ,
            "AESOP_CONFIG": str(config),
            # Faust's data directories (the worker's and each consumer app's) go under the
            # test's temporary directory, never into the checkout.
            "APP_DATADIR": str(data_dir(log_path.parent, "{conf.name}")),
            **(env or {}),
        }
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {text!r}")
            time.sleep(0.2)
        raise AssertionError(f"worker did not log {text!r} within {timeout}s")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("worker did not stop within timeout after SIGTERM") from None
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class WorkerFactory:
    """Starts workers for one test and cleans them up."""

    def __init__(self, tmp: Path, test_name: str) -> None:
        self.tmp = tmp
        self.test_name = test_name
        self.started: list[Worker] = []

    def start(self, config: Path, env: dict[str, str] | None = None) -> Worker:
        log_path = self.tmp / f"worker-{len(self.started)}.log"
        worker = Worker(config, log_path, env)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.kill()

    def log_tails(self) -> list[tuple[str, str]]:
        return [
            (f"worker log {w.log_path}", "\n".join(w.log().splitlines()[-80:]))
            for w in self.started
            if w.log_path.exists()
        ]


class Stack:
    """The local stack, for fault tests: stop and start single services by their scripts."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, action: str, service: str) -> None:
        done = subprocess.run(
            ["bash", str(self.root / "docker" / "stack.sh"), action, service],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"docker/stack.sh {action} {service} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )

    def log_tails(self) -> list[tuple[str, str]]:
        sections = []
        for name in ("mariadb/mariadb.log", "kafka/server.log", "zookeeper/zookeeper.log"):
            path = self.root / ".stack" / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-30:]
                sections.append((f"stack log {path}", "\n".join(lines)))
        return sections


def read_topic(
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 60.0,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """Every message of ``topic`` from the beginning, as {key, value, partition, offset};
    ``raw``: key and value as bytes, plus the headers."""
    return asyncio.run(_read_topic(topic, until, timeout, raw))


async def _read_topic(
    topic: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float, raw: bool
) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA, enable_auto_commit=False, auto_offset_reset="earliest"
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


def zk_get(path: str) -> dict[str, Any] | None:
    client = KazooClient(hosts=ZOOKEEPER, timeout=10)
    client.start(timeout=15)
    try:
        if not client.exists(path):
            return None
        data, _ = client.get(path)
        return orjson.loads(data)
    finally:
        client.stop()
        client.close()


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


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@dataclass(frozen=True)
class BinlogRows:
    """One rows event of a test's database, as SHOW BINLOG EVENTS lists it."""

    file: str
    pos: int
    op: str
    db: str
    table: str
    gtid: str | None

    @property
    def scn(self) -> int:
        return int(self.file.rsplit(".", 1)[1]) << 32 | self.pos


@dataclass
class BinlogTransaction:
    """A transaction (or DDL) after a start position: its GTID, rows events and end."""

    gtid: str | None
    rows: list[BinlogRows] = field(default_factory=list)
    end: tuple[str, int] | None = None


ROWS_EVENTS = {"Write_rows": "c", "Update_rows": "u", "Delete_rows": "d"}


def binlog_transactions(start: str, database: str) -> list[BinlogTransaction]:
    """The committed transactions since ``start`` with rows events of ``database``'s tables.

    An oracle independent of the relay: the server's own listing of its binlog.
    """
    file, _, pos = start.rpartition(":")
    files = [row[0] for row in sql("SHOW BINARY LOGS")]
    tables: dict[str, tuple[str, str]] = {}
    found: list[BinlogTransaction] = []
    txn = BinlogTransaction(None)
    for name in files[files.index(file) :]:
        offset = f" FROM {pos}" if name == file else ""
        for _, at, kind, _, end, info in sql(f"SHOW BINLOG EVENTS IN '{name}'{offset}"):
            if kind == "Gtid":
                # "BEGIN GTID 0-1-57", "GTID 0-1-58" (DDL); a group commit adds " cid=N".
                words = info.split()
                txn = BinlogTransaction(words[words.index("GTID") + 1])
            elif kind == "Table_map":
                table_id = info.split()[1]
                db, _, table = info[info.index("(") + 1 : info.rindex(")")].partition(".")
                tables[table_id] = (db, table)
            elif kind.rsplit("_", 1)[0] in ROWS_EVENTS:
                db, table = tables[info.split()[1]]
                if db == database:
                    op = ROWS_EVENTS[kind.rsplit("_", 1)[0]]
                    txn.rows.append(BinlogRows(name, at, op, db, table, txn.gtid))
            elif kind == "Xid" or (kind == "Query" and not info.startswith(("BEGIN", "SAVEPOINT"))):
                txn.end = (name, end)
                if txn.rows:
                    found.append(txn)
                txn = BinlogTransaction(None)
    return found


def delete_topics(*topics: str, timeout: float = 60.0) -> None:
    """Delete topics and wait until the broker no longer lists them."""
    asyncio.run(_delete_topics(list(topics), timeout))


async def _delete_topics(topics: list[str], timeout: float) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
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


def delete_topics_starting_with(*prefixes: str, timeout: float = 60.0) -> None:
    """Delete every topic whose name starts with one of ``prefixes`` (test clean-up)."""

    async def names() -> list[str]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if t.startswith(prefixes)]
        finally:
            await admin.close()

    found = asyncio.run(names())
    if found:
        delete_topics(*found, timeout=timeout)


def data_dir(tmp: Path, app_id: str) -> Path:
    """Where the workers of a test keep an app's Faust data directory."""
    return tmp / f"{app_id}-data"


def lose_relay_position(app_id: str, source: str, checkpoint: dict[str, Any], tmp: Path) -> None:
    """As after a relay crash: ZooKeeper holds the old ``checkpoint`` and the relay's table
    (its changelog, the worker's data directory under ``tmp``) is lost, so the relay's next
    start publishes everything after that checkpoint a second time."""
    client = KazooClient(hosts=ZOOKEEPER, timeout=10)
    client.start(timeout=15)
    try:
        client.set(f"/aesop-test/{app_id}/relays/{source}", orjson.dumps(checkpoint))
    finally:
        client.stop()
        client.close()
    delete_topics(f"{app_id}-source_to_checkpoint-changelog")
    shutil.rmtree(data_dir(tmp, app_id), ignore_errors=True)


def zk_delete(path: str) -> None:
    """Delete ``path`` and everything under it, if present (test clean-up)."""
    client = KazooClient(hosts=ZOOKEEPER, timeout=10)
    client.start(timeout=15)
    try:
        client.delete(path, recursive=True)
    except NoNodeError:
        pass
    finally:
        client.stop()
        client.close()
