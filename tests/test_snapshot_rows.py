"""Rows read by a snapshot's SELECT come out as the binlog path's values, on every server.

tests/test_values.py holds, per column type, the JSON value the binlog path gives (and
checks it there); here the same cases are read back by ``relay.snapshot_rows`` from a real
server, so an ``r`` event and a ``c`` event of the same row carry the same values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest

from relay.snapshot_rows import SESSION, MissingTable, SnapshotTable, describe
from tests.test_values import CASES


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    mysql: bool

    def connect(self, db: str | None = None, raw: bool = False) -> Any:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=db,
            charset="utf8mb4",
            autocommit=True,
            **({"conv": {}} if raw else {}),
        )
        return conn


SERVERS = {
    "mariadb10": Server("mariadb10", 3306, False),
    "mysql8": Server("mysql8", 3307, True),
    "mariadb11": Server("mariadb11", 3308, False),
}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Server, str]]:
    if request.param == "mariadb10":
        request.getfixturevalue("stack")
    else:
        request.getfixturevalue(request.param)  # fails in one line when it does not answer
    srv = SERVERS[request.param]
    db = f"aesop_snaprows_{uuid.uuid4().hex[:10]}"
    with srv.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
        cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    try:
        yield srv, db
    finally:
        with srv.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE `{db}`")


def _read_all(srv: Server, db: str, table: str, chunk: int) -> list[dict[str, Any]]:
    """Every row, chunk after chunk, as a snapshot reads them."""
    rows: list[dict[str, Any]] = []
    with srv.connect(raw=True) as conn, conn.cursor() as cur:
        for statement in SESSION:
            cur.execute(statement)
        shape: SnapshotTable = describe(cur, db, table, mariadb=not srv.mysql)
        after = None
        while True:
            sql, args = shape.chunk_sql(after, chunk)
            cur.execute(sql, args)
            fetched = cur.fetchall()
            for raw in fetched:
                rows.append(shape.row(raw))
            if not shape.keyed or len(fetched) < chunk:
                return rows
            after = shape.key_of(fetched[-1])


def test_every_column_type_as_the_binlog_gives_it(server: tuple[Server, str]) -> None:
    srv, db = server
    cases = CASES
    columns = ", ".join(f"c{i} {case.type} NULL" for i, case in enumerate(cases))
    with srv.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION sql_mode = ''")  # zero dates, invalid ENUM values
        cur.execute("SET SESSION time_zone = '+05:00'")  # TIMESTAMPs must come out in UTC
        cur.execute(f"CREATE TABLE wide (id INT PRIMARY KEY, {columns}) ROW_FORMAT=DYNAMIC")
        literals = ", ".join(case.literal for case in cases)
        cur.execute(f"INSERT INTO wide VALUES (1, {literals})")
        cur.execute("INSERT INTO wide (id) VALUES (2)")
    rows = _read_all(srv, db, "wide", chunk=1)
    assert [row["id"] for row in rows] == [1, 2]
    got = {case.id: rows[0][f"c{i}"] for i, case in enumerate(cases)}
    expected = {case.id: case.expected for case in cases}
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, f"{srv.name}: snapshot value != binlog value: {wrong}"
    types = {k: type(got[k]) for k in expected if type(got[k]) is not type(expected[k])}
    assert not types, f"{srv.name}: JSON types differ: {types}"
    assert all(value is None for name, value in rows[1].items() if name != "id")


def test_chunks_follow_a_composite_key_in_order(server: tuple[Server, str]) -> None:
    srv, db = server
    with srv.connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE pair (a VARBINARY(8), b INT, s VARCHAR(10) CHARACTER SET latin1"
            " COLLATE latin1_swedish_ci, v INT, PRIMARY KEY (a, b, s))"
        )
        rows = [
            (bytes([x]), b, s, x * 100 + b)
            for x in (0, 1, 0x7F, 0x80, 0xFF)
            for b in (-2, 0, 7)
            for s in ("a", "B", "é")
        ]
        cur.executemany("INSERT INTO pair VALUES (%s, %s, %s, %s)", rows)
    for chunk in (1, 4, 7, 1000):
        read = _read_all(srv, db, "pair", chunk)
        assert len(read) == len(rows), chunk
        assert [r["v"] for r in read] == [v for *_, v in sorted(rows, key=_collated)], chunk


def _collated(row: tuple[bytes, int, str, int]) -> tuple[bytes, int, str]:
    # latin1_swedish_ci: case-insensitive, and é sorts with e (after a and b).
    a, b, s, _ = row
    return a, b, {"a": "a", "B": "b", "é": "e"}[s]


def test_a_table_without_a_primary_key_is_one_pass(server: tuple[Server, str]) -> None:
    srv, db = server
    with srv.connect(db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (n INT, t TEXT)")
        cur.executemany("INSERT INTO notes VALUES (%s, %s)", [(i % 3, "x") for i in range(10)])
    read = _read_all(srv, db, "notes", chunk=3)
    assert sorted(r["n"] for r in read) == sorted(i % 3 for i in range(10))


def test_an_unknown_table_is_one_line(server: tuple[Server, str]) -> None:
    srv, db = server
    with (
        srv.connect(raw=True) as conn,
        conn.cursor() as cur,
        pytest.raises(MissingTable, match=rf"table {db}\.nope does not exist"),
    ):
        describe(cur, db, "nope", mariadb=not srv.mysql)
