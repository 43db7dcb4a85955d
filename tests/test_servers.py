"""The servers users run besides MariaDB 10.11: MySQL 8.0 and MariaDB 11.4, as the local stack
starts them (docker/stack.sh start mysql8 | mariadb11), each checked for real: its binlog
settings, a caching_sha2_password login, `aesop check`, and the relay's reader on its binlog.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from app.errors import DecodeError
from app.settings import MySQLURL, SourceSettings
from relay.binlog import BinlogReader
from tables.positions import Position
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.mysql import server_id
from tests.support.servers import StackServer
from tests.test_preflight import aesop_check
from tests.test_reader import Collected, run_until

BINLOG = {
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "FULL",
}


def variables(server: StackServer, *names: str) -> dict[str, str]:
    listed = ", ".join(f"'{name}'" for name in names)
    rows = server.sql(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({listed})")
    return {str(name): str(value) for name, value in rows}


@pytest.fixture
def database(other_server: StackServer, unique: str) -> Iterator[str]:
    """A fresh database on the server under test, dropped afterwards."""
    name = f"t_{unique}"
    other_server.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield name
    other_server.sql(f"DROP DATABASE IF EXISTS {name}")


# --- the servers as started -------------------------------------------------------------


def test_mysql8_is_8_0_with_a_full_row_binlog_and_gtids(mysql8: StackServer) -> None:
    found = variables(mysql8, *BINLOG, "version", "gtid_mode", "enforce_gtid_consistency")
    assert found.pop("version").startswith("8.0.15"), found
    assert found == {**BINLOG, "gtid_mode": "ON", "enforce_gtid_consistency": "ON"}


def test_mariadb11_is_11_4_with_a_full_row_uncompressed_binlog(mariadb11: StackServer) -> None:
    found = variables(mariadb11, *BINLOG, "version", "log_bin_compress", "binlog_legacy_event_pos")
    assert found.pop("version").startswith("11.4.5-MariaDB"), found
    assert found == {**BINLOG, "log_bin_compress": "OFF", "binlog_legacy_event_pos": "ON"}


def test_each_server_gives_a_binlog_position(other_server: StackServer) -> None:
    file, pos = other_server.position()
    assert re.fullmatch(r"mysql-bin\.\d{6}", file), file
    assert pos >= 4
    ((server_id_,),) = other_server.sql("SELECT @@server_id")
    assert server_id_ not in (0, 1), "each server has an id of its own (MariaDB 10.11's is 1)"


def sha2_login(server: StackServer, password: str, **options: Any) -> tuple[str, str]:
    """Log in as aesop_sha2; its session's TLS cipher ('' without TLS) and its grants."""
    args = {**server.url("aesop_sha2", password).connect_args(), **options}
    with pymysql.connect(**args) as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        ((_, cipher),) = cur.fetchall()
        cur.execute("SHOW GRANTS")
        ((grants,),) = cur.fetchall()
    return str(cipher), str(grants)


def test_mysql8_takes_a_caching_sha2_password_login_without_tls(mysql8: StackServer) -> None:
    """The first login after FLUSH PRIVILEGES is a full one: without TLS, PyMySQL sends the
    password encrypted with the server's RSA key (the cryptography package). PyMySQL prefers
    TLS when the server offers it, as MySQL 8 does; aesop's connections take that default."""
    ((plugin,),) = mysql8.sql(
        "SELECT plugin FROM mysql.user WHERE user = 'aesop_sha2' AND host = '%'"
    )
    assert plugin == "caching_sha2_password"
    mysql8.sql("FLUSH PRIVILEGES")  # empties the server's cache of successful logins
    grants = "GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO `aesop_sha2`@`%`"
    for _ in range(2):  # a full login, then one the server has cached
        assert sha2_login(mysql8, "aesop-sha2", ssl_disabled=True) == ("", grants)
    mysql8.sql("FLUSH PRIVILEGES")
    cipher, _ = sha2_login(mysql8, "aesop-sha2")
    assert cipher != ""
    for options in ({"ssl_disabled": True}, {}):
        with pytest.raises(pymysql.err.OperationalError) as refused:
            sha2_login(mysql8, "wrong", **options)
        assert refused.value.args[0] == 1045


# --- aesop against them -----------------------------------------------------------------


def spec(name: str, url: str, unique: str) -> SourceSpec:
    return SourceSpec(
        name=name,
        include=["*.*"],
        server_id=server_id(),
        start="earliest",
        topic=f"aesop.t{unique}-{name}",
        mysql=url,
    )


def test_aesop_check_passes_for_each_server(
    other_server: StackServer, make_config: ConfigFactory, unique: str
) -> None:
    sources = [spec("root", f"mysql://root@127.0.0.1:{other_server.port}", unique)]
    if other_server.service == "mysql8":
        url = f"mysql://aesop_sha2:aesop-sha2@127.0.0.1:{other_server.port}"
        sources.append(spec("sha2", url, unique))
    outcome = aesop_check(make_config(sources, zookeeper=""))
    assert outcome.code == 0, outcome.text
    assert outcome.stderr == ""
    lines = outcome.stdout.splitlines()
    assert len(lines) == len(sources), outcome.text
    # MySQL 8.0.15 predates binlog_transaction_compression: no compression to report.
    compression = (
        "" if other_server.service == "mysql8"
        else "; binlog compression: log_bin_compress=OFF, log_bin_compress_min_len=256"
    )  # fmt: skip
    for line, source in zip(lines, sources, strict=True):
        assert re.fullmatch(
            rf"ok: source '{source.name}': reads from mysql-bin\.\d+:4 \(start = earliest\)"
            + re.escape(compression),
            line,
        ), line


def read_changes(server: StackServer, database: str, start: tuple[str, int], count: int) -> Any:
    """The change events BinlogReader builds from the server's binlog after ``start`` for the
    tables of ``database``, once ``count`` of them are handed over, and their keys."""
    handoff = read_handoff(server.url(), database, start, count)
    return handoff.events(), handoff.keys_of_changes()


def read_handoff(
    url: MySQLURL,
    database: str,
    start: tuple[str, int],
    count: int,
    skip: tuple[int, int] = (-1, -1),
) -> Collected:
    """What BinlogReader hands over from the binlog at ``url`` after ``start`` for the tables
    of ``database`` (nothing at or below ``skip``), once ``count`` change events are in."""
    source = SourceSettings(
        name="srv",
        mysql=url,
        server_id=server_id(),
        include=(f"{database}.*",),
        exclude=(),
        start=f"{start[0]}:{start[1]}",
        topic="aesop.srv",
    )
    handoff = Collected()
    reader = BinlogReader(source, Position(*start), skip, handoff)  # type: ignore[arg-type]
    run_until(reader, handoff, count, 30)
    return handoff


def test_the_reader_reads_inserts_updates_and_deletes_with_json(
    other_server: StackServer, database: str
) -> None:
    server = other_server
    server.sql(
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20), amount DECIMAL(6,2), doc JSON)",
        database=database,
    )
    start = server.position()
    server.sql(
        """INSERT INTO items VALUES (1, 'pen', 10.50, '{"tags": ["a", "b"], "n": 1}')""",
        "UPDATE items SET amount = 21.00, doc = JSON_SET(doc, '$.n', 2) WHERE id = 1",
        "DELETE FROM items WHERE id = 1",
        database=database,
    )
    events, keys = read_changes(server, database, start, 3)

    first = {"id": 1, "name": "pen", "amount": "10.50", "doc": {"tags": ["a", "b"], "n": 1}}
    second = {**first, "amount": "21.00", "doc": {"tags": ["a", "b"], "n": 2}}
    assert [(e["op"], e["before"], e["after"], e["changed"]) for e in events] == [
        ("c", None, first, []),
        ("u", first, second, ["amount", "doc"]),
        ("d", second, None, []),
    ]
    assert keys == [{"db": database, "table": "items", "pk": {"id": 1}}] * 3
    ((server_id_, gtid_source),) = server.sql(
        "SELECT @@server_id, @@server_uuid"
        if server.service == "mysql8"
        else "SELECT @@server_id, CONCAT(@@gtid_domain_id, '-', @@server_id)"
    )
    for event in events:
        source = event["source"]
        assert (source["db"], source["table"], source["server_id"]) == (
            database, "items", server_id_,
        )  # fmt: skip
        assert source["file"] == start[0] and source["pos"] > start[1]
        assert event["scn"] == int(source["file"].rsplit(".", 1)[1]) << 32 | source["pos"]
        assert event["key"] == {"id": 1} and event["txn"] == {"seq": 0, "last": True}
        # One transaction each (autocommit), each with the server's own GTID.
        assert re.fullmatch(rf"{re.escape(gtid_source)}[-:]\d+", source["gtid"]), source
    assert len({e["source"]["gtid"] for e in events}) == 3


def test_mariadb11_without_legacy_event_positions_is_refused_by_check_and_reader(
    mariadb11: StackServer, make_config: ConfigFactory, unique: str
) -> None:
    """binlog_legacy_event_pos=OFF, 11.4's default, logs end_log_pos 0 inside transactions:
    `aesop check` says what to set, and the reader stops rather than drop the rows."""
    database = f"t_{unique}"
    mariadb11.sql(f"CREATE DATABASE {database}")
    mariadb11.sql("SET GLOBAL binlog_legacy_event_pos = OFF")
    try:
        mariadb11.sql("CREATE TABLE items (id INT PRIMARY KEY)", database=database)
        start = mariadb11.position()
        mariadb11.sql("INSERT INTO items VALUES (1)", database=database)
        url = f"mysql://root@127.0.0.1:{mariadb11.port}"
        outcome = aesop_check(make_config([spec("root", url, unique)], zookeeper=""))
        with pytest.raises(DecodeError) as raised:
            read_changes(mariadb11, database, start, 1)
    finally:
        mariadb11.sql("SET GLOBAL binlog_legacy_event_pos = ON", f"DROP DATABASE {database}")
    assert outcome.code == 1, outcome.text
    refused = "error: source 'root': binlog_legacy_event_pos is OFF; "
    assert outcome.stderr.startswith(refused), outcome.text
    assert f"a rows event of {database}.items in {start[0]} after " in str(raised.value)
