"""The relay against the real stack: SQL in, the exact JSON change events read back from Kafka."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.support.config import ConfigFactory, SourceSpec
from tests.support.kafka import count_then_settle, read_topic
from tests.support.mysql import (
    BinlogRows,
    BinlogTransaction,
    binlog_transactions,
    in_one_transaction,
    master_position,
    server_id,
    sql,
)
from tests.support.stack import wait_until
from tests.support.workers import Worker, WorkerFactory
from tests.support.zookeeper import zk_get

pytestmark = pytest.mark.usefixtures("drop_test_resources")


@dataclass
class Relay:
    """A worker relaying one test database, and what the test needs to read it back."""

    worker: Worker
    name: str
    topic: str
    start: str
    zk_root: str

    def read(self, n: int, settle: float = 1.5, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The messages, once ``n`` arrived and ``settle`` s passed, in (scn, row) order."""
        messages = read_topic(self.topic, count_then_settle(n, settle), timeout)
        return sorted(messages, key=lambda m: (m["value"]["scn"], m["value"]["row"]))


def start_relay(
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    database: str,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> Relay:
    start = master_position()
    app_id = f"t{unique}"
    spec = SourceSpec(
        name="shop",
        include=include or [f"{database}.*"],
        exclude=exclude or [],
        server_id=server_id(),
        start=start,
        topic=f"aesop.t{unique}",
    )
    worker = workers.start(ConfigFactory(tmp_path, unique)(sources=[spec]))
    worker.wait_for_log("relay shop: reading")
    return Relay(worker, spec.name, spec.topic, start, f"/aesop-test/{app_id}")


def mariadb_server_id() -> int:
    return int(sql("SELECT @@server_id")[0][0])


def rows_events(transactions: list[BinlogTransaction]) -> list[BinlogRows]:
    return [rows for txn in transactions for rows in txn.rows]


def strip_times(value: dict[str, Any], since: float, until: float) -> dict[str, Any]:
    """The event without its two clocks, after checking them: commit second, build time."""
    value = {**value, "source": dict(value["source"])}
    commit_ms = value["source"].pop("ts_ms")
    built_ms = value.pop("ts_ms")
    assert commit_ms % 1000 == 0, "the binlog has commit seconds"
    assert int(since) * 1000 <= commit_ms <= until * 1000
    assert since * 1000 <= built_ms <= until * 1000
    return value


def expected(
    rows: BinlogRows,
    row: int,
    seq: int,
    last: bool,
    key: dict[str, Any] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    changed: list[str] | None = None,
    name: str = "shop",
) -> dict[str, Any]:
    return {
        "op": rows.op,
        "source": {
            "name": name,
            "server_id": mariadb_server_id(),
            "db": rows.db,
            "table": rows.table,
            "file": rows.file,
            "pos": rows.pos,
            "gtid": rows.gtid,
            "snapshot": False,
        },
        "scn": rows.scn,
        "row": row,
        "txn": {"seq": seq, "last": last},
        "key": key,
        "before": before,
        "after": after,
        "changed": changed or [],
    }


def test_insert_update_delete_on_a_primary_key_table(workers, tmp_path, unique, database):
    sql(
        f"CREATE TABLE {database}.items (id INT PRIMARY KEY, name VARCHAR(20), "
        "amount DECIMAL(10,2), qty INT)"
    )
    relay = start_relay(workers, tmp_path, unique, database)
    since = time.time()
    sql(
        "INSERT INTO items VALUES (1, 'pen', 10.5, 3)",
        "UPDATE items SET amount = 21, qty = 3 WHERE id = 1",
        "UPDATE items SET name = 'ink', qty = 4 WHERE id = 1",
        "DELETE FROM items WHERE id = 1",
        database=database,
    )
    messages = relay.read(4)
    until = time.time()
    insert, update1, update2, delete = rows_events(binlog_transactions(relay.start, database))
    gtids = [r.gtid for r in (insert, update1, update2, delete)]
    assert all(g and g.startswith(f"0-{mariadb_server_id()}-") for g in gtids), gtids
    assert len(set(gtids)) == 4, "autocommit statements are four transactions"
    assert insert.scn == int(insert.file.rsplit(".", 1)[1]) << 32 | insert.pos

    v0 = {"id": 1, "name": "pen", "amount": "10.50", "qty": 3}
    v1 = {"id": 1, "name": "pen", "amount": "21.00", "qty": 3}
    v2 = {"id": 1, "name": "ink", "amount": "21.00", "qty": 4}
    key = {"db": database, "table": "items", "pk": {"id": 1}}
    assert [m["key"] for m in messages] == [key] * 4
    assert [strip_times(m["value"], since, until) for m in messages] == [
        expected(insert, 0, 0, True, {"id": 1}, None, v0),
        expected(update1, 0, 0, True, {"id": 1}, v0, v1, ["amount"]),
        expected(update2, 0, 0, True, {"id": 1}, v1, v2, ["name", "qty"]),
        expected(delete, 0, 0, True, {"id": 1}, v2, None),
    ]
    assert len({m["partition"] for m in messages}) == 1
    assert [m["offset"] for m in messages] == sorted(m["offset"] for m in messages)


def test_multi_row_transaction_numbers_its_rows(workers, tmp_path, unique, database):
    sql(
        f"CREATE TABLE {database}.orders (id INT PRIMARY KEY, v INT)",
        f"CREATE TABLE {database}.order_lines (id INT PRIMARY KEY, order_id INT)",
    )
    relay = start_relay(workers, tmp_path, unique, database)
    since = time.time()
    in_one_transaction(
        database,
        "INSERT INTO orders VALUES (1, 10), (2, 20), (3, 30)",
        "INSERT INTO order_lines VALUES (7, 1)",
        "UPDATE orders SET v = 21 WHERE id = 2",
        "DELETE FROM orders WHERE id = 1",
        "UPDATE orders SET v = v + 1",
    )
    sql("INSERT INTO order_lines VALUES (8, 3)", database=database)
    messages = relay.read(9)
    until = time.time()
    txn, single = binlog_transactions(relay.start, database)
    ins, line, upd, dele, upd_all = txn.rows
    assert len({r.gtid for r in txn.rows}) == 1
    assert single.rows[0].gtid != ins.gtid

    def key(table: str, id_: int) -> dict[str, Any]:
        return {"db": database, "table": table, "pk": {"id": id_}}

    assert [m["key"] for m in messages] == [
        key("orders", 1),
        key("orders", 2),
        key("orders", 3),
        key("order_lines", 7),
        key("orders", 2),
        key("orders", 1),
        key("orders", 2),
        key("orders", 3),
        key("order_lines", 8),
    ]
    r1, r2, r3 = {"id": 1, "v": 10}, {"id": 2, "v": 20}, {"id": 3, "v": 30}
    r2b, r2c, r3b = {"id": 2, "v": 21}, {"id": 2, "v": 22}, {"id": 3, "v": 31}
    assert [strip_times(m["value"], since, until) for m in messages] == [
        # One multi-row INSERT: one rows event, one scn, rows 0, 1, 2.
        expected(ins, 0, 0, False, {"id": 1}, None, r1),
        expected(ins, 1, 1, False, {"id": 2}, None, r2),
        expected(ins, 2, 2, False, {"id": 3}, None, r3),
        expected(line, 0, 3, False, {"id": 7}, None, {"id": 7, "order_id": 1}),
        expected(upd, 0, 4, False, {"id": 2}, r2, r2b, ["v"]),
        expected(dele, 0, 5, False, {"id": 1}, r1, None),
        expected(upd_all, 0, 6, False, {"id": 2}, r2b, r2c, ["v"]),
        expected(upd_all, 1, 7, True, {"id": 3}, r3, r3b, ["v"]),
        expected(single.rows[0], 0, 0, True, {"id": 8}, None, {"id": 8, "order_id": 3}),
    ]


def test_table_without_primary_key_and_composite_key(workers, tmp_path, unique, database):
    sql(
        f"CREATE TABLE {database}.log (msg VARCHAR(20), n INT)",
        f"CREATE TABLE {database}.pairs (a INT, b VARCHAR(5), v INT, PRIMARY KEY (b, a))",
    )
    relay = start_relay(workers, tmp_path, unique, database)
    since = time.time()
    sql(
        *(f"INSERT INTO log VALUES ('m{n}', {n})" for n in range(12)),
        "UPDATE log SET n = 100 WHERE msg = 'm3'",
        "DELETE FROM log WHERE msg = 'm4'",
        "INSERT INTO pairs VALUES (1, 'x', 10), (2, 'x', 20), (1, 'y', 30)",
        "UPDATE pairs SET v = 11 WHERE a = 1 AND b = 'x'",
        "DELETE FROM pairs WHERE a = 1 AND b = 'y'",
        database=database,
    )
    messages = relay.read(19)
    until = time.time()
    events = rows_events(binlog_transactions(relay.start, database))
    log_messages = [m for m in messages if m["key"]["table"] == "log"]
    assert len(log_messages) == 14
    assert all(m["key"] == {"db": database, "table": "log", "pk": None} for m in log_messages)
    assert len({m["partition"] for m in log_messages}) == 1, "a table without PK: one partition"
    assert [m["offset"] for m in log_messages] == sorted(m["offset"] for m in log_messages)
    m3 = {"msg": "m3", "n": 3}
    assert strip_times(log_messages[12]["value"], since, until) == expected(
        events[12], 0, 0, True, None, m3, {"msg": "m3", "n": 100}, ["n"]
    )
    assert strip_times(log_messages[13]["value"], since, until) == expected(
        events[13], 0, 0, True, None, {"msg": "m4", "n": 4}, None
    )
    assert [m["value"]["after"] for m in log_messages[:12]] == [
        {"msg": f"m{n}", "n": n} for n in range(12)
    ]

    pairs = [m for m in messages if m["key"]["table"] == "pairs"]
    ins, upd, dele = events[14:]
    x1, x2, y1 = (
        {"a": 1, "b": "x", "v": 10},
        {"a": 2, "b": "x", "v": 20},
        {"a": 1, "b": "y", "v": 30},
    )
    assert [m["key"]["pk"] for m in pairs] == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
    ]
    assert [strip_times(m["value"], since, until) for m in pairs] == [
        expected(ins, 0, 0, False, {"a": 1, "b": "x"}, None, x1),
        expected(ins, 1, 1, False, {"a": 2, "b": "x"}, None, x2),
        expected(ins, 2, 2, True, {"a": 1, "b": "y"}, None, y1),
        expected(upd, 0, 0, True, {"a": 1, "b": "x"}, x1, {**x1, "v": 11}, ["v"]),
        expected(dele, 0, 0, True, {"a": 1, "b": "y"}, y1, None),
    ]
    by_key = defaultdict(set)
    for m in pairs:
        by_key[str(m["key"])].add(m["partition"])
    assert all(len(partitions) == 1 for partitions in by_key.values())


def test_changes_of_one_row_keep_binlog_order(workers, tmp_path, unique, database):
    sql(
        f"CREATE TABLE {database}.counters (id INT PRIMARY KEY, n INT)",
        f"INSERT INTO {database}.counters VALUES (1, 0), (2, 0), (3, 0), (4, 0)",
    )
    relay = start_relay(workers, tmp_path, unique, database)
    statements = []
    for n in range(1, 61):
        statements.append(f"UPDATE counters SET n = {n} WHERE id = 1")
        statements.append(f"UPDATE counters SET n = {n} WHERE id = {2 + n % 3}")
        if n % 10 == 0:
            statements.append(f"UPDATE counters SET n = n + 1000 WHERE id IN (1, {2 + n % 3})")
    sql(*statements, database=database)
    messages = relay.read(len(statements) + 6)
    assert len(messages) == len(statements) + 6
    ordered = defaultdict(list)
    for m in messages:  # already in (scn, row) order, i.e. binlog order
        ordered[m["key"]["pk"]["id"]].append(m)
    for id_, changes in ordered.items():
        assert len({m["partition"] for m in changes}) == 1, f"id {id_} spans partitions"
        offsets = [m["offset"] for m in changes]
        assert offsets == sorted(offsets), f"id {id_}: Kafka order differs from binlog order"
        for previous, current in pairwise(changes):
            assert current["value"]["before"] == previous["value"]["after"], f"id {id_}"
    ns = [m["value"]["after"]["n"] for m in ordered[1]]
    expect = []
    for n in range(1, 61):
        expect.append(n)
        if n % 10 == 0:
            expect.append(n + 1000)
    assert ns == expect


def test_include_and_exclude_globs(workers, tmp_path, unique, database):
    other = f"{database}_other"
    tables = ("orders", "audit_log", "tmp1", "tmp12")
    sql(
        *(f"CREATE TABLE {database}.{t} (id INT PRIMARY KEY)" for t in tables),
        f"CREATE DATABASE {other}",
        f"CREATE TABLE {other}.orders (id INT PRIMARY KEY)",
    )
    try:
        relay = start_relay(
            workers,
            tmp_path,
            unique,
            database,
            include=[f"{database}.*", f"{other}.audit_*"],
            exclude=[f"{database}.audit_*", f"{database}.tmp?"],
        )
        in_one_transaction(
            database,
            "INSERT INTO orders VALUES (1)",
            "INSERT INTO audit_log VALUES (1)",
            "INSERT INTO tmp1 VALUES (1)",
        )
        sql(
            *(f"INSERT INTO {t} VALUES (2)" for t in tables),
            f"INSERT INTO {other}.orders VALUES (2)",
            "INSERT INTO orders VALUES (3)",
            database=database,
        )
        messages = relay.read(4)
    finally:
        sql(f"DROP DATABASE IF EXISTS {other}")
    assert [(m["key"]["db"], m["key"]["table"], m["key"]["pk"]) for m in messages] == [
        (database, "orders", {"id": 1}),
        (database, "orders", {"id": 2}),
        (database, "tmp12", {"id": 2}),
        (database, "orders", {"id": 3}),
    ]
    # Excluded rows are not counted in the transaction: the kept row is its last.
    assert messages[0]["value"]["txn"] == {"seq": 0, "last": True}


def test_two_sources_in_one_worker(workers, tmp_path, unique, database, make_config):
    sql(
        f"CREATE TABLE {database}.a_items (id INT PRIMARY KEY)",
        f"CREATE TABLE {database}.b_items (id INT PRIMARY KEY)",
    )
    start = master_position()
    specs = [
        SourceSpec(
            name=name,
            include=[f"{database}.{name}_*"],
            server_id=server_id(),
            start=start,
            topic=f"aesop.t{unique}.{name}",
        )
        for name in ("a", "b")
    ]
    worker = workers.start(make_config(sources=specs))
    worker.wait_for_log("relay a: reading")
    worker.wait_for_log("relay b: reading")
    in_one_transaction(database, "INSERT INTO a_items VALUES (1)", "INSERT INTO b_items VALUES (1)")
    sql(
        "INSERT INTO b_items VALUES (2)",
        "INSERT INTO a_items VALUES (2), (3)",
        database=database,
    )
    for spec, ids in ((specs[0], [1, 2, 3]), (specs[1], [1, 2])):
        messages = read_topic(spec.topic, count_then_settle(len(ids)), 60)
        messages.sort(key=lambda m: (m["value"]["scn"], m["value"]["row"]))
        assert [m["key"] for m in messages] == [
            {"db": database, "table": f"{spec.name}_items", "pk": {"id": id_}} for id_ in ids
        ]
        assert {m["value"]["source"]["name"] for m in messages} == {spec.name}
        assert messages[0]["value"]["txn"] == {"seq": 0, "last": True}


def test_alter_table_mid_stream(workers, tmp_path, unique, database):
    sql(f"CREATE TABLE {database}.t (id INT PRIMARY KEY, a INT, b VARCHAR(10))")
    relay = start_relay(workers, tmp_path, unique, database)
    sql(
        "INSERT INTO t VALUES (1, 10, 'x')",
        "ALTER TABLE t ADD COLUMN c INT NOT NULL DEFAULT 7",
        "UPDATE t SET a = 11 WHERE id = 1",
        "ALTER TABLE t DROP COLUMN a",
        "UPDATE t SET b = 'y' WHERE id = 1",
        "ALTER TABLE t RENAME COLUMN b TO bb",
        "UPDATE t SET bb = 'z' WHERE id = 1",
        "ALTER TABLE t MODIFY COLUMN c INT NOT NULL DEFAULT 7 AFTER id",
        "INSERT INTO t (id, c, bb) VALUES (2, 8, 'w')",
        "UPDATE t SET c = 9 WHERE id = 1",
        "ALTER TABLE t ADD COLUMN first_col VARCHAR(3) NOT NULL DEFAULT 'f' FIRST",
        "DELETE FROM t WHERE id = 1",
        database=database,
    )
    messages = relay.read(7)
    images = [(m["value"]["op"], m["value"]["before"], m["value"]["after"]) for m in messages]
    # Lists of pairs, so the column order is asserted too.
    as_pairs = [
        (op, before and list(before.items()), after and list(after.items()))
        for op, before, after in images
    ]
    assert as_pairs == [
        ("c", None, [("id", 1), ("a", 10), ("b", "x")]),
        (
            "u",
            [("id", 1), ("a", 10), ("b", "x"), ("c", 7)],
            [("id", 1), ("a", 11), ("b", "x"), ("c", 7)],
        ),
        ("u", [("id", 1), ("b", "x"), ("c", 7)], [("id", 1), ("b", "y"), ("c", 7)]),
        ("u", [("id", 1), ("bb", "y"), ("c", 7)], [("id", 1), ("bb", "z"), ("c", 7)]),
        ("c", None, [("id", 2), ("c", 8), ("bb", "w")]),
        ("u", [("id", 1), ("c", 7), ("bb", "z")], [("id", 1), ("c", 9), ("bb", "z")]),
        ("d", [("first_col", "f"), ("id", 1), ("c", 9), ("bb", "z")], None),
    ]
    assert [m["value"]["changed"] for m in messages] == [[], ["a"], ["b"], ["bb"], [], ["c"], []]
    assert [m["value"]["key"] for m in messages] == [{"id": 1}] * 4 + [{"id": 2}] + [{"id": 1}] * 2


def test_savepoint_and_rollback_to_savepoint(workers, tmp_path, unique, database):
    sql(f"CREATE TABLE {database}.t (id INT PRIMARY KEY, v INT)")
    relay = start_relay(workers, tmp_path, unique, database)
    in_one_transaction(
        database,
        "INSERT INTO t VALUES (1, 1)",
        "SAVEPOINT s1",
        "INSERT INTO t VALUES (2, 2)",
        "ROLLBACK TO SAVEPOINT s1",
        "SAVEPOINT s2",
        "INSERT INTO t VALUES (3, 3), (4, 4)",
        "RELEASE SAVEPOINT s2",
        "UPDATE t SET v = v + 10",
    )
    sql("INSERT INTO t VALUES (5, 5)", database=database)
    messages = relay.read(7)
    values = [m["value"] for m in messages]
    assert [(v["op"], v["key"]["id"], v["txn"]) for v in values] == [
        ("c", 1, {"seq": 0, "last": False}),
        ("c", 3, {"seq": 1, "last": False}),
        ("c", 4, {"seq": 2, "last": False}),
        ("u", 1, {"seq": 3, "last": False}),
        ("u", 3, {"seq": 4, "last": False}),
        ("u", 4, {"seq": 5, "last": True}),
        ("c", 5, {"seq": 0, "last": True}),
    ]
    txn, single = binlog_transactions(relay.start, database)
    assert len({v["source"]["gtid"] for v in values[:6]}) == 1
    assert values[6]["source"]["gtid"] == single.rows[0].gtid != txn.gtid
    # The checkpoint moves past the transaction to the last event.
    checkpoint = wait_until(
        lambda: (
            (c := zk_get(f"{relay.zk_root}/relays/shop"))
            and (c["scn"], c["row"]) == (values[6]["scn"], 0)
            and c
        ),
        timeout=15,
        what="the checkpoint to reach the last event",
    )
    end_file, end_pos = single.end
    assert (checkpoint["file"], checkpoint["pos"]) >= (end_file, end_pos)


def test_xa_transaction_is_published_at_prepare(workers, tmp_path, unique, database):
    # MariaDB writes an XA transaction's rows at XA PREPARE, ended by an XA_prepare event;
    # XA COMMIT follows as a transaction of its own. No row may wait for, or be lost to, it.
    sql(f"CREATE TABLE {database}.t (id INT PRIMARY KEY)")
    relay = start_relay(workers, tmp_path, unique, database)
    sql(
        "XA START 'x1'",
        "INSERT INTO t VALUES (1), (2)",
        "INSERT INTO t VALUES (3)",
        "XA END 'x1'",
        "XA PREPARE 'x1'",
        "XA COMMIT 'x1'",
        "INSERT INTO t VALUES (4)",
        database=database,
    )
    messages = relay.read(4)
    values = [m["value"] for m in messages]
    assert [(v["op"], v["key"]["id"], v["txn"]) for v in values] == [
        ("c", 1, {"seq": 0, "last": False}),
        ("c", 2, {"seq": 1, "last": False}),
        ("c", 3, {"seq": 2, "last": True}),
        ("c", 4, {"seq": 0, "last": True}),
    ]
    xa, single = binlog_transactions(relay.start, database)
    assert [v["source"]["gtid"] for v in values] == [xa.gtid] * 3 + [single.gtid]


def test_update_of_the_primary_key_is_a_delete_then_a_create(workers, tmp_path, unique, database):
    # As Debezium: the old key's partition learns that the row left, the new key's that it came.
    sql(
        f"CREATE TABLE {database}.t (id INT PRIMARY KEY, v VARCHAR(5))",
        f"INSERT INTO {database}.t VALUES (1, 'a'), (2, 'b')",
    )
    relay = start_relay(workers, tmp_path, unique, database)
    in_one_transaction(
        database,
        "UPDATE t SET id = id + 10",  # one rows event, two rows, both keys change
        "UPDATE t SET v = 'c' WHERE id = 12",
    )
    messages = relay.read(5)
    (txn,) = binlog_transactions(relay.start, database)
    moved, plain = txn.rows
    values = [m["value"] for m in messages]
    assert [(v["op"], v["scn"], v["row"], v["txn"]) for v in values] == [
        ("d", moved.scn, 0, {"seq": 0, "last": False}),
        ("c", moved.scn, 1, {"seq": 1, "last": False}),
        ("d", moved.scn, 2, {"seq": 2, "last": False}),
        ("c", moved.scn, 3, {"seq": 3, "last": False}),
        ("u", plain.scn, 0, {"seq": 4, "last": True}),
    ]
    assert [(v["key"], v["before"], v["after"], v["changed"]) for v in values] == [
        ({"id": 1}, {"id": 1, "v": "a"}, None, []),
        ({"id": 11}, None, {"id": 11, "v": "a"}, []),
        ({"id": 2}, {"id": 2, "v": "b"}, None, []),
        ({"id": 12}, None, {"id": 12, "v": "b"}, []),
        ({"id": 12}, {"id": 12, "v": "b"}, {"id": 12, "v": "c"}, ["v"]),
    ]
    keys = [m["key"]["pk"]["id"] for m in messages]
    assert keys == [1, 11, 2, 12, 12]
    # The delete goes where every earlier change of id 1 went: the old key's partition.
    partitions = {m["key"]["pk"]["id"]: m["partition"] for m in messages}
    sql("UPDATE t SET v = 'z' WHERE id = 11", "INSERT INTO t VALUES (1, 'new')", database=database)
    later = relay.read(7)[5:]
    assert [(m["key"]["pk"]["id"], m["value"]["op"]) for m in later] == [(11, "u"), (1, "c")]
    assert {m["key"]["pk"]["id"]: m["partition"] for m in later} == {
        11: partitions[11],
        1: partitions[1],
    }
