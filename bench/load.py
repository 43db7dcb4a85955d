"""The MariaDB side of the benchmark: a 7-column table, a mixed load, a steady load, a big txn."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import pymysql

from relay.binlog_status import binary_log_status
from tests.support.mysql import mysql_url

COLUMNS = "id, n, big, name, amount, at, score"
TABLE_SQL = (
    "CREATE TABLE {db}.{table} ("
    " id BIGINT PRIMARY KEY, n INT NOT NULL, big BIGINT NOT NULL, name VARCHAR(64) NOT NULL,"
    " amount DECIMAL(12,2) NOT NULL, at DATETIME(6) NOT NULL, score DOUBLE NOT NULL"
    ") ENGINE=InnoDB"
)
# The share of each transaction's rows that are inserts, updates and deletes.
MIX = (0.60, 0.25, 0.15)
INSERT_SQL = "INSERT INTO {table} (" + COLUMNS + ") VALUES (%s, %s, %s, %s, %s, %s, %s)"


def connect(database: str | None = None, autocommit: bool = True) -> Any:
    return pymysql.connect(**mysql_url(database).connect_args(), autocommit=autocommit)


def create_database(db: str, tables: tuple[str, ...]) -> None:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
        for table in tables:
            cur.execute(TABLE_SQL.format(db=db, table=table))


def drop_database(db: str) -> None:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {db}")


def master_status() -> tuple[str, int]:
    with connect() as conn, conn.cursor() as cur:
        file, pos = binary_log_status(cur)[:2]
        return str(file), int(pos)


def _row(rng: random.Random, row_id: int, big: int | None = None) -> tuple[Any, ...]:
    name = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(8, 32)))
    day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    at = f"{day} 12:34:56.{rng.randrange(10**6):06d}"
    return (
        row_id,
        rng.randint(-(2**31), 2**31 - 1),
        rng.getrandbits(62) if big is None else big,
        name,
        f"{rng.randrange(10**9) / 100:.2f}",
        at,
        rng.random() * 1e6,
    )


def load_mixed(db: str, table: str, rows: int, txn_rows: int = 100) -> dict[str, int]:
    """Commit exactly ``rows`` row changes in transactions of ``txn_rows``; counts per op."""
    rng = random.Random(7)
    counts = {"insert": 0, "update": 0, "delete": 0, "transactions": 0}
    live: list[int] = []  # ids present, oldest first; deletes take from the front
    dead = 0  # live[:dead] are deleted
    next_id = 1
    insert_sql = INSERT_SQL.format(table=table)
    with connect(db, autocommit=False) as conn, conn.cursor() as cur:
        while (done := counts["insert"] + counts["update"] + counts["delete"]) < rows:
            size = min(txn_rows, rows - done)
            pool = len(live) - dead
            deletes = min(int(size * MIX[2]), pool // 2)
            updates = min(int(size * MIX[1]), pool - deletes)
            inserts = size - updates - deletes
            if deletes:
                doomed = live[dead : dead + deletes]
                dead += deletes
                cur.execute(f"DELETE FROM {table} WHERE id IN ({','.join(map(str, doomed))})")
                assert cur.rowcount == deletes, (cur.rowcount, deletes)
            if updates:
                picked = {live[rng.randrange(dead, len(live))] for _ in range(updates)}
                while len(picked) < updates:
                    picked.add(live[rng.randrange(dead, len(live))])
                cur.execute(
                    f"UPDATE {table} SET n = n + 1, amount = amount + 0.01, name = %s,"
                    f" at = NOW(6) WHERE id IN ({','.join(map(str, picked))})",
                    (f"updated-{done}",),
                )
                assert cur.rowcount == updates, (cur.rowcount, updates)
            fresh = list(range(next_id, next_id + inserts))
            next_id += inserts
            cur.executemany(insert_sql, [_row(rng, i) for i in fresh])
            live.extend(fresh)
            conn.commit()
            counts["insert"] += inserts
            counts["update"] += updates
            counts["delete"] += deletes
            counts["transactions"] += 1
    return counts


def insert_big_transaction(db: str, table: str, rows: int) -> float:
    """One INSERT ... SELECT of ``rows`` rows from MariaDB's sequence engine; its commit time."""
    with connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {table} ({COLUMNS}) SELECT seq, seq % 100000, seq * 7919,"
            " CONCAT('row-', seq, '-', MD5(seq)), seq / 100, NOW(6), seq * 0.5"
            f" FROM seq_1_to_{rows}"
        )
        assert cur.rowcount == rows, (cur.rowcount, rows)
        return time.time()


@dataclass
class SteadyLoad:
    """Inserts at ``rate`` rows/s in small autocommit transactions; ``big`` holds the
    statement's wall time in microseconds (just before the commit, so latency measured
    against it includes the commit itself)."""

    db: str
    table: str
    rate: float
    seconds: float
    rows: int = 0
    transactions: int = 0
    elapsed: float = 0.0
    max_behind: int = 0

    def run(self, stop: threading.Event) -> None:
        rng = random.Random(11)
        insert_sql = INSERT_SQL.format(table=self.table)
        with connect(self.db) as conn, conn.cursor() as cur:
            start = time.monotonic()
            while not stop.is_set():
                elapsed = time.monotonic() - start
                if elapsed >= self.seconds:
                    break
                due = min(int(self.rate * elapsed) + 1, int(self.rate * self.seconds))
                behind = due - self.rows
                if behind <= 0:
                    time.sleep(min(0.002, (self.rows + 1) / self.rate - elapsed))
                    continue
                self.max_behind = max(self.max_behind, behind)
                count = min(behind, 50)
                now_us = time.time_ns() // 1000
                batch = [_row(rng, self.rows + 1 + i, big=now_us) for i in range(count)]
                cur.executemany(insert_sql, batch)
                self.rows += count
                self.transactions += 1
            self.elapsed = time.monotonic() - start
