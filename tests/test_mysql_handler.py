"""``handler = "mysql"`` end to end: SQL on a source database, a worker relaying it and a
consumer applying it, and the destination compared with the source row for row."""

from __future__ import annotations

import asyncio
import itertools
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest

from agents.handlers import Change, EventFailed
from agents.mysql import MySQLHandler
from app.settings import ConsumerSettings, MySQLURL
from tests.support.cli import get
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.kafka import count_then_settle, delete_topics, read_topic
from tests.support.mysql import in_one_transaction, master_position, mysql_url, server_id, sql
from tests.support.replica import (
    SCHEMA,
    assert_converges,
    consumer_toml,
    create_schema,
    retry_lines,
    rows_of,
)
from tests.support.servers import ServerDatabase, restart, start_private_server
from tests.support.stack import KAFKA, free_port, wait_until
from tests.support.workers import Worker, WorkerFactory, lose_relay_position
from tests.support.zookeeper import zk_delete, zk_get

pytestmark = pytest.mark.usefixtures("drop_test_resources")


WIDE_ROWS = [
    "(18446744073709551615, '99999999999999999999999999999999999.999999999999999999999999999999',"
    " 3.40282e38, -1.7976931348623157e308, '9999-12-31 23:59:59.999999',"
    " '2038-01-19 03:14:07.9999', '838:59:59.000000', '1000-01-01', 2155,"
    " '0000-00-00', '0000-00-00 00:00:00', 1, 8191, 18446744073709551615,"
    ' \'c\', \'x,y,z\', \'{"k":"ünï 😀","n":[1,{"x":null,"y":1.5}],"t":true}\','
    " x'00ff80fe0a', x'00010000', x'ff00', '😀🎉 ok', 'café £', '中文字符', 'Ωmega ∑',"
    " ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))'), NULL, 'long text')",
    "(0, '-0.000000000000000000000000000001', -1.1, 0.1, '1000-01-01 00:00:00.000001',"
    " '1970-01-01 00:00:01.0001', '-838:59:59.999999', '2024-02-29', 0,"
    " '2020-00-00', '2020-01-00 00:00:00', 0, 0, 0,"
    " 'a', '', '[]', x'', x'', x'', '', '', '', '',"
    " ST_GeomFromText('POINT(1.5 -2.25)'), 0, '')",
    "(7, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    "(8, '1.5', 1e-30, 2.5e-300, '2024-06-01 12:34:56.500000', '2024-06-01 12:34:56.5000',"
    " '-00:00:00.000001', '2024-06-01', 1901, '0000-01-01', '2024-06-01 00:00:00',"
    " 1, 4096, 9223372036854775808, 'b', 'y', '\"a \\\\\"quoted\\\\\" string\"',"
    " x'5c27225c00', x'27272727', x'5c', 'tab\\there', 'ÿ', '元', '\\\\',"
    " ST_GeomFromText('MULTILINESTRING((0 0,1 1),(2 2,3 3))'), -2147483648, 'x')",
]


def start_worker(
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    database: str | ServerDatabase,
    destination_url: str,
    extra: str = "",
) -> tuple[Worker, str]:
    """A worker relaying ``database`` (on the stack's MariaDB, or a matrix server's) and
    applying it to ``destination_url`` (``extra``: more of the config)."""
    topic = f"aesop.t{unique}"
    consumer = f"t{unique}-replica"
    if isinstance(database, ServerDatabase):
        spec = SourceSpec("shop", [f"{database.db}.*"], server_id(), database.position(), topic,
                          mysql=database.url())  # fmt: skip
    else:
        spec = SourceSpec("shop", [f"{database}.*"], server_id(), master_position(), topic)
    config = ConfigFactory(tmp_path, unique)(
        sources=[spec], extra=consumer_toml(consumer, topic, destination_url) + extra
    )
    worker = workers.start(config)
    worker.wait_for_log("relay shop: reading")
    return worker, consumer


def workload(database: str | ServerDatabase, base: int = 0) -> None:
    """Inserts, updates, deletes, key changes and multi-row transactions on every table
    (of a database on the stack's MariaDB, or a matrix server's)."""
    b = base
    statements = [
        *(f"INSERT INTO items VALUES ({b + i}, 'item {i}', {i})" for i in range(40)),
        f"INSERT INTO order_lines VALUES ({b + 1}, 1, 'sku-ä', 1.50), ({b + 1}, 2, 'x', 2.00),"
        f" ({b + 2}, 1, 'y', 3.25)",
        *(
            f"INSERT INTO log VALUES ('2024-01-01 00:00:0{i % 10}.{i:06d}', 'm{i}', {i})"
            for i in range(12)
        ),
        "INSERT INTO log VALUES (NULL, 'dup', 1), (NULL, 'dup', 1), (NULL, 'DUP', 1)",
        *(
            f"UPDATE items SET qty = qty + {n}, name = CONCAT(name, '+') WHERE id % 3 = {n % 3}"
            f" AND id >= {b}"
            for n in range(6)
        ),
        f"DELETE FROM items WHERE id IN ({b + 5}, {b + 6}, {b + 7})",
        f"UPDATE items SET id = id + 1000 WHERE id IN ({b + 10}, {b + 11})",  # key changes
        f"UPDATE items SET id = {b + 5}, name = 'reborn' WHERE id = {b + 12}",  # onto a freed key
        f"UPDATE order_lines SET line = line + 10 WHERE order_id = {b + 1}",
        f"UPDATE order_lines SET amount = amount * 2 WHERE order_id = {b + 2}",
        "UPDATE log SET n = n + 100 WHERE msg = 'm3'",
        "DELETE FROM log WHERE msg = 'm4'",
        # Rows equal but for case: the replica must touch the same one (a binary match).
        "UPDATE log SET msg = 'dup2' WHERE msg = BINARY 'dup' LIMIT 1",
        "DELETE FROM log WHERE msg = BINARY 'DUP'",
    ]
    on = database if isinstance(database, ServerDatabase) else None
    if on is not None:
        on.sql(*statements)
    else:
        sql(*statements, database=str(database))
    in_one_transaction(
        on.db if on else str(database),
        f"INSERT INTO items VALUES ({b + 500}, 'txn', 1), ({b + 501}, 'txn', 2)",
        f"UPDATE items SET qty = 99 WHERE id = {b + 500}",
        f"DELETE FROM items WHERE id = {b + 501}",
        f"UPDATE items SET id = {b + 501} WHERE id = {b + 500}",
        f"INSERT INTO order_lines VALUES ({b + 3}, 1, 'txn', 0.01)",
        "INSERT INTO log VALUES (NULL, 'txn', NULL)",
        connect=on.connect_args() if on else None,
    )


# Strict, with zero dates: MySQL 8's default sql_mode (NO_ZERO_DATE, NO_ZERO_IN_DATE)
# refuses WIDE_ROWS' zero dates, which MariaDB's default takes.
ZERO_DATES = "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'"


def wide_workload(server: ServerDatabase) -> None:
    rows = WIDE_ROWS
    if server.mysql:
        # MySQL's TIME ends at -838:59:59.000000; MariaDB's takes a fraction past it.
        rows = [row.replace("'-838:59:59.999999'", "'-838:59:59.000000'") for row in rows]
    server.sql(ZERO_DATES, *(f"INSERT INTO wide VALUES {row}" for row in rows))
    server.sql(
        ZERO_DATES,
        "UPDATE wide SET f = 1.1, g = 0.30000000000000004, s = 'x,z', e = 'a',"
        ' j = \'{"a":["😀",{"b":null}],"n":-0.5}\', bi = x\'01020304\','
        " tm = '-12:00:00.5', geo = ST_GeomFromText('LINESTRING(0 0,1 2,3 4)') WHERE id = 0",
        "UPDATE wide SET id = 9, b64 = 1 WHERE id = 8",  # key change on the wide table
        "UPDATE wide SET n = 1, dt = '2000-01-01 00:00:00.000000' WHERE id = 7",
        "INSERT INTO wide (id, n) VALUES (100, 1)",
        "DELETE FROM wide WHERE id = 100",
    )


def test_replica_equals_the_source_row_for_row(
    workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """On each server of the matrix, source and replica on the same server (on MySQL 8 the
    relay logs in as a caching_sha2_password user, the handler as root, also sha2)."""
    replica = f"{server.db}_replica"
    try:
        create_schema(server.connect_args(), server.db, SCHEMA)
        create_schema(server.connect_args(), replica, SCHEMA)
        destination = f"mysql://root@127.0.0.1:{server.server.port}/{replica}"
        start_worker(workers, tmp_path, unique, server, destination)
        workload(server)
        wide_workload(server)
        tables = assert_converges(
            (server.connect_args(), server.db), (server.connect_args(), replica), 60
        )
        assert {table: len(rows) for table, (rows, _) in tables.items()} == {
            "items": 38, "order_lines": 4, "log": 14, "wide": 4,
        }  # fmt: skip
        assert all(checksum is not None for _, checksum in tables.values())
        dlq = read_topic(f"t{unique}-replica.dlq", lambda messages: False, timeout=3)
        assert dlq == []
    finally:
        server.sql(f"DROP DATABASE IF EXISTS {replica}")


STALLED_S = 5


def test_a_stopped_replica_is_retried_until_it_is_back(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, replica: str
) -> None:
    server = start_private_server(tmp_path / "replica")
    try:
        target = {"host": "127.0.0.1", "port": server.port, "user": "root"}
        create_schema(mysql_url().connect_args(), database, SCHEMA)
        create_schema(target, replica, SCHEMA)
        worker, consumer = start_worker(
            workers, tmp_path, unique, database, f"{server.url()}/{replica}",
            extra=f"\n[lag]\nstalled_seconds = {STALLED_S}\n",
        )  # fmt: skip
        port = tomllib.loads(worker.config.read_text())["aesop"]["web_port"]
        workload(database)
        assert_converges((mysql_url().connect_args(), database), (target, replica), 60)
        assert get(port, "/health")[0] == 200

        server.stop()
        stopped_at = time.monotonic()
        workload(database, base=2000)
        wait_until(lambda: len(retry_lines(worker, consumer)) >= 3, 60, "three retries")
        # The consumer's partitions have changes waiting and none moves on: /health says so,
        # with the failure being retried.
        _, body = wait_until(
            lambda: (answer := get(port, "/health"))[0] == 503 and answer, 60, "/health 503"
        )
        assert time.monotonic() - stopped_at >= STALLED_S
        stalled = [line for line in body["down"] if line.startswith(f"consumer {consumer}: ")]
        assert stalled, body
        for line in stalled:
            assert "changes waiting, none processed for" in line, line
            assert "retrying: OperationalError" in line, line
        worker.wait_for_log("changes waiting, none processed for", 15)  # the watch's warning
        sql("UPDATE items SET qty = -qty WHERE id >= 2000", database=database)
        server = restart(server)
        tables = assert_converges((mysql_url().connect_args(), database), (target, replica), 90)
        wait_until(lambda: get(port, "/health")[0] == 200, 30, "/health 200 again")
        worker.wait_for_log("moves again", 15)
    finally:
        server.stop()
    assert len(tables["items"][0]) == 2 * 38
    retries = retry_lines(worker, consumer)
    assert all("OperationalError: (20" in line for line in retries), retries
    assert read_topic(f"{consumer}.dlq", lambda messages: False, timeout=3) == []


def test_a_change_the_replica_refuses_is_dead_lettered_and_the_rest_applied(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, replica: str
) -> None:
    create_schema(
        mysql_url().connect_args(),
        database,
        {"items": SCHEMA["items"], "narrow": "id INT PRIMARY KEY, name VARCHAR(40)",
         "missing": "id INT PRIMARY KEY, name VARCHAR(40), extra INT"},
    )  # fmt: skip
    create_schema(
        mysql_url().connect_args(),
        replica,
        {"items": SCHEMA["items"], "narrow": "id INT PRIMARY KEY, name VARCHAR(5)",
         "missing": "id INT PRIMARY KEY, name VARCHAR(40)"},
    )  # fmt: skip
    worker, consumer = start_worker(
        workers, tmp_path, unique, database, f"mysql://root@127.0.0.1:3306/{replica}"
    )
    sql(
        "INSERT INTO narrow VALUES (1, 'ok')",
        "INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)",
        "INSERT INTO narrow VALUES (2, 'far too long for five')",
        "INSERT INTO missing VALUES (1, 'x', 7)",
        "UPDATE items SET qty = 20 WHERE id = 2",
        "UPDATE narrow SET name = 'ok2' WHERE id = 1",
        *(f"INSERT INTO items VALUES ({i}, 'later', {i})" for i in range(3, 30)),
        database=database,
    )
    dlq = read_topic(f"{consumer}.dlq", count_then_settle(2), timeout=60, raw=True)
    source = read_topic(f"aesop.t{unique}", count_then_settle(34, 0), timeout=30, raw=True)
    assert len(dlq) == 2, dlq
    by_table: dict[str, dict[str, Any]] = {}
    for message in dlq:
        headers = {k: v.decode() for k, v in message["headers"]}
        original = next(
            m
            for m in source
            if m["partition"] == int(headers["aesop.partition"])
            and m["offset"] == int(headers["aesop.offset"])
        )
        assert (message["key"], message["value"]) == (original["key"], original["value"])
        assert headers["aesop.consumer"] == consumer
        assert headers["aesop.topic"] == f"aesop.t{unique}"
        by_table[orjson.loads(message["key"])["table"]] = headers
    assert "Data too long for column 'name'" in by_table["narrow"]["aesop.error"]
    assert by_table["narrow"]["aesop.error.class"] == "DataError"
    assert "has no column `extra`" in by_table["missing"]["aesop.error"]
    assert by_table["missing"]["aesop.error.class"] == "DestinationError"

    def replica_rows() -> dict[str, Any]:
        return {t: rows for t, (rows, _) in rows_of(mysql_url().connect_args(), replica).items()}

    wait_until(lambda: len(replica_rows()["items"]) == 29, 30, "the later changes")
    assert replica_rows()["narrow"] == [(1, "ok2")]
    assert replica_rows()["missing"] == []
    assert replica_rows()["items"] == rows_of(mysql_url().connect_args(), database)["items"][0]
    assert worker.proc.poll() is None


# --- the handler on its own: batches of hand-made events, no Kafka ---------------------


SEQUENCE = itertools.count(1)


def change(
    op: str, table: str, key: Any, before: Any, after: Any, db: str = "src",
    scn: int | None = None, offset: int | None = None,
) -> Change:  # fmt: skip
    """A change of source ``shop`` in partition 0, next in the stream (offset and scn grow
    with each one made) unless told its ``scn`` (row 0) and ``offset``."""
    number = next(SEQUENCE)
    event = {
        "op": op, "source": {"name": "shop", "db": db, "table": table},
        "scn": number if scn is None else scn, "row": 0,
        "key": key, "before": before, "after": after,
    }  # fmt: skip
    return Change.of(orjson.dumps(event), "aesop.shop", 0, number if offset is None else offset)


def republished(original: Change) -> Change:
    """``original`` as a relay publishes it again after a crash: same identity, new offset."""
    return Change.of(original.value, original.topic, original.partition, next(SEQUENCE))


def apply(url: MySQLURL, *changes: Change) -> EventFailed | None:
    """Apply one batch with a fresh handler; the EventFailed it raised, if any."""

    async def run() -> EventFailed | None:
        consumer = ConsumerSettings("replica", ("aesop.shop",), "mysql", url)
        handler = MySQLHandler(None, consumer, None)
        await handler.start()
        try:
            await handler.apply(changes)
        except EventFailed as failure:
            return failure
        finally:
            await handler.stop()
        return None

    return asyncio.run(run())


def test_key_changes_rows_without_a_key_and_names_that_need_quoting(database: str) -> None:
    sql(
        f"CREATE TABLE {database}.`we``ird` (`i``d` INT PRIMARY KEY, `sp ace` VARCHAR(9))",
        f"CREATE TABLE {database}.nokey (f FLOAT, s VARCHAR(9), b BLOB)",
        f"INSERT INTO {database}.nokey VALUES (1.1, 'A', NULL)",  # equal but for case
    )
    url = mysql_url(database)
    row1, row2 = {"i`d": 1, "sp ace": "one"}, {"i`d": 2, "sp ace": "two"}
    f1 = {"f": 1.1, "s": "a", "b": "AP8="}
    f2 = {"f": 2.5, "s": "a", "b": None}
    assert apply(
        url,
        change("c", "we`ird", {"i`d": 1}, None, row1),
        change("u", "we`ird", {"i`d": 2}, row1, row2),  # the key changed: 1 -> 2
        change("c", "nokey", None, None, f1),
        change("u", "nokey", None, f1, f2),
        change("c", "nokey", None, None, f1),
        change("d", "nokey", None, f1, None),
    ) is None  # fmt: skip
    assert sql(f"SELECT * FROM {database}.`we``ird`") == [(2, "two")]
    assert sorted(sql(f"SELECT f, s, HEX(b) FROM {database}.nokey"), key=str) == [
        (1.1, "A", None), (2.5, "a", None),
    ]  # fmt: skip


def test_a_refused_change_is_found_and_the_ones_before_it_committed(database: str) -> None:
    sql(f"CREATE TABLE {database}.t (id INT PRIMARY KEY, name VARCHAR(3))")
    url = mysql_url(database)
    batch = [change("c", "t", {"id": i}, None, {"id": i, "name": n})
             for i, n in enumerate(["a", "b", "too long", "d"])]  # fmt: skip
    failure = apply(url, *batch)
    assert failure is not None and (failure.index, failure.transient) == (2, False)
    assert failure.cause.args[0] == 1406, failure.cause
    assert sql(f"SELECT id FROM {database}.t") == [(0,), (1,)]
    missing = change("c", "t", {"id": 9}, None, {"id": 9, "name": "x", "extra": 1})
    failure = apply(url, batch[3], missing)
    assert failure is not None and (failure.index, failure.transient) == (1, False)
    assert "has no column `extra`" in str(failure)
    sql(f"ALTER TABLE {database}.t ADD COLUMN extra INT")  # the handler reads it again
    assert apply(url, missing) is None
    assert sql(f"SELECT * FROM {database}.t") == [(0, "a", None), (1, "b", None),
                                                  (3, "d", None), (9, "x", 1)]  # fmt: skip
    failure = apply(url, change("c", "absent", {"id": 1}, None, {"id": 1}))
    assert failure is not None and not failure.transient
    assert "does not exist" in str(failure)


def test_a_batch_applied_again_changes_nothing(database: str) -> None:
    """The connection can be lost with a COMMIT's answer, after the server committed: the
    consumer then retries the batch, which must change nothing, keyless rows included. Nor
    does a batch overlapping what is applied, or a change a relay published again."""
    sql(f"CREATE TABLE {database}.notes (tag INT, n INT)")
    url = mysql_url(database)

    def rows() -> list[tuple[Any, ...]]:
        return sorted(sql(f"SELECT tag, n FROM {database}.notes"))

    first = [
        change("c", "notes", None, None, {"tag": 1, "n": 1}),
        change("c", "notes", None, None, {"tag": 2, "n": 1}),
        change("u", "notes", None, {"tag": 1, "n": 1}, {"tag": 1, "n": 2}),
    ]
    assert apply(url, *first) is None
    assert apply(url, *first) is None  # the retry after the lost answer
    assert rows() == [(1, 2), (2, 1)]
    later = change("u", "notes", None, {"tag": 1, "n": 2}, {"tag": 1, "n": 3})
    assert apply(url, first[2], later) is None
    assert rows() == [(1, 3), (2, 1)]
    assert apply(url, republished(first[1]), republished(later)) is None
    assert rows() == [(1, 3), (2, 1)]
    gone = change("d", "notes", None, {"tag": 2, "n": 1}, None)
    assert apply(url, republished(later), gone) is None  # the new change after a re-published one
    assert rows() == [(1, 3)]


def test_an_earlier_owners_late_commit_is_not_applied_again(database: str) -> None:
    """A partition's earlier owner can still be committing its last batch when the new owner,
    which read the applied offsets before, applies the same changes: the new owner's
    transaction waits for the earlier one's lock on ``aesop_offsets``, then skips them."""
    sql(f"CREATE TABLE {database}.notes (tag INT, n INT)")
    url = mysql_url(database)
    seed = change("c", "notes", None, None, {"tag": 1, "n": 1})
    assert apply(url, seed) is None  # aesop_offsets has the partition's row from here on
    batch = [
        change("u", "notes", None, {"tag": 1, "n": 1}, {"tag": 1, "n": 2}),
        change("c", "notes", None, None, {"tag": 3, "n": 1}),
    ]
    earlier = pymysql.connect(**mysql_url(database).connect_args(), autocommit=False)
    try:
        with earlier.cursor() as cur:  # the earlier owner, inside its last transaction
            cur.execute(
                "SELECT last_offset FROM aesop_offsets WHERE consumer = 'replica'"
                " AND topic = 'aesop.shop' AND part = 0 FOR UPDATE"
            )
            assert cur.fetchone() == (seed.offset,)
            cur.execute("DELETE FROM notes WHERE tag = 1 AND n = 1 LIMIT 1")
            cur.execute("INSERT INTO notes VALUES (1, 2), (3, 1)")
            cur.execute(
                "UPDATE aesop_offsets SET last_offset = %s, scn = %s WHERE consumer = 'replica'",
                (batch[-1].offset, batch[-1].head.scn),
            )
            with ThreadPoolExecutor(1) as pool:
                newer = pool.submit(apply, url, *batch)  # the new owner
                wait_until(
                    lambda: sql(
                        "SELECT COUNT(*) FROM information_schema.INNODB_TRX"
                        " WHERE trx_state = 'LOCK WAIT'"
                    )[0][0],
                    30,
                    "the new owner to wait for the earlier owner's lock",
                )
                assert not newer.done()
                earlier.commit()
                assert newer.result(timeout=30) is None
    finally:
        earlier.close()
    assert sorted(sql(f"SELECT tag, n FROM {database}.notes")) == [(1, 2), (3, 1)]


def test_an_unreachable_replica_is_transient(stack: Any) -> None:
    url = MySQLURL("127.0.0.1", free_port(), "root", "", "nowhere")
    failure = apply(url, change("c", "t", {"id": 1}, None, {"id": 1}))
    assert failure is not None and (failure.index, failure.transient) == (0, True)
    assert failure.cause.args[0] == 2003, failure.cause


def reset_group_to_earliest(group: str, topic: str) -> None:
    """The (empty) group's committed offsets back to the start of every partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    async def reset() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=group,
                                    enable_auto_commit=False)  # fmt: skip
        await consumer.start()
        try:
            consumer._client.add_topic(topic)  # test-only: metadata of a topic not subscribed
            while not (numbers := consumer.partitions_for_topic(topic)):
                await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in numbers]
            consumer.assign(partitions)
            starts = await consumer.beginning_offsets(partitions)
            await consumer.commit({tp: OffsetAndMetadata(starts[tp], "") for tp in partitions})
        finally:
            await consumer.stop()

    asyncio.run(asyncio.wait_for(reset(), 60))


def applied_forty(
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    database: str,
    replica: str,
    checkpoint: list[Any] | None = None,
) -> tuple[Worker, str, tuple[dict[str, Any], str], tuple[dict[str, Any], str]]:
    """A worker that relayed 40 changes (30 of a keyless table) and applied them to the
    replica: (worker, consumer, source, destination). ``checkpoint`` gets the relay's first
    checkpoint, from before those changes."""
    schema = {"log": SCHEMA["log"], "items": SCHEMA["items"]}
    create_schema(mysql_url().connect_args(), database, schema)
    create_schema(mysql_url().connect_args(), replica, schema)
    url = f"mysql://root@127.0.0.1:3306/{replica}"
    worker, consumer = start_worker(workers, tmp_path, unique, database, url)
    if checkpoint is not None:
        path = f"/aesop-test/t{unique}/relays/shop"
        checkpoint.append(wait_until(lambda: zk_get(path), 30, "a first checkpoint"))
    rows = [f"INSERT INTO log VALUES (NULL, 'same', {i % 3})" for i in range(30)]
    rows += [f"INSERT INTO items VALUES ({i}, 'i', {i})" for i in range(10)]
    sql(*rows, database=database)
    source, destination = (
        (mysql_url().connect_args(), database),
        (mysql_url().connect_args(), replica),
    )
    assert_converges(source, destination, 60)
    return worker, consumer, source, destination


def test_the_destination_keeps_its_applied_offsets_so_a_replay_duplicates_no_keyless_row(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, replica: str
) -> None:
    """Every record of the consumer's own positions is lost (its applied table, their
    ZooKeeper mirror, the group's offsets): the whole topic is read again, and the keyless
    table still gets no row twice, because the destination recorded what it applied in the
    same transactions."""
    worker, consumer, source, destination = applied_forty(
        workers, tmp_path, unique, database, replica
    )
    held = sql(f"SELECT topic, part, last_offset FROM {replica}.aesop_offsets"
               f" WHERE consumer = '{consumer}'")  # fmt: skip
    assert sum(offset + 1 for _, _, offset in held) == 40, held
    assert worker.stop() == 0

    topic = f"aesop.t{unique}"
    delete_topics(f"{consumer}-applied-changelog")
    zk_delete(f"/aesop-test/t{unique}/consumers/{consumer}")
    reset_group_to_earliest(consumer, topic)
    worker = workers.start(worker.config)
    worker.wait_for_log("relay shop: reading")
    worker.wait_for_log("; 40 in all)", 60)  # skipped, by the destination's offsets
    sql("INSERT INTO log VALUES (NULL, 'after', 1)", database=database)
    assert_converges(source, destination, 60)
    assert worker.stop() == 0


def test_a_relay_republishing_after_every_consumer_position_is_lost_duplicates_no_keyless_row(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, replica: str
) -> None:
    """The relay publishes everything again, at new offsets, after the consumer's applied
    table and its mirror are lost: the destination's own record of the last applied
    ``(scn, row)`` is what tells those re-published changes from new ones."""
    app_id, topic = f"t{unique}", f"aesop.t{unique}"
    early: list[Any] = []
    worker, consumer, source, destination = applied_forty(
        workers, tmp_path, unique, database, replica, early
    )
    held = sql(f"SELECT source, scn IS NOT NULL, scn_row IS NOT NULL FROM {replica}.aesop_offsets"
               f" WHERE consumer = '{consumer}'")  # fmt: skip
    assert held and all(row == ("shop", 1, 1) for row in held), held
    assert worker.stop() == 0

    lose_relay_position(app_id, "shop", early[0], tmp_path)
    delete_topics(f"{consumer}-applied-changelog")
    zk_delete(f"/aesop-test/{app_id}/consumers/{consumer}")
    worker = workers.start(worker.config)
    worker.wait_for_log("relay shop: reading")
    read_topic(topic, count_then_settle(80, 1.0), timeout=60)  # 40 changes, twice
    worker.wait_for_log("; 40 in all)", 60)  # skipped, by the destination's (scn, row)
    sql("INSERT INTO log VALUES (NULL, 'after', 1)", database=database)
    assert_converges(source, destination, 60)
    assert worker.stop() == 0
