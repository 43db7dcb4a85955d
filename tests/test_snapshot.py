"""Initial snapshots on the real stack: existing rows as ``r`` events, then the binlog."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pymysql
import pytest

from app.settings import load as load_settings
from tests.browser import Chromium
from tests.support.cli import aesop_snapshot
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.kafka import count_then_settle, read_topic
from tests.support.mysql import master_position, mysql_url, sql
from tests.support.replica import assert_converges, consumer_toml, create_schema
from tests.support.servers import ServerDatabase
from tests.support.stack import Stack, wait_until
from tests.support.workers import Worker, WorkerFactory
from tests.support.zookeeper import zk_get
from tests.test_mysql_handler import SCHEMA, wide_workload, workload

SOURCE = "shop"
ROWS = 30_000
CHUNK = 200
# A worker killed -9 holds its partitions until its session times out: keep that short.
FAST_TAKEOVER = {"AESOP_SESSION_TIMEOUT": "10"}

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
                    self.step(cur, rng)
                    conn.commit()
                    self.done += 1
                    time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc

    def step(self, cur: Any, rng: random.Random) -> None:
        """One transaction's statements."""
        for _ in range(rng.randint(1, 3)):
            pick = 0.0 if self.updates_only else rng.random()
            row_id = rng.randint(1, self.next_id)
            if pick < 0.6:
                cur.execute(
                    "UPDATE items SET v = v + 1, note = CONCAT('u', v) WHERE id = %s", (row_id,)
                )
            elif pick < 0.8:
                cur.execute("DELETE FROM items WHERE id = %s", (row_id,))
            else:
                self.next_id += 1
                cur.execute(
                    "INSERT INTO items VALUES (%s, 0, 'new', 1.25, NOW(3))", (self.next_id,)
                )

    def finish(self) -> None:
        self._halt.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error


def create_items(database: str) -> None:
    """The ``items`` table, with ROWS rows."""
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40),"
        " amount DECIMAL(10,2), at DATETIME(3))",
        f"INSERT INTO items SELECT seq, 0, CONCAT('row ', seq), 10.50, '2024-01-01 00:00:00.5'"
        f" FROM seq_1_to_{ROWS}",
        database=database,
    )


def under_way(zk_path: str) -> dict[str, Any]:
    """The mirrored checkpoint, once it holds some snapshot progress."""
    progress: dict[str, Any] = wait_until(
        lambda: (c := zk_get(zk_path)) and (c.get("snapshot") or {}).get("done", 0) > 0 and c,
        timeout=120,
        what="a checkpoint with snapshot progress",
    )
    return progress


def kill_once_under_way(worker: Worker, zk_path: str) -> dict[str, Any]:
    """kill -9 the worker once its checkpoint holds some snapshot progress; that checkpoint."""
    progress = under_way(zk_path)
    worker.kill()
    return progress


def caught_up(zk_path: str) -> None:
    """Wait until the relay's checkpoint reaches the server's position now."""
    end = master_position()
    wait_until(
        lambda: (c := zk_get(zk_path)) and f"{c['file']}:{c['pos']}" >= end,
        timeout=60,
        what=f"the checkpoint to reach {end}",
    )


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
    create_items(database)
    topic = f"aesop.{make_config.app_id}"
    zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
    spec = source_spec(make_config, database, start="", snapshot="initial")
    config: Path = make_config(sources=[spec])
    churn = Churn(database, ROWS)
    churn.start()
    first = workers.start(config, FAST_TAKEOVER)
    first.wait_for_log(f"relay {SOURCE}: initial snapshot of 1 table(s): {database}.items from")
    # Kill it once the checkpoint holds some snapshot progress, with rows still to read.
    progress = kill_once_under_way(first, zk_path)
    done_at_kill = progress["snapshot"]["done"]
    assert done_at_kill < ROWS, "the snapshot finished before the kill: make the table bigger"
    second = workers.start(config, FAST_TAKEOVER)
    # From the acknowledged chunk (the table's checkpoint may be newer than the mirror's).
    second.wait_for_log(f"table(s): {database}.items after key [", timeout=60)
    resumed = second.log().split("items after key [", 1)[1].split("]", 1)[0]
    assert int(orjson.loads(resumed)) >= int(progress["snapshot"]["after"][0])
    second.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=180)
    churn.finish()
    caught_up(zk_path)
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


def test_initial_snapshot_resumes_from_its_last_chunk_after_a_mariadb_restart(
    workers: WorkerFactory, make_config: ConfigFactory, database: str, stack: Stack
) -> None:
    create_items(database)
    topic = f"aesop.{make_config.app_id}"
    zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
    # Small chunks: the snapshot is still under way when the server goes.
    spec = source_spec(make_config, database, start="", snapshot="initial", snapshot_chunk=10)
    worker = workers.start(make_config(sources=[spec]))
    worker.wait_for_log(f"relay {SOURCE}: initial snapshot of 1 table(s): {database}.items from")
    progress = under_way(zk_path)
    stack.run("restart", "mariadb")
    # The same relay reconnects and goes on from the chunk it had handed over, not the start.
    resumed_line = f"relay {SOURCE}: initial snapshot of 1 table(s): {database}.items after key ["
    worker.wait_for_log(resumed_line, timeout=90)
    resumed = worker.log().split("items after key [", 1)[1].split("]", 1)[0]
    assert int(orjson.loads(resumed)) >= int(progress["snapshot"]["after"][0])
    worker.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=180)
    sql("UPDATE items SET v = 7 WHERE id = 1", database=database)  # and the binlog after it
    caught_up(zk_path)
    assert worker.stop() == 0
    messages = read_topic(topic, count_then_settle(ROWS + 1, 3.0), timeout=120)
    snapshot_events = [m["value"] for m in messages if m["value"]["op"] == "r"]
    reread = len(snapshot_events) - ROWS
    # From the start, every row published before the restart would come again.
    assert 0 <= reread < progress["snapshot"]["done"], f"{reread} rows published twice"
    assert replayed(messages) == source_rows(database)


def test_initial_snapshot_into_a_mysql_replica_then_live_changes(
    workers: WorkerFactory, make_config: ConfigFactory, server: ServerDatabase
) -> None:
    """On each server of the matrix, every table of the handler's end-to-end test (composite
    keys, a keyless table with equal rows, every column type), filled before the relay
    starts: the replica ends equal to the source, after live changes too."""
    replica = f"{server.db}_replica"
    try:
        create_schema(server.connect_args(), server.db, SCHEMA)
        create_schema(server.connect_args(), replica, SCHEMA)
        workload(server)
        wide_workload(server)
        topic, consumer = f"aesop.{make_config.app_id}", f"{make_config.app_id}-replica"
        spec = source_spec(make_config, server.db, start="", mysql=server.url(),
                           snapshot="initial", snapshot_chunk=7)  # fmt: skip
        url = f"mysql://root@127.0.0.1:{server.server.port}/{replica}"
        config = make_config(sources=[spec], extra=consumer_toml(consumer, topic, url))
        worker = workers.start(config, FAST_TAKEOVER)
        worker.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=120)
        workload(server, base=10_000)
        connect = server.connect_args()
        tables = assert_converges((connect, server.db), (connect, replica), 90)
        assert {table: len(rows) for table, (rows, _) in tables.items()} == {
            "items": 76, "order_lines": 8, "log": 28, "wide": 4,
        }  # fmt: skip
        events = [m["value"] for m in read_topic(topic, count_then_settle(100, 2.0), timeout=60)]
        lasts = sorted(e["source"]["table"] for e in events if e["source"]["snapshot"] == "last")
        assert lasts == ["items", "log", "order_lines", "wide"]
    finally:
        server.sql(f"DROP DATABASE IF EXISTS {replica}")


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
    spec = source_spec(make_config, database, start="", snapshot="initial", snapshot_chunk=chunk)
    updates = Churn(database, rows, updates_only=True, pause=0.003)
    updates.start()
    worker = workers.start(make_config(sources=[spec]))
    worker.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=180)
    updates.finish()
    zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
    caught_up(zk_path)
    messages = read_topic(topic, count_then_settle(rows, 3.0), timeout=120)
    snapshot_rows = sum(m["value"]["op"] == "r" for m in messages)
    assert snapshot_rows <= rows
    assert replayed(messages) == source_rows(database)


def source_spec(make_config: ConfigFactory, database: str, **given: Any) -> SourceSpec:
    """The test's source: every table of ``database`` from the server's current position,
    into the test's topic, in chunks of CHUNK rows, unless ``given`` says otherwise."""
    fields: dict[str, Any] = {
        "name": SOURCE,
        "include": [f"{database}.*"],
        "server_id": 7000 + random.randrange(10**8),
        "start": master_position(),
        "topic": f"aesop.{make_config.app_id}",
        "snapshot_chunk": CHUNK,
    }
    return SourceSpec(**{**fields, **given})


def _streaming_source(make_config: ConfigFactory, database: str, extra: str = "") -> Path:
    return make_config(sources=[source_spec(make_config, database)], extra=extra)


def test_aesop_snapshot_while_streaming_with_a_kill_9_mid_way(
    workers: WorkerFactory, make_config: ConfigFactory, database: str
) -> None:
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40),"
        " amount DECIMAL(10,2), at DATETIME(3))",
        f"INSERT INTO items SELECT seq, 0, CONCAT('row ', seq), 10.50, NULL FROM seq_1_to_{ROWS}",
        database=database,
    )
    config = _streaming_source(make_config, database)
    zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
    churn = Churn(database, ROWS)
    churn.start()
    first = workers.start(config, FAST_TAKEOVER)
    first.wait_for_log(f"relay {SOURCE}: reading")
    wait_until(lambda: zk_get(f"/aesop-test/{make_config.app_id}/heartbeats/{SOURCE}"), 30,
               "the relay's heartbeat")  # fmt: skip
    asked = aesop_snapshot(config, SOURCE, f"{database}.items")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith(f"ok: source '{SOURCE}': snapshot of {database}.items requested")
    first.wait_for_log(f"relay {SOURCE}: snapshot of {database}.items requested")
    progress = kill_once_under_way(first, zk_path)
    assert progress["snapshot"]["kind"] == "incremental"
    assert progress["snapshot"]["done"] < ROWS, "done before the kill: make the table bigger"
    second = workers.start(config, FAST_TAKEOVER)
    second.wait_for_log(f"relay {SOURCE}: incremental snapshot done", timeout=180)
    churn.finish()
    caught_up(zk_path)
    messages = read_topic(f"aesop.{make_config.app_id}", count_then_settle(ROWS, 3.0), 120)
    assert replayed(messages) == source_rows(database)
    # Done: a second request is taken, and --wait returns once it is done.
    again = aesop_snapshot(config, SOURCE, f"{database}.items", "--wait", "--timeout", "120")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == f"ok: source '{SOURCE}': snapshot done"
    assert zk_get(zk_path).get("snapshot") is None


def snapshot_lines(log: str) -> list[str]:
    """The relay's log lines about snapshots."""
    return [line for line in log.splitlines() if f"relay {SOURCE}: " in line and "snapshot" in line]


def snapshot_reads(messages: list[dict[str, Any]], table: str) -> list[dict[str, Any]]:
    return [m["value"] for m in messages
            if m["value"]["op"] == "r" and m["value"]["source"]["table"] == table]  # fmt: skip


def test_snapshot_new_tables_snapshots_a_table_created_or_renamed_into_the_include_list(
    workers: WorkerFactory, make_config: ConfigFactory, database: str
) -> None:
    """A table renamed into the included schema brings rows the binlog never showed under its
    new name: they come as ``r`` events. A created table is snapshotted too (its rows inserted
    later come as changes); tables outside the include list are not."""
    outside = f"{database}_old"
    sql(f"CREATE DATABASE {outside}", database=database)
    try:
        sql(
            "CREATE TABLE moved (id INT PRIMARY KEY, note VARCHAR(20))",
            "INSERT INTO moved SELECT seq, CONCAT('old ', seq) FROM seq_1_to_500",
            "CREATE TABLE stays (id INT PRIMARY KEY)",
            "INSERT INTO stays VALUES (1)",
            database=outside,
        )
        spec = source_spec(make_config, database, snapshot_new_tables=True)
        worker = workers.start(make_config(sources=[spec]))
        worker.wait_for_log(f"relay {SOURCE}: reading")
        sql(
            f"RENAME TABLE {outside}.moved TO {database}.moved",
            "CREATE TABLE fresh (id INT PRIMARY KEY)",
            "INSERT INTO fresh VALUES (1), (2), (3)",
            f"CREATE TABLE {outside}.later (id INT PRIMARY KEY)",
            database=database,
        )
        worker.wait_for_log(f"relay {SOURCE}: snapshot of {database}.moved done: 500 rows", 120)
        worker.wait_for_log(f"relay {SOURCE}: snapshot of {database}.fresh done", 60)
        log = worker.log()
        assert f"relay {SOURCE}: snapshot of {database}.moved queued: a new table" in log
        assert f"{outside}.later" not in log and f"{outside}.stays" not in log
        messages = read_topic(spec.topic, count_then_settle(503, 3.0), timeout=60)
        moved = snapshot_reads(messages, "moved")
        assert sorted(e["after"]["id"] for e in moved) == list(range(1, 501))
        assert all(e["before"] is None and e["source"]["db"] == database for e in moved)
        assert [e["after"]["id"] for e in moved if e["source"]["snapshot"] == "last"] == [500]
        fresh = [m["value"] for m in messages if m["value"]["source"]["table"] == "fresh"]
        assert {e["after"]["id"] for e in fresh if e["op"] == "c"} == {1, 2, 3}
        assert all(e["op"] in ("c", "r") for e in fresh)
        assert worker.stop() == 0
    finally:
        sql(f"DROP DATABASE IF EXISTS {outside}", database=database)


def test_snapshot_new_tables_snapshots_tables_a_config_change_adds(
    workers: WorkerFactory, make_config: ConfigFactory, database: str
) -> None:
    """The include list grows between two runs: the next start snapshots the tables it adds,
    and only those, once; a start with the same config queues nothing."""
    sql(
        "CREATE TABLE a (id INT PRIMARY KEY)",
        "INSERT INTO a SELECT seq FROM seq_1_to_300",
        "CREATE TABLE b (id INT PRIMARY KEY, note VARCHAR(20))",
        "INSERT INTO b SELECT seq, 'existing' FROM seq_1_to_700",
        database=database,
    )
    spec = source_spec(make_config, database, include=[f"{database}.a"], snapshot_new_tables=True)
    first = workers.start(make_config(sources=[spec]))
    first.wait_for_log(f"relay {SOURCE}: reading")
    sql("INSERT INTO a VALUES (301)", database=database)
    read_topic(spec.topic, count_then_settle(1, 1.0), timeout=60)
    assert first.stop() == 0
    assert not snapshot_lines(first.log())
    spec.include = [f"{database}.a", f"{database}.b"]
    second = workers.start(make_config(sources=[spec]))
    second.wait_for_log(f"relay {SOURCE}: snapshot of {database}.b done: 700 rows", 120)
    assert f"snapshot of {database}.b queued: newly included by the config" in second.log()
    assert second.stop() == 0
    third = workers.start(make_config(sources=[spec]))
    third.wait_for_log(f"relay {SOURCE}: reading")
    sql("INSERT INTO b VALUES (701, 'new')", database=database)
    messages = read_topic(spec.topic, count_then_settle(703, 3.0), timeout=60)
    assert third.stop() == 0
    assert not snapshot_lines(third.log())
    assert snapshot_reads(messages, "a") == []
    reads = snapshot_reads(messages, "b")
    assert sorted(e["after"]["id"] for e in reads) == list(range(1, 701))
    # In binlog order ((scn, row)): the topic's partitions come back in no set order.
    creates = sorted((m["value"] for m in messages if m["value"]["op"] == "c"),
                     key=lambda e: (e["scn"], e["row"]))  # fmt: skip
    assert [e["after"]["id"] for e in creates] == [301, 701]


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a /metrics page; None when it has no such sample."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            head, value = line.rsplit(" ", 1)
            found = head[len(name) :].strip("{}").split(",") if "{" in head else []
            if ",".join(sorted(found)) == wanted:
                return float(value)
    return None


async def test_snapshot_progress_shows_on_lag_metrics_and_the_dashboard(
    workers: WorkerFactory, make_config: ConfigFactory, database: str, tmp_path: Path
) -> None:
    """A snapshot held mid-way (its table write-locked, so the next chunk waits): /lag, /metrics
    and the dashboard show the same progress as the checkpoint in ZooKeeper, with the server's
    row estimate; once done, the series say nothing is under way."""
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40),"
        " amount DECIMAL(10,2), at DATETIME(3))",
        f"INSERT INTO items SELECT seq, 0, CONCAT('row ', seq), 10.50, NULL FROM seq_1_to_{ROWS}",
        "CREATE TABLE later (id INT PRIMARY KEY)",
        "INSERT INTO later VALUES (1), (2)",
        "ANALYZE TABLE items",
        database=database,
    )
    config = _streaming_source(make_config, database)
    base = f"http://127.0.0.1:{load_settings(config, env={}).web_port}"
    zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
    worker = workers.start(config)
    await asyncio.to_thread(worker.wait_for_log, f"relay {SOURCE}: reading", 90)
    await asyncio.to_thread(
        wait_until, lambda: zk_get(f"/aesop-test/{make_config.app_id}/heartbeats/{SOURCE}"),
        30, "the relay's heartbeat",
    )  # fmt: skip
    asked = aesop_snapshot(config, SOURCE, f"{database}.items", f"{database}.later")
    assert asked.returncode == 0, asked.stderr
    await asyncio.to_thread(
        wait_until, lambda: ((zk_get(zk_path) or {}).get("snapshot") or {}).get("done", 0) > 0,
        120, "a checkpoint with snapshot progress",
    )  # fmt: skip
    locker = pymysql.connect(**mysql_url(database).connect_args())
    try:
        locker.cursor().execute("LOCK TABLES items WRITE")
        # Held: the checkpoint stops moving once the chunks read before the lock are saved.
        held: list[Any] = []

        def still() -> bool:
            held.append((zk_get(zk_path) or {}).get("snapshot"))
            return len(held) > 15 and all(h == held[-1] for h in held[-15:])

        await asyncio.to_thread(wait_until, still, 60, "the snapshot to hold still", 0.2)
        progress = held[-1]
        assert progress["done"] < ROWS and progress["tables"][0] == [database, "items"]
        assert progress["chunks"] == progress["done"] // CHUNK, progress
        assert 0.5 * ROWS <= progress["estimate"] <= 1.5 * ROWS, progress
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/lag") as response:
                report = orjson.loads(await response.read())
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
        (shown,) = [s for s in report["sources"] if s["name"] == SOURCE]
        assert shown["checkpoint"]["snapshot"] == progress
        table = f"{database}.items"
        assert metric(metrics, "aesop_snapshot_running", source=SOURCE, kind="incremental") == 1
        assert metric(metrics, "aesop_snapshot_running", source=SOURCE, kind="initial") == 0
        assert metric(metrics, "aesop_snapshot_tables_left", source=SOURCE) == 2
        assert metric(metrics, "aesop_snapshot_rows", source=SOURCE) == progress["rows"]
        assert (
            metric(metrics, "aesop_snapshot_table_rows", source=SOURCE, table=table)
            == (progress["done"])
        )
        assert (
            metric(metrics, "aesop_snapshot_table_chunks", source=SOURCE, table=table)
            == (progress["chunks"])
        )
        estimate = metric(metrics, "aesop_snapshot_table_rows_estimate", source=SOURCE, table=table)
        assert estimate == progress["estimate"]
        browser = Chromium(tmp_path / "chromium", tmp_path / "chromium.log")
        try:
            await browser.start()
            await browser.navigate(f"{base}/dashboard")
            text = await browser.wait_for(
                f"document.querySelector('tr[data-source=\"{SOURCE}\"] [data-field=snapshot]')"
                "?.textContent",
                timeout=30,
                what="the snapshot line under the source's checkpoint",
            )
        finally:
            await browser.close()
        assert text == (
            f"incremental snapshot: {table}, chunk {progress['chunks']}, "
            f"{progress['done']:,} of ~{progress['estimate']:,} rows, 1 more table(s)"
        )
    finally:
        locker.close()
    await asyncio.to_thread(worker.wait_for_log, f"relay {SOURCE}: incremental snapshot done", 180)
    await asyncio.to_thread(
        wait_until, lambda: "snapshot" not in (zk_get(zk_path) or {"snapshot": 1}), 30,
        "the checkpoint without a snapshot",
    )  # fmt: skip

    async def scraped() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
            return await response.text()

    deadline = time.monotonic() + 30
    while metric(metrics := await scraped(), "aesop_snapshot_tables_left", source=SOURCE) != 0:
        assert time.monotonic() < deadline, "the metrics still show a snapshot under way"
        await asyncio.sleep(0.5)
    assert metric(metrics, "aesop_snapshot_running", source=SOURCE, kind="incremental") == 0
    assert metric(metrics, "aesop_snapshot_table_rows", source=SOURCE, table=table) is None
    assert worker.stop() == 0


def test_aesop_snapshot_refuses_what_it_cannot_take_in_one_line(
    workers: WorkerFactory, make_config: ConfigFactory, database: str
) -> None:
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY)",
        "CREATE TABLE hidden (id INT PRIMARY KEY)",
        "INSERT INTO items SELECT seq FROM seq_1_to_20000",  # read a row at a time: slow
        database=database,
    )
    user = f"snap_{database[-8:]}"
    sql(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'",
        f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'%'",
        f"GRANT SELECT ON {database}.items TO '{user}'@'%'",
        f"GRANT INSERT ON {database}.hidden TO '{user}'@'%'",  # seen, but not readable
        f"GRANT ALL ON aesop.* TO '{user}'@'%'",
    )
    try:
        spec = source_spec(make_config, database, mysql=f"mysql://{user}:pw@127.0.0.1:3306",
                           snapshot_chunk=1)  # fmt: skip
        config = make_config(sources=[spec])

        def refused(*args: str) -> str:
            done = aesop_snapshot(config, *args)
            assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout)
            (line,) = done.stderr.splitlines()
            return line

        assert "no worker runs the relay of source 'shop'" in refused(SOURCE, f"{database}.items")
        worker = workers.start(config, FAST_TAKEOVER)
        worker.wait_for_log(f"relay {SOURCE}: reading")
        wait_until(lambda: zk_get(f"/aesop-test/{make_config.app_id}/heartbeats/{SOURCE}"), 30,
                   "the relay's heartbeat")  # fmt: skip
        assert "no [[source]] named 'nope'" in refused("nope", f"{database}.items")
        assert "does not publish mysql.user" in refused(SOURCE, "mysql.user")
        assert "'items' is not db.table" in refused(SOURCE, "items")
        assert f"table {database}.gone does not exist" in refused(SOURCE, f"{database}.gone")
        line = refused(SOURCE, f"{database}.hidden")
        assert f"{user} cannot read {database}.hidden" in line and "GRANT SELECT" in line
        # Nothing was asked of the relay by any of those.
        if sql("SHOW TABLES FROM aesop LIKE 'signals'"):
            mine = f"SELECT COUNT(*) FROM aesop.signals WHERE data LIKE '%{database}.%'"
            assert sql(mine)[0][0] == 0
        # One at a time: a second request while the first runs is refused.
        asked = aesop_snapshot(config, SOURCE, f"{database}.items")
        assert asked.returncode == 0, asked.stderr
        zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
        wait_until(lambda: (zk_get(zk_path) or {}).get("snapshot"), 30, "the snapshot to run")
        line = refused(SOURCE, f"{database}.items")
        assert "an incremental snapshot is under way" in line, line
    finally:
        sql(f"DROP USER '{user}'@'%'")
