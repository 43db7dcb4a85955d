"""GTID positions on the real servers: a gtid start publishes exactly what follows the set, a
reader resumed by GTID in the middle of a large transaction loses and repeats nothing and
gives the same SCNs as reading by file and position, and a purged set is refused."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from app.errors import GtidError, PositionLostError
from app.settings import MySQLURL, SourceSettings
from relay import preflight
from relay.binlog import ROWS_PER_BATCH, BinlogReader
from tables.positions import Checkpoint, Position
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.mysql import server_id
from tests.support.servers import BINLOG_ON, RootOnLoopback, StackServer, start_private_server
from tests.support.stack import wait_until
from tests.test_preflight import Outcome, aesop_check, assert_one_error
from tests.test_reader import Collected, run_until

MARIADB_10 = StackServer("mariadb", "MariaDB 10.11", 3306, "mariadb")
SERVERS = ("mariadb", "mariadb11", "mysql8")


@pytest.fixture(params=SERVERS)
def gtid_server(request: pytest.FixtureRequest, stack: Any) -> StackServer:
    """Each server of the stack in turn: all three log GTIDs."""
    if request.param == "mariadb":
        return MARIADB_10
    server: StackServer = request.getfixturevalue(request.param)
    return server


def executed(server: RootOnLoopback) -> str:
    """The server's executed GTID set, in its own syntax."""
    version = str(server.sql("SELECT VERSION()")[0][0])
    query = "@@GLOBAL.gtid_binlog_pos" if "MariaDB" in version else "@@GLOBAL.gtid_executed"
    return str(server.sql(f"SELECT {query}")[0][0]).replace("\n", "")


def make_source(server: RootOnLoopback, database: str, start: str) -> SourceSettings:
    url = MySQLURL("127.0.0.1", server.port, "root", "", None)
    return SourceSettings("gtid", url, server_id(), (f"{database}.*",), (), start, "aesop.gtid")


class FirstBatches(Collected):
    """Keeps batches until ``count`` changes are in, then stops the reader: what a worker
    killed at that moment had published."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def put(self, batch: Any, stop: threading.Event) -> None:
        if not stop.is_set():
            super().put(batch, stop)
        if len(self.events()) >= self.count:
            stop.set()


def read(
    source: SourceSettings, checkpoint: Checkpoint, count: int, stop_after: int | None = None
) -> tuple[list[dict[str, Any]], BinlogReader]:
    """The change events a reader hands over from ``checkpoint`` (all ``count`` of them, or
    as soon as ``stop_after`` are in, to stop it mid-way)."""
    handoff = Collected() if stop_after is None else FirstBatches(stop_after)
    reader = BinlogReader(source, checkpoint.position, checkpoint.last, handoff)  # type: ignore[arg-type]
    run_until(reader, handoff, count if stop_after is None else stop_after, 60)
    return handoff.events(), reader


def test_a_gtid_start_reads_exactly_the_changes_after_the_set_with_the_same_scns(
    gtid_server: StackServer, database: str
) -> None:
    server = gtid_server
    server.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    server.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)", database=database)
    server.sql("INSERT INTO t VALUES (1, 1)", database=database)
    before = executed(server)
    file, pos = server.position()
    server.sql("INSERT INTO t VALUES (2, 2)", "INSERT INTO t VALUES (3, 3)", database=database)
    by_gtid = preflight.preflight(make_source(server, database, f"gtid:{before}"), None)
    # The position of the first transaction not in the set, and the set itself, in the
    # server's own syntax.
    assert (by_gtid.file, by_gtid.pos) == (file, pos)
    assert by_gtid.gtid_set == before
    events, reader = read(make_source(server, database, f"gtid:{before}"), by_gtid, 2)
    assert [e["after"]["id"] for e in events] == [2, 3]
    assert reader.resume.gtid_set == executed(server)
    by_file = preflight.preflight(make_source(server, database, f"{file}:{pos}"), None)
    assert by_file.gtid_set == before  # a file:pos start knows the set there too
    by_position = make_source(server, database, f"{file}:{pos}")
    same, _ = read(by_position, Checkpoint.at(Position(file, pos)), 2)
    assert [(e["scn"], e["row"]) for e in same] == [(e["scn"], e["row"]) for e in events]


def test_resuming_by_gtid_inside_a_large_transaction_loses_and_repeats_nothing(
    gtid_server: StackServer, database: str
) -> None:
    server = gtid_server
    server.sql(f"CREATE DATABASE IF NOT EXISTS {database}")
    server.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)", database=database)
    source = make_source(server, database, "latest")
    start = preflight.preflight(source, None)
    assert start.gtid_set is not None
    rows = 3 * ROWS_PER_BATCH
    values = ",".join(f"({i},{i})" for i in range(rows))
    server.sql(f"INSERT INTO t VALUES {values}", "INSERT INTO t VALUES (-1, -1)", database=database)
    first, reader = read(source, start, rows + 1, stop_after=ROWS_PER_BATCH)
    assert len(first) < rows + 1  # stopped inside the large transaction
    # What Kafka would have acknowledged: the first batch; the resume point is the start of
    # the half-read transaction, with the GTID set there.
    acked = Checkpoint.at(reader.resume, (first[-1]["scn"], first[-1]["row"]))
    assert acked.gtid_set == start.gtid_set and (acked.file, acked.pos) == (start.file, start.pos)
    rest, again = read(source, acked, rows + 1 - len(first))
    ids = [e["after"]["id"] for e in first + rest]
    assert sorted(ids) == sorted([*range(rows), -1]) and len(ids) == len(set(ids))
    assert again.resume.gtid_set == executed(server)


def check_of(make_config: ConfigFactory, port: int, database: str, start: str) -> Outcome:
    """``aesop check`` of one source on the server at ``port``, starting at ``start``."""
    spec = SourceSpec("gtid", [f"{database}.*"], server_id(), start, "aesop.gtid",
                      mysql=f"mysql://root@127.0.0.1:{port}")  # fmt: skip
    return aesop_check(make_config([spec], zookeeper=""))


def test_a_purged_gtid_set_is_refused_in_one_line(
    tmp_path: Path, database: str, make_config: ConfigFactory
) -> None:
    server = start_private_server(tmp_path / "mariadb", *BINLOG_ON, "--binlog-row-metadata=FULL")
    try:
        server.sql(f"CREATE DATABASE {database}", f"CREATE TABLE {database}.t (id INT PRIMARY KEY)")
        early = executed(server)
        server.sql(f"INSERT INTO {database}.t VALUES (1)", "FLUSH BINARY LOGS")
        newest = server.position()[0]

        def purged() -> bool:
            server.sql(f"PURGE BINARY LOGS TO '{newest}'")
            return len(server.sql("SHOW BINARY LOGS")) == 1

        wait_until(purged, 30, f"PURGE BINARY LOGS TO '{newest}'")
        source = make_source(server, database, f"gtid:{early}")
        with pytest.raises(PositionLostError) as caught:
            preflight.preflight(source, None)
        message = str(caught.value)
        assert "purged" in message and "\n" not in message, message
        # Bad input, not a server fault: aesop check exits 2.
        assert_one_error(check_of(make_config, server.port, database, f"gtid:{early}"), 2,
                         "error: source 'gtid': start = 'gtid:...' lacks", "purged")  # fmt: skip
        stored = Checkpoint("mysql-bin.000001", 4, None, 1 << 32 | 4, -1, 0, early)
        with pytest.raises(PositionLostError):
            preflight.preflight(source, stored)
        # The running reader, given the purged set, stops on the server's error 1236.
        with pytest.raises(PositionLostError) as caught:
            read(source, stored, 1)
        assert "GTID set" in str(caught.value)
    finally:
        server.stop()


def test_the_other_flavours_gtid_start_is_refused(
    mysql8: StackServer, database: str, make_config: ConfigFactory
) -> None:
    for server, text in ((mysql8, "0-1-5"), (MARIADB_10, f"{executed(mysql8)}")):
        with pytest.raises(GtidError) as caught:
            preflight.preflight(make_source(server, database, f"gtid:{text}"), None)
        assert "GTID set but the server is" in str(caught.value)
    outcome = check_of(make_config, mysql8.port, database, "gtid:0-1-5")
    assert_one_error(outcome, 2, "error: source 'gtid': ", "GTID set but the server is")
