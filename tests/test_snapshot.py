"""Initial snapshots on the real stack: existing rows as ``r`` events, then the binlog."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pymysql
import pytest

from tests.support.config import ConfigFactory, SourceSpec
from tests.support.kafka import count_then_settle, read_topic
from tests.support.mysql import master_position, mysql_url, sql
from tests.support.replica import assert_converges, consumer_toml, create_schema
from tests.support.stack import wait_until
from tests.support.workers import WorkerFactory
from tests.support.zookeeper import zk_get
from tests.test_mysql_handler import SCHEMA, wide_workload, workload

SOURCE = "shop"
ROWS = 30_000
CHUNK = 200

pytestmark = pytest.mark.usefixtures("drop_test_resources")


class Churn(threading.Thread):
    """Updates, deletes and inserts rows of ``items`` in small transactions until stopped."""

    def __init__(
        self, database: str, first_new: int, updates_only: bool = False, pause: float = 0.002
    ) -> None:
        super().__init__(name="churn", daemon=True)
        self.database = database
        self.next_id = first_new
        self.updates_only = updates_only
        self.pause = pause
        self.done = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(5)
        try:
            with pymysql.connect(**mysql_url(self.database).connect_args()) as conn:
                cur = conn.cursor()
                while not self._halt.is_set() and self.done < 50_000:
                    for _ in range(rng.randint(1, 3)):
                        pick = 0.0 if self.updates_only else rng.random()
                        row_id = rng.randint(1, self.next_id)
                        if pick < 0.6:
                            cur.execute(
                                "UPDATE items SET v = v + 1, note = CONCAT('u', v) WHERE id = %s",
                                (row_id,),
                            )
                        elif pick < 0.8:
                            cur.execute("DELETE FROM items WHERE id = %s", (row_id,))
                        else:
                            self.next_id += 1
                            cur.execute(
                                "INSERT INTO items VALUES (%s, 0, 'new', 1.25, NOW(3))",
                                (self.next_id,),
                            )
                    conn.commit()
                    self.done += 1
                    time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self._halt.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error


def replayed(messages: list[dict[str, Any]]) -> dict[bytes, dict[str, Any]]:
    """The table as a consumer applying the events in (scn, row) order would hold it."""
    state: dict[bytes, dict[str, Any]] = {}
    seen = set()
    for message in sorted(messages, key=lambda m: (m["value"]["scn"], m["value"]["row"])):
        event = message["value"]
        ident = (event["scn"], event["row"])
        if ident in seen:  # published again after the crash: the same event
            continue
        seen.add(ident)
        key = orjson.dumps(event["key"])
        if event["op"] == "d":
            state.pop(key, None)
        else:
            state[key] = event["after"]
    return state


def source_rows(database: str) -> dict[bytes, dict[str, Any]]:
    rows = sql(
        "SELECT id, v, note, CAST(amount AS CHAR), CAST(at AS CHAR) FROM items",
        database=database,
    )
    return {
        orjson.dumps({"id": i}): {"id": i, "v": v, "note": n, "amount": a, "at": at}
        for i, v, n, a, at in rows
    }


def test_initial_snapshot_with_a_kill_9_mid_way_loses_and_misorders_nothing(
    workers: WorkerFactory, make_config: ConfigFactory, database: str
) -> None:
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40),"
        " amount DECIMAL(10,2), at DATETIME(3))",
        f"INSERT INTO items SELECT seq, 0, CONCAT('row ', seq), 10.50, '2024-01-01 00:00:00.5'"
        f" FROM seq_1_to_{ROWS}",
        database=database,
    )
    topic = f"aesop.{make_config.app_id}"
    zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
    spec = SourceSpec(
        name=SOURCE,
        include=[f"{database}.*"],
        server_id=7000 + random.randrange(10**8),
        start="",
        topic=topic,
        snapshot="initial",
        snapshot_chunk=CHUNK,
    )
    config: Path = make_config(sources=[spec])
    churn = Churn(database, ROWS)
    churn.start()
    first = workers.start(config)
    first.wait_for_log(f"relay {SOURCE}: initial snapshot of 1 table(s): {database}.items from")
    # Kill it once the checkpoint holds some snapshot progress, with rows still to read.
    progress = wait_until(
        lambda: (c := zk_get(zk_path)) and (c.get("snapshot") or {}).get("done", 0) > 0 and c,
        timeout=120,
        what="a checkpoint with snapshot progress",
    )
    first.kill()
    done_at_kill = progress["snapshot"]["done"]
    assert done_at_kill < ROWS, "the snapshot finished before the kill: make the table bigger"
    second = workers.start(config)
    # From the acknowledged chunk (the table's checkpoint may be newer than the mirror's).
    second.wait_for_log(f"table(s): {database}.items after key [", timeout=60)
    resumed = second.log().split("items after key [", 1)[1].split("]", 1)[0]
    assert int(orjson.loads(resumed)) >= int(progress["snapshot"]["after"][0])
    second.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=180)
    churn.finish()
    end = master_position()
    wait_until(
        lambda: (c := zk_get(zk_path)) and f"{c['file']}:{c['pos']}" >= end,
        timeout=60,
        what="the checkpoint to reach the end of the churn",
    )
    assert second.stop() == 0
    messages = read_topic(topic, count_then_settle(ROWS, 3.0), timeout=120)
    events = [m["value"] for m in messages]
    snapshot_events = [e for e in events if e["op"] == "r"]
    # Resumed from the acknowledged chunk, not from the start.
    assert len(snapshot_events) < 2 * ROWS - done_at_kill // 2
    assert all(e["before"] is None and e["source"]["snapshot"] in (True, "last") for e in
               snapshot_events)  # fmt: skip
    assert all(e["source"]["snapshot"] is False for e in events if e["op"] != "r")
    assert sum(e["source"]["snapshot"] == "last" for e in snapshot_events) >= 1
    idents = [(e["scn"], e["row"]) for e in events]
    by_ident: dict[tuple[int, int], bytes] = {}
    for message in messages:
        ident = (message["value"]["scn"], message["value"]["row"])
        body = orjson.dumps({**message["value"], "ts_ms": 0})
        assert by_ident.setdefault(ident, body) == body, f"{ident} published as two events"
    assert len(set(idents)) <= len(idents)
    assert replayed(messages) == source_rows(database)


def test_initial_snapshot_into_a_mysql_replica_then_live_changes(
    workers: WorkerFactory, make_config: ConfigFactory, database: str, replica: str
) -> None:
    """Every table of the handler's end-to-end test (composite keys, a keyless table with
    equal rows, every column type), filled before the relay starts: the replica ends equal."""
    connect = mysql_url().connect_args()
    create_schema(connect, database, SCHEMA)
    create_schema(connect, replica, SCHEMA)
    workload(database)
    wide_workload(database)
    topic, consumer = f"aesop.{make_config.app_id}", f"{make_config.app_id}-replica"
    spec = SourceSpec(
        name=SOURCE,
        include=[f"{database}.*"],
        server_id=7000 + random.randrange(10**8),
        start="",
        topic=topic,
        snapshot="initial",
        snapshot_chunk=7,
    )
    url = f"mysql://root@127.0.0.1:3306/{replica}"
    worker = workers.start(make_config(sources=[spec], extra=consumer_toml(consumer, topic, url)))
    worker.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=120)
    workload(database, base=10_000)
    tables = assert_converges((connect, database), (connect, replica), 90)
    assert {table: len(rows) for table, (rows, _) in tables.items()} == {
        "items": 76, "order_lines": 8, "log": 28, "wide": 4,
    }  # fmt: skip
    events = [m["value"] for m in read_topic(topic, count_then_settle(100, 2.0), timeout=60)]
    lasts = sorted(e["source"]["table"] for e in events if e["source"]["snapshot"] == "last")
    assert lasts == ["items", "log", "order_lines", "wide"]


def test_rows_changed_while_their_chunk_is_read_are_never_published_older(
    workers: WorkerFactory, make_config: ConfigFactory, database: str
) -> None:
    """Big chunks (a SELECT of some milliseconds) under steady updates of random rows: an
    update that commits after a chunk's SELECT began and before the second position would,
    without the chunk dropping its row, be followed by an r event with the older value."""
    rows, chunk = 40_000, 4000
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40),"
        " amount DECIMAL(10,2), at DATETIME(3))",
        f"INSERT INTO items SELECT seq, 0, REPEAT('x', 30), 1.00, NULL FROM seq_1_to_{rows}",
        database=database,
    )
    topic = f"aesop.{make_config.app_id}"
    spec = SourceSpec(
        name=SOURCE,
        include=[f"{database}.*"],
        server_id=7000 + random.randrange(10**8),
        start="",
        topic=topic,
        snapshot="initial",
        snapshot_chunk=chunk,
    )
    updates = Churn(database, rows, updates_only=True, pause=0.003)
    updates.start()
    worker = workers.start(make_config(sources=[spec]))
    worker.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=180)
    updates.finish()
    zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
    end = master_position()
    wait_until(
        lambda: (c := zk_get(zk_path)) and f"{c['file']}:{c['pos']}" >= end,
        timeout=60,
        what="the checkpoint to reach the end of the updates",
    )
    messages = read_topic(topic, count_then_settle(rows, 3.0), timeout=120)
    snapshot_rows = sum(m["value"]["op"] == "r" for m in messages)
    assert snapshot_rows <= rows
    assert replayed(messages) == source_rows(database)
