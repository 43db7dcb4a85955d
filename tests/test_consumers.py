"""Consumers against the real stack: order, several relays per consumer, user handlers (sync
and async), the applied-position table and its ZooKeeper mirror, skipping re-published
changes, dead letters, transient retries, and the route handler."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.config import ConfigFactory, SourceSpec, write_config
from tests.support.kafka import count_then_settle, read_topic
from tests.support.mysql import master_position, mysql_url, sql
from tests.support.stack import KAFKA, wait_until
from tests.support.workers import WorkerFactory, lose_relay_position
from tests.support.zookeeper import zk_get

pytestmark = pytest.mark.usefixtures("drop_test_resources")

ROWS_PER_TABLE = 40
HANDLERS = "tests.sample_handlers"


def consumer_toml(name: str, topics: list[str], handler: str, extra: str = "") -> str:
    return (
        f'\n[[consumer]]\nname = "{name}"\ntopics = {orjson.dumps(topics).decode()}\n'
        f'handler = "{handler}"\n{extra}'
    )


def source_spec(name: str, database: str, topic: str) -> SourceSpec:
    return SourceSpec(
        name=name,
        include=[f"{database}.*"],
        server_id=7000 + random.randrange(10**8),
        start=master_position(),
        topic=topic,
    )


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def identity(event: dict[str, Any]) -> tuple[str, int, int]:
    return (event["source"]["name"], event["scn"], event["row"])


def workload(database: str, table: str, rounds: int = 3) -> int:
    """Inserts, updates each row ``rounds`` times, deletes every fifth; returns the changes."""
    with pymysql.connect(**mysql_url(database).connect_args(), autocommit=False) as conn:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT, note VARCHAR(20))")
        conn.commit()
        changes = 0
        for i in range(1, ROWS_PER_TABLE + 1):
            cur.execute(f"INSERT INTO {table} VALUES (%s, 0, 'ok')", (i,))
            changes += 1
            if i % 7 == 0:
                conn.commit()
        conn.commit()
        for r in range(1, rounds + 1):
            for i in range(1, ROWS_PER_TABLE + 1):
                cur.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (r, i))
                changes += 1
            conn.commit()
        cur.execute(f"DELETE FROM {table} WHERE id % 5 = 0")
        changes += ROWS_PER_TABLE // 5
        conn.commit()
    return changes


def assert_key_order(seen: list[dict[str, Any]]) -> None:
    """Per key, the handler saw the changes in binlog order: (scn, row) increasing."""
    last: dict[bytes, tuple[int, int]] = {}
    for event in seen:
        key = orjson.dumps([event["source"]["name"], event["source"]["table"], event["key"]])
        here = (event["scn"], event["row"])
        assert key not in last or last[key] < here, f"out of order for {key!r}"
        last[key] = here


def test_one_consumer_reads_two_relays_in_key_order_sync_async_and_batch(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    second = f"{database}_b"
    sql(f"CREATE DATABASE {second}")
    try:
        app_id = f"t{unique}"
        topics = [f"aesop.t{unique}.a", f"aesop.t{unique}.b"]
        specs = [source_spec("a", database, topics[0]), source_spec("b", second, topics[1])]
        extra = consumer_toml(f"{app_id}-sync", topics, f"{HANDLERS}:record")
        extra += consumer_toml(f"{app_id}-async", topics, f"{HANDLERS}:record_async")
        extra += consumer_toml(f"{app_id}-batch", topics, f"{HANDLERS}:RecordBatches")
        config = make_config(specs, extra=extra)
        out = tmp_path / "seen.jsonl"
        worker = workers.start(config, env={"AESOP_TEST_RECORD": str(out)})
        worker.wait_for_log("relay a: reading")
        worker.wait_for_log("relay b: reading")
        expected = workload(database, "items") + workload(second, "items")

        def both_done() -> bool:
            seen = records(out)
            return all(
                sum(e["how"] == how for e in seen) >= expected for how in ("sync", "async", "batch")
            )

        wait_until(both_done, timeout=90, what=f"{expected} changes seen by each handler")
        published = read_topic(topics[0], count_then_settle(1, 0.5)) + read_topic(
            topics[1], count_then_settle(1, 0.5)
        )
        published_ids = sorted(identity(m["value"]) for m in published)
        assert len(published_ids) == expected
        for how in ("sync", "async", "batch"):
            seen = [e for e in records(out) if e["how"] == how]
            assert sorted(identity(e) for e in seen) == published_ids, f"{how}: once each"
            assert {e["source"]["name"] for e in seen} == {"a", "b"}
            assert_key_order(seen)
            assert all(set(e) >= {"op", "before", "after", "changed", "key"} for e in seen)

        # The applied position per partition, in ZooKeeper, is the last change there.
        worker.stop()
        for message_topic in topics:
            last: dict[int, dict[str, Any]] = {}
            for m in published:
                if m["value"]["source"]["name"] == message_topic[-1]:
                    last[m["partition"]] = m
            for partition, m in last.items():
                for group in (f"{app_id}-sync", f"{app_id}-async", f"{app_id}-batch"):
                    path = f"/aesop-test/{app_id}/consumers/{group}/{message_topic}/{partition}"
                    mirrored = zk_get(path)
                    assert mirrored is not None, path
                    assert set(mirrored) == {"scn", "row", "offset", "ts_ms"}
                    assert (mirrored["scn"], mirrored["row"], mirrored["offset"]) == (
                        m["value"]["scn"], m["value"]["row"], m["offset"],
                    )  # fmt: skip
    finally:
        sql(f"DROP DATABASE IF EXISTS {second}")


def recording_config(tmp_path: Path, unique: str, database: str) -> tuple[Path, str, str]:
    """A config relaying ``database`` as source ``s`` to one consumer that records what it
    handles: (config, app id, topic)."""
    app_id = f"t{unique}"
    topic = f"aesop.t{unique}"
    extra = consumer_toml(f"{app_id}-rec", [topic], f"{HANDLERS}:record")
    config = ConfigFactory(tmp_path, unique)([source_spec("s", database, topic)], extra=extra)
    return config, app_id, topic


def test_republished_changes_are_skipped_and_counted(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str
) -> None:
    config, app_id, topic = recording_config(tmp_path, unique, database)
    out = tmp_path / "seen.jsonl"
    env = {"AESOP_TEST_RECORD": str(out)}
    worker = workers.start(config, env=env)
    worker.wait_for_log("relay s: reading")
    sql(
        "CREATE TABLE first (id INT PRIMARY KEY)", "INSERT INTO first VALUES (1)", database=database
    )
    relay_path = f"/aesop-test/{app_id}/relays/s"
    early = wait_until(lambda: zk_get(relay_path), timeout=30, what="a first relay checkpoint")
    expected = 1 + workload(database, "items")
    wait_until(lambda: len(records(out)) >= expected, timeout=90, what="every change handled")
    assert worker.stop() == 0
    assert "Traceback" not in worker.log(), "a clean stop under way logs no traceback"

    lose_relay_position(app_id, "s", early, tmp_path)
    worker = workers.start(config, env=env)
    worker.wait_for_log("relay s: reading")
    sql("INSERT INTO first VALUES (2)", database=database)
    expected += 1
    published = read_topic(topic, count_then_settle(2 * expected - 2, 1.0), timeout=90)
    ids = [identity(m["value"]) for m in published]
    assert len(ids) > len(set(ids)), "the relay published a range again"
    republished = len(ids) - len(set(ids))
    wait_until(lambda: len(records(out)) >= expected, timeout=60, what="the new change handled")

    def skipped() -> int:
        return sum(
            int(line.split("skipped ")[1].split()[0])
            for line in worker.log().splitlines()
            if "already applied" in line
        )

    # Every re-published change is skipped (and counted); Kafka may also have redelivered
    # some applied ones (Faust can fetch before it seeks to the committed offsets): skipped too.
    wait_until(lambda: skipped() >= republished, 30, "log lines counting the skipped changes")
    seen = [identity(e) for e in records(out)]
    assert sorted(seen) == sorted(set(ids)), "the handler saw every change exactly once"
    assert worker.stop() == 0
    assert "Traceback" not in worker.log()


async def _produce(topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(topic, key=key, value=value, partition=0)
    finally:
        await producer.stop()


def test_bad_messages_and_rejected_changes_are_dead_lettered_transient_errors_retried(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    app_id = f"t{unique}"
    topic = f"aesop.t{unique}"
    extra = consumer_toml(f"{app_id}-strict", [topic], f"{HANDLERS}:reject_bad")
    extra += consumer_toml(f"{app_id}-flaky", [topic], f"{HANDLERS}:flaky")
    config = make_config([source_spec("s", database, topic)], extra=extra)
    out = tmp_path / "seen.jsonl"
    gate = tmp_path / "gate"
    gate.touch()
    worker = workers.start(
        config, env={"AESOP_TEST_RECORD": str(out), "AESOP_TEST_GATE": str(gate)}
    )
    worker.wait_for_log("relay s: reading")
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY, note VARCHAR(20))",
        "INSERT INTO items VALUES (1, 'ok'), (2, 'bad')",
        database=database,
    )
    garbage = [
        (b'{"db": "x"}', b"\xff\xfenot json"),
        (None, b"[1, 2, 3]"),
        (b"k", b'{"op": "c", "scn": 1}'),
    ]
    asyncio.run(_produce(topic, garbage))
    sql("INSERT INTO items VALUES (3, 'ok')", "UPDATE items SET note = 'bad' WHERE id = 3",
        "INSERT INTO items VALUES (4, 'ok')", database=database)  # fmt: skip

    # The flaky handler is retried with backoff, one line per attempt, and handles nothing yet.
    def retries() -> list[str]:
        return [line for line in worker.log().splitlines() if "destination gate closed" in line]

    wait_until(lambda: len(retries()) >= 3, timeout=60, what="three retries")
    assert all(f"{app_id}-flaky: Transient" in line and "retrying in" in line for line in retries())

    def handled(how: str) -> list[tuple[str, int]]:
        return [(e["op"], e["key"]["id"]) for e in records(out) if e["how"] == how]

    wait_until(lambda: len(handled("sync")) >= 3, timeout=60, what="the strict handler's changes")
    assert sorted(handled("sync")) == [("c", 1), ("c", 3), ("c", 4)], "bad rows dead-lettered"
    assert handled("flaky") == []
    gate.unlink()
    wait_until(lambda: len(handled("flaky")) >= 5, timeout=60, what="the flaky handler catching up")
    flaky = handled("flaky")
    assert sorted(flaky) == [("c", 1), ("c", 2), ("c", 3), ("c", 4), ("u", 3)], "none skipped"
    assert flaky.index(("c", 3)) < flaky.index(("u", 3)), "a key's changes stay in order"

    for group, bad in ((f"{app_id}-strict", 5), (f"{app_id}-flaky", 3)):
        dead = read_topic(f"{group}.dlq", count_then_settle(bad, 1.0), timeout=30, raw=True)
        assert len(dead) == bad, group
        originals = [(m["key"], m["value"]) for m in dead]
        for message in garbage:
            assert message in originals, f"{group}: original bytes kept"
        for m in dead:
            headers = dict(m["headers"])
            assert headers["aesop.consumer"] == group.encode()
            assert headers["aesop.topic"] == topic.encode()
            assert headers["aesop.error"]
        errors = sorted(dict(m["headers"])["aesop.error"].decode() for m in dead)
        assert any(e.startswith("not JSON") for e in errors)
        assert any("a JSON list" in e for e in errors)
        assert any("scn and row must be integers" in e for e in errors)
        if bad == 5:
            assert sum("is marked bad" in e for e in errors) == 2
    assert worker.stop() == 0


def test_route_republishes_per_table_with_tombstones(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    app_id = f"t{unique}"
    topic = f"aesop.t{unique}"
    extra = consumer_toml(f"{app_id}-route", [topic], "route", "tombstones = true\n")
    config = make_config([source_spec("s", database, topic)], extra=extra)
    worker = workers.start(config)
    worker.wait_for_log("relay s: reading")
    sql(
        "CREATE TABLE a (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE b (id INT PRIMARY KEY, v INT)",
        "INSERT INTO a VALUES (1, 1), (2, 2)",
        "INSERT INTO b VALUES (1, 1)",
        "UPDATE a SET v = 10 WHERE id = 1",
        "DELETE FROM a WHERE id = 2",
        database=database,
    )
    source = read_topic(topic, count_then_settle(5, 0.5), raw=True)
    routed_a = read_topic(f"{topic}.{database}.a", count_then_settle(5, 1.0), raw=True)
    routed_b = read_topic(f"{topic}.{database}.b", count_then_settle(1, 1.0), raw=True)

    def triples(messages: list[dict[str, Any]]) -> list[tuple[bytes, bytes | None, int]]:
        return [(m["key"], m["value"], m["partition"]) for m in messages]

    expected: dict[str, list[tuple[bytes, bytes | None, int]]] = {"a": [], "b": []}
    for key, value, partition in triples(source):
        event = orjson.loads(value)
        expected[event["source"]["table"]].append((key, value, partition))
        if event["op"] == "d":
            expected[event["source"]["table"]].append((key, None, partition))
    # Same keys, bytes and partitions; per key the source order, a tombstone after a delete.
    for table, routed in (("a", routed_a), ("b", routed_b)):
        in_order = triples(sorted(routed, key=lambda m: (m["partition"], m["offset"])))
        assert len(in_order) == len(expected[table]), table
        for key in {k for k, _, _ in expected[table]}:
            assert [t for t in in_order if t[0] == key] == [
                t for t in expected[table] if t[0] == key
            ], (table, key)
    assert worker.stop() == 0


def test_check_and_worker_reject_a_handler_or_destination_they_cannot_use(
    stack: Any, tmp_path: Path, unique: str
) -> None:
    from tests.support.servers import BIN
    from tests.test_preflight import aesop_check, assert_one_error, run

    app_id = f"t{unique}"
    topics = [f"aesop.t{unique}"]

    def config(handler: str, extra: str = "") -> Path:
        text = consumer_toml(f"{app_id}-c", topics, handler, extra)
        path = tmp_path / f"{handler.replace(':', '-')}.toml"
        return write_config(path, app_id, [], extra=text)

    missing = config("tests.no_such_module:apply")
    assert_one_error(aesop_check(missing), 1, "error: [[consumer]]", "cannot import")
    absent = config(f"{HANDLERS}:no_such_function")
    assert_one_error(aesop_check(absent), 1, "error: [[consumer]]", "has no function")
    not_a_handler = config(f"{HANDLERS}:Transient")
    assert_one_error(
        aesop_check(not_a_handler), 1, "error: [[consumer]]", "not an agents.handlers.Handler"
    )
    down = config("mysql", 'mysql = "mysql://root@127.0.0.1:1/replica"\n')
    assert_one_error(aesop_check(down), 1, "error: consumer", "unreachable", "127.0.0.1:1")
    good = aesop_check(config("route"))
    assert good.code == 0 and good.stdout.startswith(f"ok: consumer '{app_id}-c': route")

    worker = run([str(BIN / "python"), "-m", "faust", "-A", "app", "worker"], missing)
    assert_one_error(worker, 2, "aesop: [[consumer]]", "cannot import 'tests.no_such_module'")


def test_sigusr2_logs_where_each_task_and_the_consumer_agent_wait(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str
) -> None:
    config, _, _ = recording_config(tmp_path, unique, database)
    out = tmp_path / "seen.jsonl"
    worker = workers.start(config, env={"AESOP_TEST_RECORD": str(out)})
    worker.wait_for_log("relay s: reading")
    sql("CREATE TABLE first (id INT PRIMARY KEY)", "INSERT INTO first VALUES (1)",
        database=database)  # fmt: skip
    wait_until(lambda: records(out), timeout=60, what="the consumer handling a change")
    # Once start-up objects are frozen out of the collector, they are still found.
    worker.wait_for_log("start-up objects frozen out of garbage collection", timeout=30)
    worker.proc.send_signal(signal.SIGUSR2)
    worker.wait_for_log("aesop's coroutines:", timeout=10)
    dump = worker.log().split(" tasks:", 1)[1]
    assert "ConsumerRunner._agent" in dump and "agents/consumer.py" in dump, dump[:2000]
    assert "RelayManager" in dump, "the worker's own services are listed too"
    assert worker.stop() == 0, "the worker goes on after the dump and stops cleanly"
    assert "Traceback" not in worker.log()
