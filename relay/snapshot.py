"""Snapshots while streaming: each table read in key-ordered chunks between binlog watermarks.

The reader thread runs a snapshot alongside the binlog, one chunk at a time, at transaction
boundaries of the stream:

1. ``low``: the server's binlog position (``SHOW BINARY LOG STATUS``, or ``SHOW MASTER STATUS``);
2. the next chunk of rows, ``SELECT ... WHERE key > last ORDER BY key LIMIT n``;
3. ``high``: the server's binlog position again.

The SELECT saw the table as it was at some moment between ``low`` and ``high``. The reader
goes on streaming, and drops from the chunk every row that a rows event between ``low`` and
``high`` changed (inserted, updated or deleted): that change is published in binlog order and
carries a value at least as new as the SELECT's. When the stream reaches a transaction
boundary at or past ``high``, the rest of the chunk is published there, as ``op: "r"`` events:
each is the row's value as of ``high``, and every later change of the row comes after it. This
is DBLog's watermark algorithm with binlog positions as the watermarks, so the source needs no
write access; no lock is taken.

A table without a primary key has no key to drop rows by: it is read whole in one SELECT (so
its rows are held in memory, once), and read again if any of its rows changed between the two
watermarks, up to ``KEYLESS_ATTEMPTS`` times.

The events of a chunk get the SCN of the boundary they are published at (no rows event starts
there: a transaction's first event is its GTID or BEGIN) and rows numbered on from the last
event published at that SCN, so ``(scn, row)`` stays increasing and unique. Progress (the
tables left, the last key read of the first) travels with the batch that publishes the chunk,
and reaches the checkpoint once Kafka acknowledged it; a snapshot interrupted anywhere reads
again from the last acknowledged chunk.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pymysql

from app.change_event import key_prefix
from app.errors import DecodeError, SourceError
from app.settings import SourceSettings
from relay import binlog_status
from relay.include import TableFilter
from relay.snapshot_rows import (
    FRESH_STATISTICS,
    SESSION,
    MissingTable,
    SnapshotTable,
    describe,
    estimated_rows,
)
from tables.positions import SnapshotProgress, TableGlobs, scn_of

log = logging.getLogger(__name__)

KEYLESS_ATTEMPTS = 10
INITIAL = "initial"
INCREMENTAL = "incremental"

_TABLES_SQL = (
    "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES"
    " WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_SCHEMA, TABLE_NAME"
)


def included_tables(cursor: Any, source: SourceSettings) -> tuple[tuple[str, str], ...]:
    """Every base table the source publishes, in name order."""
    wants = TableFilter.of(source)
    cursor.execute(_TABLES_SQL)
    return tuple((str(db), str(t)) for db, t in cursor.fetchall() if wants(str(db), str(t)))


def newly_included(
    cursor: Any, source: SourceSettings, before: TableGlobs
) -> tuple[tuple[str, str], ...]:
    """The base tables the source publishes now that its globs ``before`` left out."""
    was = TableFilter(*before)
    return tuple(t for t in included_tables(cursor, source) if not was(*t))


def queued(
    progress: SnapshotProgress | None, tables: Iterable[tuple[str, str]]
) -> tuple[SnapshotProgress | None, tuple[tuple[str, str], ...]]:
    """``progress`` with ``tables`` queued after what it holds (an incremental snapshot when
    none is under way), and the tables that were not queued already."""
    have = set() if progress is None else set(progress.tables)
    added = tuple(dict.fromkeys(t for t in tables if t not in have))
    if not added:
        return progress, added
    if progress is None:
        return SnapshotProgress(INCREMENTAL, added), added
    return replace(progress, tables=progress.tables + added), added


SIGNAL_TYPE = "execute-snapshot"


def snapshot_request(
    source: SourceSettings, row: dict[str, Any], wants: Callable[[str, str], bool]
) -> list[tuple[str, str]]:
    """The tables a signal row asks this source to snapshot (Debezium's signal format: ``id``,
    ``type`` "execute-snapshot", ``data`` {"data-collections": ["db.table", ...]}, and aesop's
    optional "source": the source's name, for a server several sources read). A malformed
    row, or a table this source does not publish, is logged and left out."""
    if row.get("type") != SIGNAL_TYPE:
        return []
    try:
        data = orjson.loads(row.get("data") or "")
        names = data["data-collections"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TypeError
    except (orjson.JSONDecodeError, KeyError, TypeError):
        log.warning("relay %s: signal %r is not a snapshot request (data %r); ignored",
                    source.name, row.get("id"), row.get("data"))  # fmt: skip
        return []
    if data.get("source") not in (None, source.name):
        return []
    tables = []
    for name in names:
        db, dot, table = name.partition(".")
        if dot and wants(db, table):
            tables.append((db, table))
        else:
            log.warning("relay %s: signal %r: %s is not a table this source publishes; left out",
                        source.name, row.get("id"), name)  # fmt: skip
    return tables


def stored_key(raw: Any) -> tuple[Any, ...]:
    """A fetched key (text, or bytes for binary columns) in the checkpoint's JSON form."""
    return tuple(
        {"b64": base64.b64encode(v).decode("ascii")} if isinstance(v, bytes) else v for v in raw
    )


def fetched_key(stored: Any) -> list[Any]:
    """The checkpoint's form back as query arguments."""
    return [base64.b64decode(v["b64"]) if isinstance(v, dict) else v for v in stored]


@dataclass
class Chunk:
    """One chunk read between ``low`` and ``high`` (SCNs), waiting for the stream to pass
    ``high``: its rows by message key, in key order."""

    table: SnapshotTable
    low: int
    high: int
    rows: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # by key: keyed tables
    keyless: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)  # the others
    last_key: tuple[Any, ...] | None = None  # the last fetched key (stored form)
    more: bool = False  # a full chunk: the table may have more rows
    changed: bool = False  # a keyless table changed between the watermarks
    read_ms: int = 0
    estimate: int | None = None  # the table's rows, as the server estimates them


@dataclass
class Published:
    """A chunk's rows to publish, and the progress once they are acknowledged."""

    table: SnapshotTable
    rows: list[tuple[bytes, dict[str, Any]]]
    last_of_table: bool
    progress: SnapshotProgress | None
    read_ms: int


class Snapshotter:
    """Runs one source's snapshot on its reader thread (the calls block: never on the loop)."""

    def __init__(
        self,
        source: SourceSettings,
        progress: SnapshotProgress,
        chunk_rows: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.progress: SnapshotProgress | None = progress
        self.chunk_rows = chunk_rows
        self.clock = clock
        self.chunk: Chunk | None = None
        self.server_id = 0
        self._conn: Any = None
        self._mariadb = False
        self._shapes: dict[tuple[str, str], SnapshotTable] = {}
        self._attempts = 0

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- the stream's side ---------------------------------------------------------------

    def watching(self, db: str, table: str, scn: int) -> bool:
        """Must the rows of this rows event be shown to ``drop``?"""
        chunk = self.chunk
        return (
            chunk is not None
            and chunk.low <= scn < chunk.high
            and chunk.table.table == table
            and chunk.table.db == db
        )

    def drop(self, key: bytes) -> None:
        """A row of the chunk's table changed between the watermarks."""
        chunk = self.chunk
        assert chunk is not None
        if chunk.table.keyed:
            chunk.rows.pop(key, None)
        else:
            chunk.changed = True

    def ready(self, boundary_scn: int) -> bool:
        """Is a chunk waiting whose ``high`` the stream has reached?"""
        return self.chunk is not None and boundary_scn >= self.chunk.high

    # -- reading -------------------------------------------------------------------------

    def read_chunk(self) -> bool:
        """Read the next chunk between two watermarks; False when nothing is left to read."""
        progress = self.progress
        if progress is None or not progress.tables:
            return False
        db, table = progress.tables[0]
        conn = self._connection()
        with conn.cursor() as cur:
            try:
                shape = self._shape(cur, db, table)
            except MissingTable as exc:
                # Dropped since the snapshot was asked for: nothing of it to read.
                log.warning("relay %s: %s; going on with the next table", self.source.name, exc)
                at = self._binlog_scn(cur)
                self.chunk = Chunk(SnapshotTable(db, table, (), (), (), ""), at, at)
                return True
            estimate = progress.estimate
            if estimate is None:
                estimate = estimated_rows(cur, db, table)
            low = self._binlog_scn(cur)
            if shape.keyed:
                after = None if progress.after is None else fetched_key(progress.after)
                sql, args = shape.chunk_sql(after, self.chunk_rows)
            else:
                sql, args = shape.chunk_sql(None, 0)
            cur.execute(sql, args)
            fetched = cur.fetchall()
            high = self._binlog_scn(cur)
        chunk = Chunk(shape, low, high, read_ms=int(self.clock() * 1000), estimate=estimate)
        head = key_prefix(db, table)
        if shape.keyed:
            for raw in fetched:
                row = shape.row(raw)
                key = {name: row[name] for name in shape.pk}
                chunk.rows[head + orjson.dumps(key) + b"}"] = row
        else:
            key_bytes = head + b"null}"
            chunk.keyless = [(key_bytes, shape.row(raw)) for raw in fetched]
        if shape.keyed and fetched:
            chunk.last_key = stored_key(shape.key_of(fetched[-1]))
            chunk.more = len(fetched) >= self.chunk_rows
        self.chunk = chunk
        return True

    def take(self) -> Published | None:
        """The waiting chunk, now that the stream passed its ``high``: what to publish, and
        the progress after it. None when a keyless table changed meanwhile (read it again)."""
        chunk, progress = self.chunk, self.progress
        assert chunk is not None and progress is not None
        self.chunk = None
        if chunk.changed:
            self._attempts += 1
            if self._attempts >= KEYLESS_ATTEMPTS:
                raise DecodeError(
                    f"source {self.source.name!r}: snapshot of {chunk.table.db}."
                    f"{chunk.table.table} (no primary key, so read whole) found it changed "
                    f"during each of {KEYLESS_ATTEMPTS} reads; give it a primary key, or "
                    "snapshot it when it is quiet"
                )
            return None
        self._attempts = 0
        rows = list(chunk.rows.items()) if chunk.table.keyed else chunk.keyless
        done = progress.done + len(rows)
        total = progress.rows + len(rows)
        last_of_table = not chunk.more
        if last_of_table:
            log.info(
                "relay %s: snapshot of %s.%s done: %d rows",
                self.source.name, chunk.table.db, chunk.table.table, done,
            )  # fmt: skip
            rest = progress.tables[1:]
            after: SnapshotProgress | None = (
                SnapshotProgress(progress.kind, rest, None, 0, total) if rest else None
            )
            if after is None:
                log.info("relay %s: %s snapshot done: %d rows", self.source.name,
                         progress.kind, total)  # fmt: skip
        else:
            after = replace(
                progress, after=chunk.last_key, done=done, rows=total,
                chunks=progress.chunks + 1, estimate=chunk.estimate,
            )  # fmt: skip
        self.progress = after
        return Published(chunk.table, rows, last_of_table, after, chunk.read_ms)

    def _connection(self) -> Any:
        if self._conn is None:
            args = self.source.mysql.connect_args()
            args.pop("database", None)
            conn = pymysql.connect(
                **args, charset="utf8mb4", conv={}, autocommit=True, connect_timeout=5,
                read_timeout=600,
            )  # fmt: skip
            with conn.cursor() as cur:
                for statement in SESSION:
                    cur.execute(statement)
                cur.execute("SELECT @@server_id")
                (server_id,) = cur.fetchone()
                self._mariadb = "mariadb" in conn.get_server_info().lower()
                if not self._mariadb:
                    with contextlib.suppress(pymysql.MySQLError):  # MySQL before 8.0.3
                        cur.execute(FRESH_STATISTICS)
            self.server_id = int(server_id)
            self._conn = conn
        return self._conn

    def _shape(self, cur: Any, db: str, table: str) -> SnapshotTable:
        shape = self._shapes.get((db, table))
        if shape is None:
            shape = self._shapes[(db, table)] = describe(cur, db, table, self._mariadb)
        return shape

    @staticmethod
    def _binlog_scn(cur: Any) -> int:
        found = binlog_status.binary_log_status(cur)
        if not found:
            raise SourceError("snapshot: the server shows no binlog position (is log-bin on?)")
        file, pos = found[0], found[1]
        return scn_of(file.decode() if isinstance(file, bytes) else str(file), int(pos))
