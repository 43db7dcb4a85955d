"""SQL on the stack's MariaDB, and the server's own listing of its binlog (an oracle)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pymysql

from app.settings import MySQLURL
from relay.binlog_status import binary_log_status


def mysql_url(database: str | None = None) -> MySQLURL:
    # The cluster test (bench/cluster.py) points the soak's load and checks at its MariaDB
    # host: AESOP_TEST_MYSQL=host:port:user:password.
    spec = os.environ.get("AESOP_TEST_MYSQL")
    if spec:
        host, port, user, password = spec.split(":", 3)
        return MySQLURL(host, int(port), user, password, database)
    return MySQLURL("127.0.0.1", 3306, "root", "", database)


def sql(*statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
    """Run statements (autocommit) and return the last one's rows."""
    with pymysql.connect(**mysql_url(database).connect_args(), autocommit=True) as conn:
        rows: list[tuple[Any, ...]] = []
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
        return rows


def master_position() -> str:
    with pymysql.connect(**mysql_url().connect_args()) as conn, conn.cursor() as cur:
        file, pos = binary_log_status(cur)[:2]
    return f"{file}:{pos}"


@dataclass(frozen=True)
class BinlogRows:
    """One rows event of a test's database, as SHOW BINLOG EVENTS lists it."""

    file: str
    pos: int
    op: str
    db: str
    table: str
    gtid: str | None

    @property
    def scn(self) -> int:
        return int(self.file.rsplit(".", 1)[1]) << 32 | self.pos


@dataclass
class BinlogTransaction:
    """A transaction (or DDL) after a start position: its GTID, rows events and end."""

    gtid: str | None
    rows: list[BinlogRows] = field(default_factory=list)
    end: tuple[str, int] | None = None


ROWS_EVENTS = {"Write_rows": "c", "Update_rows": "u", "Delete_rows": "d"}


def binlog_transactions(
    start: str, database: str, run: Callable[..., list[tuple[Any, ...]]] = sql
) -> list[BinlogTransaction]:
    """The committed transactions since ``start`` with rows events of ``database``'s tables.

    An oracle independent of the relay: the server's own listing of its binlog (``run``:
    SQL on the server, the stack's MariaDB by default).
    """
    file, _, pos = start.rpartition(":")
    files = [row[0] for row in run("SHOW BINARY LOGS")]
    tables: dict[str, tuple[str, str]] = {}
    found: list[BinlogTransaction] = []
    txn = BinlogTransaction(None)
    for name in files[files.index(file) :]:
        offset = f" FROM {pos}" if name == file else ""
        for _, at, kind, _, end, info in run(f"SHOW BINLOG EVENTS IN '{name}'{offset}"):
            if kind == "Gtid" and "GTID_NEXT" in info:
                # MySQL: "SET @@SESSION.GTID_NEXT= '<uuid>:<n>'".
                txn = BinlogTransaction(info.split("'")[1])
            elif kind == "Gtid":
                # "BEGIN GTID 0-1-57", "GTID 0-1-58" (DDL); a group commit adds " cid=N".
                words = info.split()
                txn = BinlogTransaction(words[words.index("GTID") + 1])
            elif kind == "Table_map":
                table_id = info.split()[1]
                db, _, table = info[info.index("(") + 1 : info.rindex(")")].partition(".")
                tables[table_id] = (db, table)
            elif kind.removesuffix("_v1") in ROWS_EVENTS:  # MariaDB "Write_rows_v1"
                db, table = tables[info.split()[1]]
                if db == database:
                    op = ROWS_EVENTS[kind.removesuffix("_v1")]
                    txn.rows.append(BinlogRows(name, at, op, db, table, txn.gtid))
            elif kind == "Xid" or (kind == "Query" and not info.startswith(("BEGIN", "SAVEPOINT"))):
                txn.end = (name, end)
                if txn.rows:
                    found.append(txn)
                txn = BinlogTransaction(None)
    return found


def server_id() -> int:
    """A replica server id no other test (or developer) is likely to present."""
    return 6000 + random.randrange(10**8)


def in_one_transaction(
    database: str, *statements: str, connect: dict[str, Any] | None = None
) -> None:
    """Run statements in one transaction in ``database`` on the stack's MariaDB, or where
    ``connect`` (pymysql's arguments) logs in."""
    args = connect or mysql_url(database).connect_args()
    with pymysql.connect(**args, autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for statement in statements:
                cur.execute(statement)
        conn.commit()
