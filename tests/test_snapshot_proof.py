"""The snapshot's end-to-end proof: a 1,000,000-row table and a keyless one, under a writer
that updates, deletes and inserts throughout; an initial snapshot, then an incremental
re-snapshot of both while streaming, with a worker killed -9 in the middle of each; the
``mysql`` consumer's destination ends equal to the source, row for row.

A few minutes long, so ``make test`` leaves it out: ``make proof`` runs it
(``AESOP_PROOF_ROWS`` sets the keyed table's size; 1,000,000 by default).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest

from tests.support.cli import aesop_snapshot
from tests.support.config import ConfigFactory
from tests.support.mysql import mysql_url, sql
from tests.support.replica import assert_converges, consumer_toml, create_schema
from tests.support.stack import wait_until
from tests.support.workers import WorkerFactory
from tests.support.zookeeper import zk_get
from tests.test_snapshot import FAST_TAKEOVER, SOURCE, Churn, kill_once_under_way, source_spec

# Minutes, not seconds: two million-row snapshots, two takeovers, and the replica's catching up.
pytestmark = [
    pytest.mark.usefixtures("drop_test_resources"),
    pytest.mark.timeout(1800),
    pytest.mark.proof,
]

ROWS = int(os.environ.get("AESOP_PROOF_ROWS", "1000000"))
KEYLESS_ROWS = 20_000
CHUNK = 4096
SCHEMA = {
    "items": "id INT PRIMARY KEY, v INT NOT NULL, note VARCHAR(40), amount DECIMAL(10,2),"
    " at DATETIME(3)",
    "bag": "a INT, b VARCHAR(20)",
}


class KeylessWriter(Churn):
    """Now and then, a row of the keyless table inserted, updated or deleted (rarely enough
    that its whole-table read finds it unchanged within a few attempts)."""

    def __init__(self, database: str) -> None:
        super().__init__(database, 0, pause=1.5)

    def step(self, cur: Any, rng: random.Random) -> None:
        a = rng.randint(1, KEYLESS_ROWS)
        pick = rng.random()
        if pick < 0.4:
            cur.execute("INSERT INTO bag VALUES (%s, 'added')", (a,))
        elif pick < 0.7:
            cur.execute("UPDATE bag SET b = 'changed' WHERE a = %s LIMIT 1", (a,))
        else:
            cur.execute("DELETE FROM bag WHERE a = %s LIMIT 1", (a,))


def test_a_million_rows_snapshotted_twice_under_writes_and_kill_9s_end_equal(
    workers: WorkerFactory, make_config: ConfigFactory, database: str
) -> None:
    replica = f"{database}_replica"
    connect = mysql_url(database).connect_args()
    connect.pop("database", None)
    create_schema(connect, replica, SCHEMA)
    try:
        for table, columns in SCHEMA.items():
            sql(f"CREATE TABLE {table} ({columns})", database=database)
        started = time.monotonic()
        sql(
            f"INSERT INTO items SELECT seq, 0, CONCAT('row ', seq), 10.50,"
            f" '2024-01-01 00:00:00.5' FROM seq_1_to_{ROWS}",
            f"INSERT INTO bag SELECT seq % 5000, 'same' FROM seq_1_to_{KEYLESS_ROWS}",
            database=database,
        )
        print(f"filled {ROWS:,} + {KEYLESS_ROWS:,} rows in {time.monotonic() - started:.1f}s")
        topic, consumer = f"aesop.{make_config.app_id}", f"{make_config.app_id}-replica"
        spec = source_spec(make_config, database, start="", snapshot="initial",
                           snapshot_chunk=CHUNK)  # fmt: skip
        url = f"mysql://root@127.0.0.1:3306/{replica}"
        config = make_config(sources=[spec], extra=consumer_toml(consumer, topic, url))
        zk_path = f"/aesop-test/{make_config.app_id}/relays/{SOURCE}"
        churn, keyless = Churn(database, ROWS, pause=0.01), KeylessWriter(database)
        churn.start()
        keyless.start()
        timings: dict[str, float] = {}

        started = time.monotonic()
        first = workers.start(config, FAST_TAKEOVER)
        at_kill = kill_once_under_way(first, zk_path)["snapshot"]
        assert at_kill["kind"] == "initial" and at_kill["done"] < ROWS
        second = workers.start(config, FAST_TAKEOVER)
        second.wait_for_log(f"relay {SOURCE}: initial snapshot done", timeout=900)
        timings["initial snapshot, a kill -9 included"] = time.monotonic() - started

        wait_until(lambda: "snapshot" not in zk_get(zk_path), 60, "the snapshot's end saved")
        started = time.monotonic()
        asked = aesop_snapshot(config, SOURCE, f"{database}.items", f"{database}.bag")
        assert asked.returncode == 0, asked.stderr
        second.wait_for_log(f"relay {SOURCE}: snapshot of {database}.items, {database}.bag")
        at_kill = kill_once_under_way(second, zk_path)["snapshot"]
        assert at_kill["kind"] == "incremental" and at_kill["done"] < ROWS
        third = workers.start(config, FAST_TAKEOVER)
        third.wait_for_log(f"relay {SOURCE}: incremental snapshot done", timeout=900)
        timings["incremental snapshot, a kill -9 included"] = time.monotonic() - started

        churn.finish()
        keyless.finish()
        print(f"writer: {churn.done:,} transactions on items during the two snapshots")
        started = time.monotonic()

        def checksums_equal() -> bool:
            found = sql(f"CHECKSUM TABLE {database}.items, {database}.bag,"
                        f" {replica}.items, {replica}.bag")  # fmt: skip
            sums = [row[1] for row in found]
            return sums[:2] == sums[2:]

        wait_until(checksums_equal, 600, "the replica's checksums to equal the source's", 2.0)
        timings["replica equal after the writer stopped"] = time.monotonic() - started
        tables = assert_converges((connect, database), (connect, replica), 60)
        assert len(tables["bag"][0]) >= KEYLESS_ROWS * 0.9
        assert len(tables["items"][0]) >= ROWS * 0.9
        for what, seconds in timings.items():
            print(f"{what}: {seconds:.1f}s")
        assert third.stop() == 0
    finally:
        sql(f"DROP DATABASE IF EXISTS {replica}")
