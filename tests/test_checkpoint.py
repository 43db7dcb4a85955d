"""Relay checkpoints on the real stack: table and ZooKeeper, exactly once across stops."""

from __future__ import annotations

import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.config import ConfigFactory, SourceSpec
from tests.support.kafka import (
    act_then_wait_for_messages,
    count_then_settle,
    delete_topics,
    read_topic,
)
from tests.support.load import Writer, assert_exactly_once, create_numbers
from tests.support.mysql import binlog_transactions
from tests.support.servers import ServerDatabase, numbers_from, on_servers
from tests.support.stack import wait_until
from tests.support.workers import Worker, WorkerFactory, data_dir
from tests.support.zookeeper import zk_get

SOURCE = "shop"
# gtid_set: the stack's MariaDB logs GTIDs, so the relay keeps the set and resumes by it.
CHECKPOINT_KEYS = {"file", "pos", "gtid", "scn", "row", "ts_ms", "gtid_set"}


pytestmark = pytest.mark.usefixtures("drop_test_resources")

# The checkpoint's GTID, as each flavour writes one: MySQL "<server uuid>:<n>", MariaDB
# "<domain>-<server id>-<seq>".
GTID_FORM = {
    "mysql": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:\d+"),
    "mariadb": re.compile(r"\d+-\d+-\d+"),
}

# Tests about what the relay does with the server's binlog (its positions, GTIDs, a
# transaction read in part, a rotate) run on every server of the matrix. Those about how
# the checkpoint survives the worker (clean restarts and kill -9 under load, a wiped table)
# exercise Kafka, the table and ZooKeeper the same way whatever the server: on MariaDB
# 10.11 only, which keeps the stack tier's time down.
MARIADB10_ONLY = on_servers("mariadb10")
# Fault tests of a minute or so per server: where MariaDB and MySQL differ.
MARIADB_AND_MYSQL = on_servers("mariadb10", "mysql8")


@dataclass
class Relay:
    """A relay's config, so that a test can stop and start its worker at will."""

    workers: WorkerFactory
    config: Path
    app_id: str
    topic: str
    start: str
    worker: Worker | None = None
    env: dict[str, str] | None = None  # the worker's environment, beside the test's own

    @property
    def zk_path(self) -> str:
        return f"/aesop-test/{self.app_id}/relays/{SOURCE}"

    @property
    def changelog(self) -> str:
        return f"{self.app_id}-source_to_checkpoint-changelog"

    def run(self) -> Worker:
        self.worker = self.workers.start(self.config, self.env)
        self.worker.wait_for_log(f"relay {SOURCE}: reading")
        return self.worker

    def stop(self) -> None:
        assert self.worker is not None
        assert self.worker.stop() == 0, "a clean stop exits 0"

    def kill(self) -> None:
        assert self.worker is not None
        self.worker.kill()

    def origin(self) -> str:
        """Where the running worker took its checkpoint from, as it logged it."""
        assert self.worker is not None
        marker = f"relay {SOURCE}: checkpoint from "
        line = next(line for line in self.worker.log().splitlines() if marker in line)
        return line.split(marker, 1)[1].strip()

    def messages(self, n: int, settle: float = 2.0) -> list[dict[str, Any]]:
        return read_topic(self.topic, count_then_settle(n, settle), timeout=90)

    def stored_in_changelog(self) -> dict[str, Any]:
        """The last checkpoint the table's changelog holds for the source."""
        records = read_topic(self.changelog, count_then_settle(1, 1.0), timeout=30)
        ours = [r for r in records if r["key"] == SOURCE]
        assert ours, f"no checkpoint for {SOURCE} in {self.changelog}"
        return max(ours, key=lambda r: r["offset"])["value"]


def make_relay(
    workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> Relay:
    start = server.position()
    app_id = f"t{unique}"
    spec = SourceSpec(
        name=SOURCE,
        include=[f"{server.db}.*"],
        mysql=server.url(),
        server_id=6000 + random.randrange(10**8),
        start=start,
        topic=f"aesop.t{unique}",
    )
    config = ConfigFactory(tmp_path, unique)(sources=[spec])
    return Relay(workers, config, app_id, spec.topic, start)


def stop_inside_one_insert(
    relay: Relay, server: ServerDatabase, low: int, rows: int
) -> dict[str, Any]:
    """Insert ``rows`` numbers after ``low`` in one statement; stop the worker as soon as
    the first of them is in Kafka (the statement still being read); the checkpoint then."""

    def insert() -> None:
        server.sql(f"INSERT INTO numbers {numbers_from(low, rows)}")

    act_then_wait_for_messages(relay.topic, insert, at_least=1)
    relay.stop()
    checkpoint = zk_get(relay.zk_path)
    assert checkpoint is not None
    return checkpoint


def test_checkpoint_in_zookeeper_matches_last_published_event(workers, tmp_path, unique, server):
    create_numbers(server)
    relay = make_relay(workers, tmp_path, unique, server)
    relay.run()
    server.sql(
        "INSERT INTO numbers VALUES (1, 'a'), (2, 'b')",
        "UPDATE numbers SET pad = 'c' WHERE n = 1",
        "INSERT INTO numbers VALUES (3, 'd'), (4, 'e'), (5, 'f')",
    )
    messages = sorted(relay.messages(6), key=lambda m: (m["value"]["scn"], m["value"]["row"]))
    assert len(messages) == 6
    last = messages[-1]["value"]
    checkpoint = wait_until(
        lambda: (c := zk_get(relay.zk_path)) and (c["scn"], c["row"]) == (last["scn"], 2) and c,
        timeout=15,
        what="the ZooKeeper checkpoint to reach the last event",
    )
    assert set(checkpoint) == CHECKPOINT_KEYS
    final = binlog_transactions(relay.start, server.db, server.sql)[-1]
    assert final.rows[0].scn == last["scn"]
    # file/pos is a transaction boundary at or after the end of the last published
    # transaction (later transactions of other databases may move it on).
    assert final.end is not None
    assert (checkpoint["file"], checkpoint["pos"]) >= final.end
    assert final.gtid is not None and GTID_FORM[server.flavour].fullmatch(final.gtid)
    assert {m["value"]["source"]["gtid"] for m in messages[-3:]} == {final.gtid}
    if (checkpoint["file"], checkpoint["pos"]) == final.end:
        assert checkpoint["gtid"] == final.gtid
        # One replication domain (MariaDB): the set at the end of that transaction is its
        # GTID; one server uuid with GTIDs on from its start (MySQL): uuid:1-<its number>.
        uuid, _, number = final.gtid.rpartition(":")
        expected = f"{uuid}:1-{number}" if server.flavour == "mysql" else final.gtid
        assert checkpoint["gtid_set"] == expected
    assert abs(checkpoint["ts_ms"] - time.time() * 1000) < 60_000
    # The table (its changelog) holds the same checkpoint the mirror has.
    stored = wait_until(
        lambda: (c := relay.stored_in_changelog()) == zk_get(relay.zk_path) and c,
        timeout=15,
        what="the changelog and ZooKeeper to agree",
    )
    assert (stored["scn"], stored["row"]) == (last["scn"], 2)


@MARIADB10_ONLY
def test_clean_restarts_under_load_publish_each_change_once(workers, tmp_path, unique, server):
    create_numbers(server)
    relay = make_relay(workers, tmp_path, unique, server)
    relay.run()
    writer = Writer(server.db, connect=server.connect_args())
    writer.start()
    for _ in range(2):
        writer.write_more(500)
        relay.stop()
        writer.write_more(200)  # changes committed while no worker runs
        relay.run()
        assert relay.origin() == "table"
    writer.write_more(400)
    written = writer.finish()
    assert written > 200, "the writer made too little load to test anything"
    assert_exactly_once(relay.messages(written), written)


@MARIADB_AND_MYSQL
def test_clean_stop_inside_a_large_transaction(workers, tmp_path, unique, server):
    create_numbers(server)
    relay = make_relay(workers, tmp_path, unique, server)
    big = 200_000  # several seconds of relaying, so that the stop lands inside it
    inside = 0
    for attempt in range(3):
        relay.run()
        checkpoint = stop_inside_one_insert(relay, server, attempt * big, big)
        txn = binlog_transactions(relay.start, server.db, server.sql)[-1]
        first = txn.rows[0]
        # Stopped mid-transaction: resume at its start, with some of its rows published.
        resume_before = (checkpoint["file"], checkpoint["pos"]) < (first.file, first.pos)
        if resume_before and checkpoint["scn"] >= first.scn:
            inside += 1
            break
    relay.run()
    assert relay.origin() == "table"
    written = (attempt + 1) * big
    assert inside, "never stopped inside the transaction; make it larger"
    messages = relay.messages(written)
    assert_exactly_once(messages, written)
    # The transaction resumed mid-way still numbers its rows 0..n-1, ends once, has its GTID.
    rows = sorted(
        (m["value"] for m in messages if m["value"]["after"]["n"] > attempt * big),
        key=lambda v: (v["scn"], v["row"]),
    )
    assert [v["txn"]["seq"] for v in rows] == list(range(big))
    assert [v["txn"]["last"] for v in rows] == [False] * (big - 1) + [True]
    assert {v["source"]["gtid"] for v in rows} == {txn.gtid}


@MARIADB10_ONLY
def test_kill_9_under_load_loses_nothing(workers, tmp_path, unique, server):
    create_numbers(server)
    relay = make_relay(workers, tmp_path, unique, server)
    # The next start waits for the killed worker's session to time out: keep it short.
    relay.env = {"AESOP_SESSION_TIMEOUT": "10"}
    relay.run()
    writer = Writer(server.db, connect=server.connect_args())
    writer.start()
    writer.write_more(800)
    relay.kill()
    # What the table held when the worker died, and its (lazier) ZooKeeper mirror.
    stored = relay.stored_in_changelog()
    mirrored = zk_get(relay.zk_path)
    assert mirrored is not None
    assert (mirrored["scn"], mirrored["row"]) <= (stored["scn"], stored["row"])
    writer.write_more(200)
    relay.run()
    assert relay.origin() == "table"
    writer.write_more(600)
    written = writer.finish()
    messages = relay.messages(written)
    numbers = sorted({m["value"]["after"]["n"] for m in messages})
    assert numbers == list(range(1, written + 1)), "a committed change was lost"
    copies: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for m in messages:
        copies.setdefault((m["value"]["scn"], m["value"]["row"]), []).append(m)
    assert len(copies) == written, "one (scn, row) per row written"
    for (scn, row), same in copies.items():
        if len(same) == 1:
            continue
        assert (scn, row) > (stored["scn"], stored["row"]), "republished an acknowledged event"
        first = {**same[0]["value"], "ts_ms": None}
        assert all({**m["value"], "ts_ms": None} == first for m in same), "copies differ"
        assert len({m["partition"] for m in same}) == 1


@MARIADB10_ONLY
def test_wiped_table_resumes_from_zookeeper(workers, tmp_path, unique, server):
    create_numbers(server)
    relay = make_relay(workers, tmp_path, unique, server)
    relay.run()
    writer = Writer(server.db, connect=server.connect_args())
    writer.start()
    writer.write_more(800)
    relay.stop()
    mirrored = zk_get(relay.zk_path)
    assert mirrored == relay.stored_in_changelog(), "a clean stop leaves the mirror current"
    delete_topics(relay.changelog)
    shutil.rmtree(data_dir(tmp_path, relay.app_id), ignore_errors=True)
    relay.run()
    assert relay.origin() == "zookeeper"
    writer.write_more(600)
    written = writer.finish()
    assert_exactly_once(relay.messages(written), written)
    # The table is written again from the resumed relay.
    wait_until(
        lambda: relay.stored_in_changelog()["scn"] > mirrored["scn"],
        timeout=15,
        what="a new checkpoint in the re-created changelog",
    )


def test_a_checkpoint_resuming_at_a_rotate_keeps_the_last_gtid(workers, tmp_path, unique, server):
    """Stopped inside the first transaction of a new binlog, the checkpoint resumes at the
    Rotate into it, and carries the GTID of the transaction before it, not null."""
    create_numbers(server)
    relay = make_relay(workers, tmp_path, unique, server)
    big = 200_000
    for attempt in range(3):
        relay.run()
        server.sql(f"INSERT INTO numbers VALUES ({attempt * big + 1}, 'pre')")
        before_rotate = server.last_gtid()
        server.sql("FLUSH BINARY LOGS")
        new_file = server.position().rpartition(":")[0]

        checkpoint = stop_inside_one_insert(relay, server, attempt * big + 1, big - 1)
        if (checkpoint["file"], checkpoint["pos"]) == (new_file, 4):
            break
    assert (checkpoint["file"], checkpoint["pos"]) == (new_file, 4), (
        "never stopped inside the transaction after the rotate; make it larger"
    )
    assert GTID_FORM[server.flavour].fullmatch(before_rotate), before_rotate
    assert checkpoint["gtid"] == before_rotate
