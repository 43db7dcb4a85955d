"""``handler = "mysql"``: apply change events to a MySQL/MariaDB database, idempotently.

Each change lands in the table of the same name, in the database of the consumer's ``mysql``
URL (``mysql://user:pass@host:3306/replica``), or, when the URL names no database, in the
database of the same name as the source's. The destination tables must exist, with the
source's columns (more columns are fine: they keep their defaults).

- ``c``, ``u``, ``r``: an upsert by primary key (``INSERT ... ON DUPLICATE KEY UPDATE`` of
  every column); an update that changes the primary key deletes the old key first.
- ``d``: a delete by primary key.
- A table without a primary key (event ``key`` null): an update or delete removes one row
  equal to ``before`` in every column (``LIMIT 1``), an insert or update inserts ``after``.
  Re-applying such a change would leave a duplicate row: see the applied offsets below. Its
  snapshot (``r`` events, the whole table read at once) replaces the destination's rows: the
  first (``txn.seq`` 0) deletes them all, so a snapshot read again after a crash, or asked
  again later, leaves the table as the source had it, not its rows twice.

Values come back from their JSON forms losslessly, by the destination column's type (read
once per table from information_schema): base64 for binary strings, SET lists, JSON
documents (written compact), GEOMETRY from WKT; temporal strings as they are, in a session
with ``time_zone = '+00:00'`` (TIMESTAMP values are UTC) and a strict ``sql_mode`` that takes
zero dates (a value the destination cannot hold is refused, not truncated). Foreign key
checks are off in the session: changes of different tables travel in different partitions
and may arrive in another order than they were committed.

Exactly once, keyless tables included: when the URL names a database, each batch's
transaction also records, per partition, the offset, source and ``(scn, row)`` of its last
change in that database's ``aesop_offsets`` table (created if missing, or given the newer
columns; key: consumer, topic, partition). The consumer reads it when it takes a partition
and skips what is at or below that offset, and changes a relay re-published (at new offsets)
at or below that ``(scn, row)``, so a crash between applying a batch and recording its
position elsewhere never applies it twice. Each batch's transaction also locks its
partitions' rows of that table first and leaves out what they record as applied, so a
retry after a COMMIT whose answer was lost (the server may have committed) and a new owner
racing the earlier owner's last batch apply nothing twice either. Without a database in
the URL (or the right to create that table) a replay can duplicate rows of a table without
a primary key, and a warning says so once.

A batch is one transaction. When the destination refuses a change, the batch is rolled
back and re-applied change by change (a savepoint each) to find it: the changes before it
are committed, and it is dead-lettered. A lost or refused connection, a deadlock or a lock
wait timeout is transient: nothing of the batch is committed past the reported index, the
connection is dropped and the consumer retries. PyMySQL blocks, so every statement runs on
one thread of the handler's own, holding its one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pymysql

from agents.handlers import Applied, Change, EventFailed, Handler
from agents.mysql_sql import (
    DestinationError,
    Step,
    Table,
    quote,
    record_offsets_sql,
    statements,
    steps,
    table_of,
)
from app.settings import MySQLURL

log = logging.getLogger(__name__)

# Of aesop_offsets beside the offset: the last applied change's source and (scn, row).
POSITION_COLUMNS = (
    "source VARCHAR(190) CHARACTER SET utf8mb4 NULL, scn BIGINT NULL, scn_row INT NULL"
)

# Strict, so a value the destination cannot hold is an error rather than a silent truncation;
# without NO_ZERO_DATE / NO_ZERO_IN_DATE, so zero dates go through as the source had them.
SQL_MODE = "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION,ALLOW_INVALID_DATES"
SESSION = (
    "SET SESSION time_zone = '+00:00'",
    f"SET SESSION sql_mode = '{SQL_MODE}'",
    "SET SESSION foreign_key_checks = 0",
)
# Server and client error codes that say "not now" rather than "not this change".
TRANSIENT_CODES = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        1213,  # deadlock
        1927,  # connection killed (MariaDB)
        2003,  # cannot connect
        2006,  # server has gone away
        2013,  # lost connection during query
        2055,  # lost connection (OS error)
        4031,  # disconnected by the server for inactivity (MySQL)
    }
)
SCHEMA_CODES = frozenset({1054, 1146})  # unknown column, no such table: the cache may be stale
READ_TIMEOUT_S = 300

_MARIADB_JSON_COLUMNS_SQL = (
    "SELECT CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS"
    " WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s AND LEVEL = 'Column'"
    " AND CHECK_CLAUSE = CONCAT('json_valid(`', REPLACE(CONSTRAINT_NAME, '`', '``'), '`)')"
)


def already_applied(change: Change, held: Applied) -> bool:
    """Whether ``held``, a partition's last applied change, covers ``change``."""
    if change.offset <= held.offset:
        return True
    head = change.head
    if held.scn is None or held.source != head.source.name:
        return False
    return (head.scn, head.row) <= (held.scn, held.row or 0)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError | pymysql.err.InterfaceError):
        return True
    if isinstance(exc, pymysql.err.MySQLError) and exc.args:
        return exc.args[0] in TRANSIENT_CODES
    return False


class MySQLHandler(Handler):
    """Applies batches of changes to one destination server over one connection."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        url = self.consumer.mysql
        assert url is not None, "settings require mysql for handler = 'mysql'"
        self.url: MySQLURL = url
        self._executor: ThreadPoolExecutor | None = None
        self._conn: Any = None
        self._tables: dict[tuple[str, str], Table] = {}
        self._mariadb = True
        # Where each batch records its partitions' last offsets, in the same transaction
        # (None: no database in the URL, or the table could not be created).
        self._offsets: str | None = None
        self._warned_offsets = False

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"mysql-{self.consumer.name}")

    async def stop(self) -> None:
        if self._executor is not None:
            await self._run(self._disconnect)
            self._executor.shutdown(wait=False)
            self._executor = None

    async def apply(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        failed = await self._run(self._apply_all, changes)
        if failed is not None:
            index, exc, transient = failed
            raise EventFailed(index, exc, transient) from exc

    async def applied(self, topic: str, partition: int) -> Applied | None:
        return await self._run(self._read_applied, topic, partition)

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            await self.start()
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- on the handler's thread -------------------------------------------------------

    def _apply_all(self, changes: Sequence[Change]) -> tuple[int, BaseException, bool] | None:
        """Everything in one transaction; on a refusal, change by change to find it."""
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                done = self._fence(cur, changes)
                todo = [c for i, c in enumerate(changes) if i not in done] if done else changes
                for statement in self._statements(conn, todo):
                    cur.execute(statement)
                self._record_offsets(conn, cur, todo)
            conn.commit()
            return None
        except Exception as exc:
            if is_transient(exc):
                self._disconnect()
                return 0, exc, True
            self._rollback()
            if isinstance(exc, DestinationError) or (
                isinstance(exc, pymysql.err.MySQLError) and exc.args and exc.args[0] in SCHEMA_CODES
            ):
                self._tables.clear()  # the destination may have been altered since
        return self._apply_each(changes)

    def _apply_each(self, changes: Sequence[Change]) -> tuple[int, BaseException, bool] | None:
        index = 0
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                done = self._fence(cur, changes)
                for index, change in enumerate(changes):
                    if index in done:
                        continue
                    cur.execute("SAVEPOINT aesop_change")
                    try:
                        for statement in self._statements(conn, [change]):
                            cur.execute(statement)
                    except Exception as exc:
                        if is_transient(exc):
                            raise
                        cur.execute("ROLLBACK TO SAVEPOINT aesop_change")
                        self._record_offsets(
                            conn, cur, [c for i, c in enumerate(changes[:index]) if i not in done]
                        )
                        conn.commit()
                        return index, exc, False
                self._record_offsets(conn, cur, [c for i, c in enumerate(changes) if i not in done])
            conn.commit()
            return None
        except Exception as exc:
            # Transient, or the connection failed around the savepoints: nothing committed.
            self._disconnect()
            return 0, exc, True

    def _connection(self) -> Any:
        if self._conn is None:
            args = {k: v for k, v in self.url.connect_args().items() if k != "database"}
            conn = pymysql.connect(
                **args,
                charset="utf8mb4",
                autocommit=False,
                connect_timeout=10,
                read_timeout=READ_TIMEOUT_S,
                write_timeout=READ_TIMEOUT_S,
            )
            with conn.cursor() as cur:
                for statement in SESSION:
                    cur.execute(statement)
            self._mariadb = "mariadb" in conn.get_server_info().lower()
            self._offsets = self._offsets_table(conn)
            self._conn = conn
            log.info("consumer %s: connected to %s", self.consumer.name, self.url)
        return self._conn

    def _offsets_table(self, conn: Any) -> str | None:
        db = self.url.database
        why = "the consumer's mysql URL names no database"
        if db is not None:
            name = f"{quote(db)}.aesop_offsets"
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} (consumer VARCHAR(190) NOT NULL,"
                        " topic VARCHAR(249) NOT NULL, part INT NOT NULL,"
                        f" last_offset BIGINT NOT NULL, {POSITION_COLUMNS},"
                        " PRIMARY KEY (consumer, topic, part)) CHARACTER SET ascii"
                    )
                    cur.execute(
                        "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
                        " AND TABLE_NAME = 'aesop_offsets' AND COLUMN_NAME = 'scn'",
                        (db,),
                    )
                    if not cur.fetchone()[0]:  # made by an earlier aesop: offsets only
                        columns = ", ".join(f"ADD COLUMN {c}" for c in POSITION_COLUMNS.split(", "))
                        cur.execute(f"ALTER TABLE {name} {columns}")
                conn.commit()
                return name
            except pymysql.err.MySQLError as exc:
                why = f"cannot create {name} ({exc.args[-1]})"
        if not self._warned_offsets:
            self._warned_offsets = True
            log.warning(
                "consumer %s: %s: applied offsets are not kept in the destination, so a "
                "replay after a crash can duplicate rows of tables without a primary key",
                self.consumer.name, why,
            )  # fmt: skip
        return None

    def _fence(self, cur: Any, changes: Sequence[Change]) -> set[int]:
        """Lock the batch's partitions in ``aesop_offsets`` and return the indexes of the
        changes it already records as applied: at or below a partition's offset, or, of the
        same source, at or below its ``(scn, row)``.

        The consumer skips those already, by what it read when it took the partition; this
        holds inside the transaction, against what it cannot know: a COMMIT whose answer
        was lost with the connection (the server may have committed it: the retry must not
        apply it again) and an earlier owner of the partition whose last batch commits after
        the new owner read the table (the row lock orders the two transactions).
        """
        if self._offsets is None:
            return set()
        keys = sorted({(c.topic, c.partition) for c in changes})
        escape = cur.connection.escape
        wanted = " OR ".join(f"(topic = {escape(t)} AND part = {p})" for t, p in keys)
        cur.execute(
            f"SELECT topic, part, last_offset, source, scn, scn_row FROM {self._offsets}"
            f" WHERE consumer = {escape(self.consumer.name)} AND ({wanted}) FOR UPDATE"
        )
        recorded = {(t, p): Applied(o, src, scn, row) for t, p, o, src, scn, row in cur.fetchall()}
        if not recorded:
            return set()
        return {
            index for index, change in enumerate(changes)
            if (held := recorded.get((change.topic, change.partition))) is not None
            and already_applied(change, held)
        }  # fmt: skip

    def _record_offsets(self, conn: Any, cur: Any, changes: Sequence[Change]) -> None:
        if self._offsets is None:
            return
        sql = record_offsets_sql(self._offsets, self.consumer.name, changes, conn.escape)
        if sql is not None:
            cur.execute(sql)

    def _read_applied(self, topic: str, partition: int) -> Applied | None:
        conn = self._connection()
        if self._offsets is None:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT last_offset, source, scn, scn_row FROM {self._offsets}"
                    " WHERE consumer = %s AND topic = %s AND part = %s",
                    (self.consumer.name, topic, partition),
                )
                row = cur.fetchone()
            conn.commit()  # end the read's snapshot
        except Exception:
            self._disconnect()
            raise
        return None if row is None else Applied(*row)

    def _rollback(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except Exception:
            self._disconnect()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already gone: closing only tidies up
                conn.close()

    def _table(self, conn: Any, db: str, name: str) -> Table:
        table = self._tables.get((db, name))
        if table is not None:
            return table
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_SET_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (db, name),
            )
            rows = cur.fetchall()
            json_columns: set[str] = set()
            if self._mariadb:
                cur.execute(_MARIADB_JSON_COLUMNS_SQL, (db, name))
                json_columns = {column for (column,) in cur.fetchall()}
        table = self._tables[(db, name)] = table_of(db, name, rows, json_columns)
        return table

    def _statements(self, conn: Any, changes: Sequence[Change]) -> list[str]:
        found: list[Step] = steps(
            changes, lambda db, name: self._table(conn, db, name), self.url.database
        )
        return statements(found, conn.escape)
