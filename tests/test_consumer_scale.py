"""Several workers with one config share a ``mysql`` consumer's partitions; a worker killed
with ``kill -9`` in the middle of a workload loses nothing, and a worker joining takes a share.

Only tables with a primary key here: after a kill, the changes a worker applied but had not
yet recorded are applied again, which a primary key makes harmless.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from tests.support.config import SourceSpec
from tests.support.mysql import in_one_transaction, master_position, mysql_url, server_id, sql
from tests.support.replica import (
    SCHEMA,
    assert_converges,
    consumer_toml,
    create_schema,
    retry_lines,
    rows_of,
)
from tests.support.servers import restart, start_private_server
from tests.support.stack import KAFKA, free_port, wait_until
from tests.support.workers import Worker, WorkerFactory

pytestmark = pytest.mark.usefixtures("drop_test_resources")

SESSION_TIMEOUT_S = 10
PARTITIONS = 4
TABLES = {"items": SCHEMA["items"], "order_lines": SCHEMA["order_lines"]}


def assignment(group: str, topic: str) -> list[set[int]]:
    """The partitions of ``topic`` each member of consumer group ``group`` holds."""

    async def describe() -> list[set[int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        (described,) = response.groups
        if described[2] != "Stable":  # state: the group is between assignments
            return []
        held = []
        for member in described[5]:
            decoded = ConsumerProtocolMemberAssignment.decode(member[-1])
            held.append({p for t, parts in decoded.assignment if t == topic for p in parts})
        return held

    return asyncio.run(describe())


def shared_by(group: str, topic: str, members: int) -> list[set[int]]:
    """Wait until ``members`` members hold every partition of ``topic``, each some."""

    def check() -> list[set[int]] | None:
        held = assignment(group, topic)
        if len(held) == members and all(held) and set().union(*held) == set(range(PARTITIONS)):
            return held
        return None

    return wait_until(check, 60 + SESSION_TIMEOUT_S, f"{members} members sharing {topic}", 0.5)  # type: ignore[no-any-return]


class Load(threading.Thread):
    """Writes to the source until stopped: inserts, updates, deletes, key changes, txns."""

    def __init__(self, database: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.random = random.Random(seed)
        self.stopped = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                self.round()
                self.rounds += 1
                time.sleep(0.02)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def round(self) -> None:
        r, n = self.random, self.rounds
        ids = r.sample(range(200), 8)
        in_one_transaction(
            self.database,
            f"INSERT INTO items VALUES ({1000 + n}, 'new', {n}), ({2000 + n}, 'new', 0)",
            *(f"UPDATE items SET qty = qty + 1, name = 'r{n}' WHERE id = {i}" for i in ids[:5]),
            f"DELETE FROM items WHERE id = {ids[5]}",
            f"UPDATE items SET id = {3000 + n} WHERE id = {2000 + n}",  # a key change
            f"INSERT INTO order_lines VALUES ({n}, 1, 'a', 1.00), ({n}, 2, 'b', 2.00)"
            " ON DUPLICATE KEY UPDATE amount = amount + 1",
        )
        sql(
            f"UPDATE order_lines SET line = line + 10 WHERE order_id = {max(n - 3, 0)}"
            " AND line < 10",
            f"REPLACE INTO items VALUES ({ids[6]}, 'replaced', {n})",
            database=self.database,
        )

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)
        assert self.error is None, self.error
        assert self.rounds > 0


def test_workers_share_a_consumer_and_take_over_from_a_killed_one(
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    database: str,
    replica: str,
    make_config,
) -> None:
    source = (mysql_url().connect_args(), database)
    destination = (mysql_url().connect_args(), replica)
    create_schema(mysql_url().connect_args(), database, TABLES)
    create_schema(mysql_url().connect_args(), replica, TABLES)
    topic, consumer = f"aesop.t{unique}", f"t{unique}-replica"
    spec = SourceSpec("shop", [f"{database}.*"], server_id(), master_position(), topic)
    sql(
        "INSERT INTO items VALUES " + ",".join(f"({i}, 'seed', {i})" for i in range(200)),
        database=database,
    )
    config = make_config(
        sources=[spec],
        extra=consumer_toml(consumer, topic, f"mysql://root@127.0.0.1:3306/{replica}"),
        partitions=PARTITIONS,
    )

    def start() -> Worker:
        env = {"AESOP_SESSION_TIMEOUT": str(SESSION_TIMEOUT_S), "AESOP_WEB_PORT": str(free_port())}
        return workers.start(config, env)

    first = start()
    first.wait_for_log("relay shop: reading")
    second = start()
    shared_by(consumer, topic, 2)
    assert_converges(source, destination, 60)

    load = Load(database, seed=int(unique, 16))
    load.start()
    wait_until(lambda: load.rounds >= 20, 60, "20 rounds of load")
    first.kill()  # kill -9, mid-workload
    killed_at = time.monotonic()
    held = shared_by(consumer, topic, 1)
    took_over_s = time.monotonic() - killed_at
    assert held == [set(range(PARTITIONS))]
    wait_until(lambda: load.rounds >= 60, 60, "more load after the kill")

    third = start()
    shared_by(consumer, topic, 2)
    wait_until(lambda: load.rounds >= 90, 60, "more load after the join")
    load.stop()
    tables = assert_converges(source, destination, 90)
    assert len(tables["items"][0]) > 200
    # The group notices the dead member after the session timeout; a rebalance follows.
    assert took_over_s < SESSION_TIMEOUT_S + 20, took_over_s
    assert second.proc.poll() is None and third.proc.poll() is None
    assert "relay shop: reading" in second.log() + third.log(), "the relay moved on too"


def test_a_rebalance_while_the_replica_is_down_applies_nothing_stale(
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    database: str,
    replica: str,
    make_config,
) -> None:
    """A worker retrying a batch whose partitions move to another worker must not write it
    after the new owner has written newer changes of the same rows."""
    server = start_private_server(tmp_path / "replica")
    target = {"host": "127.0.0.1", "port": server.port, "user": "root"}
    try:
        create_schema(mysql_url().connect_args(), database, TABLES)
        create_schema(target, replica, TABLES)
        topic, consumer = f"aesop.t{unique}", f"t{unique}-replica"
        spec = SourceSpec("shop", [f"{database}.*"], server_id(), master_position(), topic)
        config = make_config(
            sources=[spec],
            extra=consumer_toml(consumer, topic, f"{server.url()}/{replica}"),
            partitions=PARTITIONS,
        )
        env = {"AESOP_SESSION_TIMEOUT": str(SESSION_TIMEOUT_S)}
        first = workers.start(config, {**env, "AESOP_WEB_PORT": str(free_port())})
        first.wait_for_log("relay shop: reading")
        sql(
            "INSERT INTO items VALUES " + ",".join(f"({i}, 'v0', 0)" for i in range(40)),
            database=database,
        )
        assert_converges((mysql_url().connect_args(), database), (target, replica), 60)
        server.stop()
        sql("UPDATE items SET name = 'v1', qty = 1", database=database)
        wait_until(lambda: len(retry_lines(first, consumer)) >= 2, 60, "retries")
        second = workers.start(config, {**env, "AESOP_WEB_PORT": str(free_port())})
        # The rebalance must not wait for the batch in retry: the group shares the partitions
        # well within the session timeout, and the first worker stays a member.
        shared_by(consumer, topic, members=2)
        assert "member_id was not recognized" not in first.log()
        sql("UPDATE items SET name = 'v2', qty = 2", database=database)
        time.sleep(3)
        server = restart(server)
        tables = assert_converges((mysql_url().connect_args(), database), (target, replica), 60)
        time.sleep(SESSION_TIMEOUT_S + 2)  # a stale batch written late would show now
        assert rows_of(target, replica) == tables
        assert first.proc.poll() is None
    finally:
        server.stop()
    assert second.proc.poll() is None
