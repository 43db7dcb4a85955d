"""A writer of numbered rows, and the check that each was published exactly once."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pymysql

from tests.support.kafka import identities
from tests.support.mysql import mysql_url, sql
from tests.support.servers import ServerDatabase
from tests.support.stack import wait_until


class Writer(threading.Thread):
    """Inserts rows numbered 1, 2, 3... in small transactions until told to stop."""

    def __init__(
        self, database: str, limit: int = 20_000, connect: dict[str, Any] | None = None
    ) -> None:
        """Writes into ``database`` on the stack's MariaDB, or where ``connect`` (pymysql's
        arguments) logs in."""
        super().__init__(name="writer", daemon=True)
        self.database = database
        self.connect = connect or mysql_url(database).connect_args()
        self.limit = limit
        self.written = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with pymysql.connect(**self.connect) as conn:
                cur = conn.cursor()
                while not self._halt.is_set() and self.written < self.limit:
                    rows = random.randint(1, 4)
                    numbers = range(self.written + 1, self.written + rows + 1)
                    cur.execute(
                        "INSERT INTO numbers (n, pad) VALUES "
                        + ", ".join(f"({n}, 'row {n}')" for n in numbers)
                    )
                    conn.commit()
                    self.written += rows
                    time.sleep(0.005)
        except BaseException as exc:
            self.error = exc

    def write_more(self, rows: int, timeout: float = 60.0) -> None:
        """Return once ``rows`` more rows are committed: load by amount, not by time."""
        target = self.written + rows
        wait_until(
            lambda: self.written >= target or not self.is_alive(), timeout, f"{rows} more rows"
        )
        assert self.error is None, self.error
        assert self.written >= target, f"the writer stopped at {self.written} rows"

    def finish(self) -> int:
        self._halt.set()
        self.join(30)
        assert not self.is_alive() and self.error is None, self.error
        return self.written


def create_numbers(database: str | ServerDatabase) -> None:
    """The ``numbers`` table, in a database of the stack's MariaDB or a matrix server's."""
    ddl = "CREATE TABLE numbers (n INT PRIMARY KEY, pad VARCHAR(50))"
    if isinstance(database, ServerDatabase):
        database.sql(ddl)
    else:
        sql(ddl, database=database)


def assert_exactly_once(messages: list[dict[str, Any]], written: int) -> None:
    ids = identities(messages)
    duplicates = [ident for ident, count in Counter(ids).items() if count > 1]
    assert not duplicates, f"{len(duplicates)} (scn, row) published twice, e.g. {duplicates[:3]}"
    numbers = sorted(m["value"]["after"]["n"] for m in messages)
    missing = sorted(set(range(1, written + 1)) - set(numbers))
    assert not missing, f"{len(missing)} rows never published, e.g. {missing[:5]}"
    assert numbers == list(range(1, written + 1))
