"""``aesop snapshot SOURCE DB.TABLE... [--wait]``: ask a running relay for an incremental
snapshot, through the source's signal table.

The request is a row in the source server's signal table (``[[source]] signal_table``,
default ``aesop.signals``; Debezium's signal format: ``id``, ``type`` "execute-snapshot",
``data`` {"data-collections": [...], "source": name}), so it reaches the relay through the
binlog, in order with the changes, and survives any restart of the relay. Any client that can
write that row can ask the same. Everything that can be checked first is, so that a refused
request leaves nothing behind: the tables (included by the source, existing, readable by its
user), a relay reading the source (a fresh heartbeat in ZooKeeper) and no snapshot under way.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

import orjson

from app.errors import AesopError
from app.settings import Settings, SourceSettings
from tables.mirrored import Mirrored
from tables.positions import Checkpoint, scn_of

WAIT_EVERY_S = 1.0
SIGNAL_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} (id VARCHAR(64) PRIMARY KEY,"
    " type VARCHAR(32) NOT NULL, data TEXT NOT NULL) CHARACTER SET utf8mb4"
)


class Refused(AesopError):
    """A snapshot request that cannot be taken; nothing was written."""

    exit_code = 2


def request(settings: Settings, source_name: str, names: list[str], mirrored: Mirrored) -> str:
    """Check the request, write its signal row; return the server's binlog position after it
    (``file:pos``), which the relay passes once it took the request."""
    import pymysql

    from relay.binlog_status import binary_log_status
    from relay.include import TableFilter
    from relay.snapshot import SIGNAL_TYPE
    from relay.snapshot_rows import quote

    source = _source(settings, source_name)
    tables = [_table(source, name, TableFilter.of(source)) for name in names]
    _check_running(settings, source, mirrored)
    url = source.mysql
    args = {k: v for k, v in url.connect_args().items() if k != "database"}
    try:
        conn = pymysql.connect(**args, connect_timeout=5, autocommit=True)
    except pymysql.MySQLError as exc:
        raise Refused(f"source {source.name!r}: cannot connect to {url} ({exc.args[-1]})") from None
    with conn, conn.cursor() as cur:
        for db, table in tables:
            _check_readable(cur, source, db, table)
        signal_db, signal_table = source.signal_table
        signals = f"{quote(signal_db)}.{quote(signal_table)}"
        data = {"data-collections": [f"{db}.{t}" for db, t in tables], "source": source.name}
        try:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote(signal_db)}")
            cur.execute(SIGNAL_DDL.format(table=signals))
            cur.execute(
                f"INSERT INTO {signals} (id, type, data) VALUES (%s, %s, %s)",
                (uuid.uuid4().hex, SIGNAL_TYPE, orjson.dumps(data).decode()),
            )
        except pymysql.MySQLError as exc:
            raise Refused(
                f"source {source.name!r}: cannot write the snapshot request to {signal_db}."
                f"{signal_table} as {url.user} ({exc.args[-1]}); grant that user CREATE and "
                "INSERT on it, or create it and point signal_table at a table it may write"
            ) from None
        status = binary_log_status(cur)
        if status is None:
            raise Refused(f"source {source.name!r}: the server has binary logging off")
        file, pos = status[:2]
    return f"{file}:{pos}"


def wait(settings: Settings, source_name: str, after: str, read: Any, timeout: float) -> None:
    """Until the relay's checkpoint passed ``after`` with no snapshot left under way."""
    file, _, pos = after.rpartition(":")
    target = scn_of(file, int(pos))
    deadline = time.monotonic() + timeout
    while True:
        stored = read().relays.get(source_name)
        if stored is not None:
            checkpoint = Checkpoint.from_json(stored)
            if scn_of(checkpoint.file, checkpoint.pos) >= target and checkpoint.snapshot is None:
                return
        if time.monotonic() > deadline:
            raise AesopError(
                f"source {source_name!r}: the snapshot is not done after {timeout:g}s; it goes "
                "on in the relay (aesop lag shows its progress)"
            )
        time.sleep(WAIT_EVERY_S)


def _source(settings: Settings, name: str) -> SourceSettings:
    try:
        return settings.source(name)
    except KeyError:
        known = ", ".join(s.name for s in settings.sources) or "none"
        raise Refused(f"no [[source]] named {name!r} in {settings.path} (known: {known})") from None


def _table(source: SourceSettings, name: str, wants: Any) -> tuple[str, str]:
    db, dot, table = name.partition(".")
    if not (db and dot and table):
        raise Refused(f"{name!r} is not db.table")
    if not wants(db, table):
        raise Refused(
            f"source {source.name!r} does not publish {name} (include/exclude); add it to "
            "include, restart the workers, then ask again"
        )
    return db, table


def _check_running(settings: Settings, source: SourceSettings, mirrored: Mirrored) -> None:
    if not settings.zookeeper_enabled:
        return  # nothing to tell a running relay by; the request waits in the binlog
    beat = mirrored.heartbeats.get(source.name)
    age = None if beat is None else time.time() - beat["ts_ms"] / 1000
    if age is None or age > settings.lag.unread_seconds:
        seen = "never" if age is None else f"{age:.0f}s ago"
        raise Refused(
            f"no worker runs the relay of source {source.name!r} (its last heartbeat: {seen}); "
            "start a worker (aesop worker), then ask again"
        )
    stored = mirrored.relays.get(source.name)
    running = None if stored is None else Checkpoint.from_json(stored).snapshot
    if running is not None:
        left = ", ".join(f"{db}.{t}" for db, t in running.tables)
        raise Refused(
            f"source {source.name!r}: an {running.kind} snapshot is under way ({left} left); "
            "wait for it to finish (aesop lag shows it), then ask again"
        )


def _check_readable(cur: Any, source: SourceSettings, db: str, table: str) -> None:
    import pymysql

    from relay.snapshot_rows import quote

    cur.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
        " AND TABLE_NAME = %s AND TABLE_TYPE = 'BASE TABLE'",
        (db, table),
    )
    if not cur.fetchone()[0]:
        raise Refused(
            f"source {source.name!r}: table {db}.{table} does not exist (or {source.mysql.user} "
            "has no privilege on it)"
        )
    try:
        cur.execute(f"SELECT 1 FROM {quote(db)}.{quote(table)} LIMIT 0")
    except pymysql.MySQLError as exc:
        raise Refused(
            f"source {source.name!r}: {source.mysql.user} cannot read {db}.{table} "
            f"({exc.args[-1]}); GRANT SELECT ON {db}.{table} TO that user"
        ) from None


def print_accepted(source: str, names: list[str], after: str) -> None:
    print(f"ok: source {source!r}: snapshot of {', '.join(names)} requested (in the binlog "
          f"before {after})")  # fmt: skip
    sys.stdout.flush()
