"""A replica database for the ``mysql`` handler's tests, and comparing it with the source."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pymysql

from agents.mysql_sql import quote
from tests.support.stack import wait_until
from tests.support.workers import Worker

SCHEMA = {
    "items": "id INT PRIMARY KEY, name VARCHAR(40), qty INT",
    "order_lines": (
        "order_id INT, line INT, sku VARCHAR(20) CHARACTER SET latin1, amount DECIMAL(10,2),"
        " PRIMARY KEY (order_id, line)"
    ),
    "log": "at DATETIME(6), msg VARCHAR(50), n INT",
    "wide": (
        "id BIGINT UNSIGNED PRIMARY KEY, d DECIMAL(65,30), f FLOAT, g DOUBLE,"
        " dt DATETIME(6), ts TIMESTAMP(4) NULL DEFAULT NULL, tm TIME(6), da DATE, y YEAR,"
        " zd DATE, zdt DATETIME, b1 BIT(1), b13 BIT(13), b64 BIT(64),"
        " e ENUM('a','b','c'), s SET('x','y','z'), j JSON,"
        " bl BLOB, bi BINARY(4), vb VARBINARY(10), emoji VARCHAR(20) CHARACTER SET utf8mb4,"
        " l1 VARCHAR(20) CHARACTER SET latin1, gb VARCHAR(20) CHARACTER SET gbk,"
        " u2 VARCHAR(20) CHARACTER SET ucs2, geo GEOMETRY, n INT, t TEXT"
    ),
}


def create_schema(connect: dict[str, Any], database: str, schema: dict[str, str]) -> None:
    with pymysql.connect(**connect, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {database} CHARACTER SET utf8mb4")
        for table, columns in schema.items():
            cur.execute(f"CREATE TABLE {database}.{table} ({columns})")


def rows_of(connect: dict[str, Any], database: str) -> dict[str, Any]:
    """Every table's rows, sorted by all columns, and its CHECKSUM TABLE."""
    found: dict[str, Any] = {}
    with pymysql.connect(**connect, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
            " AND TABLE_NAME != 'aesop_offsets'",  # the handler's own, in the destination
            (database,),
        )
        for (table,) in cur.fetchall():
            cur.execute(f"SELECT * FROM {database}.{quote(table)}")
            rows = sorted(cur.fetchall(), key=lambda row: [(v is not None, str(v)) for v in row])
            cur.execute(f"CHECKSUM TABLE {database}.{quote(table)}")
            found[table] = (rows, cur.fetchone()[1])
    return found


def assert_converges(
    source: tuple[dict[str, Any], str], destination: tuple[dict[str, Any], str], timeout: float
) -> dict[str, Any]:
    """Wait until every destination table equals its source table; fail with the difference."""
    last: list[Any] = []

    def same() -> bool:
        want, got = rows_of(*source), rows_of(*destination)
        last[:] = [want, got]
        return want == got

    try:
        wait_until(same, timeout, "the destination to equal the source", every=0.5)
    except AssertionError:
        want, got = last
        for table in sorted(set(want) | set(got)):
            (source_rows, source_sum), (replica_rows, replica_sum) = (
                want.get(table, ([], None)),
                got.get(table, ([], None)),
            )
            only_source = Counter(map(repr, source_rows)) - Counter(map(repr, replica_rows))
            only_replica = Counter(map(repr, replica_rows)) - Counter(map(repr, source_rows))
            assert got.get(table) == want.get(table), (
                f"table {table} differs: only in the source {sorted(only_source.elements())[:10]}"
                f", only in the replica {sorted(only_replica.elements())[:10]}"
                f"; CHECKSUM TABLE {source_sum} and {replica_sum}"
            )
        raise
    return last[0]  # type: ignore[no-any-return]


def consumer_toml(name: str, topic: str, url: str) -> str:
    return (
        f'\n[[consumer]]\nname = "{name}"\ntopics = ["{topic}"]\nhandler = "mysql"\n'
        f'mysql = "{url}"\n'
    )


def retry_lines(worker: Worker, consumer: str) -> list[str]:
    return [
        line
        for line in worker.log().splitlines()
        if f"consumer {consumer}: " in line and "; retrying in " in line
    ]
