"""GTID sets of both flavours, the gtid start's one-line config errors, and the binlog status
statement on servers old and new (fakes stand in for MySQL 8.4 and 9, which cannot be run
here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pymysql
import pytest

from app.errors import ConfigError, GtidError
from app.gtids import MARIADB, MYSQL, GtidSet, flavour_of, parse_for
from app.settings import SourceSettings, load
from relay import binlog_status, preflight
from tables.positions import Checkpoint

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "4e11fa47-71ca-11e1-9e33-c80aa9429562"


def test_a_mysql_set_parses_normalizes_and_grows() -> None:
    gtids = GtidSet.parse(f"{U2}:1-3,\n{U1.upper()}:1-5:7")
    assert gtids.flavour == MYSQL and str(gtids) == f"{U1}:1-5:7,{U2}:1-3"
    gtids.add(f"{U1}:6")
    gtids.add(f"{U2}:9")
    assert str(gtids) == f"{U1}:1-7,{U2}:1-3:9"
    assert gtids.contains(f"{U1}:7") and not gtids.contains(f"{U2}:4")


def test_a_mariadb_list_keeps_the_last_gtid_per_domain() -> None:
    gtids = GtidSet.parse("1-2-9,0-1-5")
    assert gtids.flavour == MARIADB and str(gtids) == "0-1-5,1-2-9"
    gtids.add("0-3-6")
    assert str(gtids) == "0-3-6,1-2-9"
    assert gtids.contains("0-1-6") and not gtids.contains("0-1-7") and not gtids.contains("2-1-1")


def test_what_a_set_lacks_of_a_purged_set() -> None:
    assert GtidSet.parse(f"{U1}:1-9").missing_from(GtidSet.parse(f"{U1}:1-5")) is None
    assert GtidSet.parse(f"{U1}:3-9").missing_from(GtidSet.parse(f"{U1}:1-5")) == f"{U1}:1-5"
    assert GtidSet.parse("0-1-9").missing_from(GtidSet.parse("0-1-5")) is None
    assert GtidSet.parse("0-1-4").missing_from(GtidSet.parse("0-1-5,1-1-2")) == "0-1-5,1-1-2"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("gtid:", "is not earliest"),
        ("gtid:nonsense", "neither a MySQL GTID set member"),
        (f"gtid:{U1}:5-1", "interval 5-1 must be n or n-m"),
        (f"gtid:{U1}:1-5,0-1-2", "'0-1-2' is not a MySQL GTID set member"),
        ("gtid:0-1-2,0-1-3", "domain 0 is listed twice"),
        (f"gtid:0-1-2,{U1}:1", "is not a MariaDB GTID"),
    ],
)
def test_a_bad_gtid_start_is_one_line_naming_the_key(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "aesop.toml"
    path.write_text(
        f'[[source]]\nname = "shop"\nmysql = "mysql://root@127.0.0.1"\nserver_id = 5\n'
        f'start = "{text}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    message = str(caught.value)
    assert "\n" not in message and "start" in message and reason in message, message


def test_good_gtid_starts_load(tmp_path: Path) -> None:
    for text in (f"gtid:{U1}:1-5:7-9,{U2}:1", "gtid:0-1-57,1-2-3"):
        path = tmp_path / "aesop.toml"
        path.write_text(
            f'[[source]]\nname = "shop"\nmysql = "mysql://root@127.0.0.1"\nserver_id = 5\n'
            f'start = "{text}"\n'
        )
        assert load(path, env={}).sources[0].start == text


def test_the_other_flavours_set_says_which_server_it_is_for() -> None:
    with pytest.raises(Exception) as caught:
        parse_for("0-1-5", MYSQL, "start")
    assert "MariaDB GTID set but the server is MySQL" in str(caught.value)
    with pytest.raises(Exception) as caught:
        parse_for(f"{U1}:1-5", MARIADB, "start")
    assert "MySQL GTID set but the server is MariaDB" in str(caught.value)
    assert flavour_of("") is None


def source(start: str) -> SourceSettings:
    from app.settings import MySQLURL

    return SourceSettings("shop", MySQLURL("127.0.0.1", 1, "u", "", None), 5, (), (), start, "t")


def test_a_gtid_start_on_a_server_without_gtids_is_refused_in_one_line() -> None:
    server = preflight.Server(MYSQL, gtids=False)
    with pytest.raises(GtidError) as caught:
        preflight.gtid_start(source(f"gtid:{U1}:1"), None, server, f"{U1}:1")  # type: ignore[arg-type]
    assert "gtid_mode OFF" in str(caught.value) and "\n" not in str(caught.value)


def test_a_checkpoint_of_the_other_flavour_is_refused() -> None:
    checkpoint = Checkpoint("mysql-bin.000001", 4, None, 1, 0, 0, f"{U1}:1-5")
    with pytest.raises(GtidError) as caught:
        preflight.resume_point(
            source("earliest"), None, preflight.Server(MARIADB, True), checkpoint
        )  # type: ignore[arg-type]
    assert "delete it" in str(caught.value)


def test_checkpoints_without_a_gtid_set_still_load_and_write_the_old_keys() -> None:
    old = {"file": "mysql-bin.000002", "pos": 4, "gtid": "0-1-5", "scn": 8589934596, "row": -1}
    checkpoint = Checkpoint.from_json(old)
    assert checkpoint.gtid_set is None
    assert set(checkpoint.to_json()) == {"file", "pos", "gtid", "scn", "row", "ts_ms"}
    with_set = Checkpoint.from_json({**old, "gtid_set": "0-1-5"})
    assert with_set.position.gtid_set == "0-1-5" and with_set.to_json()["gtid_set"] == "0-1-5"


class FakeCursor:
    """Answers SHOW statements as a server of one kind does."""

    def __init__(self, knows: set[str]) -> None:
        self.knows = knows
        self.sent: list[str] = []
        self.row: tuple[Any, ...] | None = None

    def execute(self, statement: str) -> None:
        self.sent.append(statement)
        if statement not in self.knows:
            raise pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax")
        self.row = ("binlog.000007", 157, "", "", f"{U1}:1-3")

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.row


def test_mysql_84_and_9_are_asked_show_binary_log_status_only() -> None:
    cur = FakeCursor({"SHOW BINARY LOG STATUS"})  # 8.4 and 9 removed SHOW MASTER STATUS
    assert binlog_status.binary_log_status(cur) == ("binlog.000007", 157, "", "", f"{U1}:1-3")
    assert cur.sent == ["SHOW BINARY LOG STATUS"]


def test_older_servers_and_mariadb_fall_back_to_show_master_status() -> None:
    cur = FakeCursor({"SHOW MASTER STATUS"})
    assert binlog_status.binary_log_status(cur) is not None
    assert cur.sent == ["SHOW BINARY LOG STATUS", "SHOW MASTER STATUS"]


def test_another_error_of_the_new_statement_is_not_hidden() -> None:
    class Denied(FakeCursor):
        def execute(self, statement: str) -> None:
            self.sent.append(statement)
            raise pymysql.err.OperationalError(1227, "Access denied; you need REPLICATION CLIENT")

    cur = Denied(set())
    with pytest.raises(pymysql.err.OperationalError):
        binlog_status.binary_log_status(cur)
    assert cur.sent == ["SHOW BINARY LOG STATUS"]
