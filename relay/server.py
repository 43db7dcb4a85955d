"""What a source server says about itself: settings, privileges, binlog files; blocking calls.

Each check raises a SourceError whose message names the source and says what to change.
Call these from a thread (``asyncio.to_thread``) when on the event loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql

from app.errors import PositionLostError, SourceError
from app.settings import SourceSettings
from relay.position import Checkpoint, Position

REQUIRED = (
    ("log_bin", "ON", "binary logging is off; start the server with log-bin=mysql-bin"),
    ("binlog_format", "ROW", "binlog_format is {value}; set binlog_format=ROW and restart"),
    (
        "binlog_row_image",
        "FULL",
        "binlog_row_image is {value}; set binlog_row_image=FULL and restart",
    ),
    (
        "binlog_row_metadata",
        "FULL",
        "binlog_row_metadata is {value}; set binlog_row_metadata=FULL and restart "
        "(MariaDB 10.5+ or MySQL 8.0.14+)",
    ),
)
GLOBAL_GRANT = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)
# MariaDB 10.5+ shows REPLICATION CLIENT as BINLOG MONITOR, and MySQL 8 adds REPLICA names.
CLIENT_PRIVILEGES = ("REPLICATION CLIENT", "BINLOG MONITOR", "SUPER")
SLAVE_PRIVILEGES = ("REPLICATION SLAVE", "REPLICATION REPLICA")


@contextmanager
def connect(source: SourceSettings) -> Iterator[pymysql.connections.Connection]:
    url = source.mysql
    try:
        conn = pymysql.connect(**url.connect_args(), connect_timeout=5, read_timeout=30)
    except pymysql.err.OperationalError as exc:
        raise SourceError(f"source {source.name!r}: {describe(exc, source)}") from None
    try:
        yield conn
    finally:
        conn.close()


def describe(exc: pymysql.err.MySQLError, source: SourceSettings) -> str:
    """A one-line, actionable reading of a pymysql error."""
    code = exc.args[0] if exc.args else None
    message = exc.args[1] if len(exc.args) > 1 else str(exc)
    url = source.mysql
    if code in (2003, 2005, 2006, 2013):
        return f"cannot reach MySQL at {url.host}:{url.port} ({message}); is it running?"
    if code == 1045:
        return f"access denied for {url.user!r} at {url.host}:{url.port}; check user/password"
    return f"MySQL error {code}: {message}"


def _variables(conn: pymysql.connections.Connection) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
            "('log_bin','binlog_format','binlog_row_image','binlog_row_metadata',"
            "'log_bin_compress','binlog_row_value_options','version')"
        )
        return {name.lower(): str(value) for name, value in cur.fetchall()}


def _global_grants(conn: pymysql.connections.Connection) -> set[str]:
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS FOR CURRENT_USER()")
        grants: set[str] = set()
        for (line,) in cur.fetchall():
            match = GLOBAL_GRANT.match(line)
            if match:
                grants.update(p.strip().upper() for p in match.group(1).split(","))
        return grants


def binary_logs(conn: pymysql.connections.Connection) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [row[0] for row in cur.fetchall()]


def current_position(conn: pymysql.connections.Connection) -> Position:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    if not row:
        raise SourceError("SHOW MASTER STATUS is empty: binary logging is off")
    return Position(row[0], int(row[1]))


def check_server(source: SourceSettings, conn: pymysql.connections.Connection) -> None:
    """Binlog settings and privileges; raises SourceError naming what to fix."""
    found = _variables(conn)
    for name, wanted, message in REQUIRED:
        value = found.get(name, "missing")
        if value.upper() != wanted:
            raise SourceError(f"source {source.name!r}: " + message.format(value=value))
    if found.get("log_bin_compress", "OFF").upper() == "ON":
        raise SourceError(
            f"source {source.name!r}: log_bin_compress is ON; compressed row events cannot "
            "be decoded: set log_bin_compress=OFF"
        )
    if found.get("binlog_row_value_options", ""):
        raise SourceError(
            f"source {source.name!r}: binlog_row_value_options is "
            f"{found['binlog_row_value_options']}; set it to '' (partial JSON updates lose "
            "the full row)"
        )
    grants = _global_grants(conn)
    if "ALL PRIVILEGES" in grants:
        return
    if not grants.intersection(SLAVE_PRIVILEGES):
        raise SourceError(
            f"source {source.name!r}: user {source.mysql.user!r} lacks REPLICATION SLAVE; "
            f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO it"
        )
    if not grants.intersection(CLIENT_PRIVILEGES):
        raise SourceError(
            f"source {source.name!r}: user {source.mysql.user!r} lacks REPLICATION CLIENT; "
            f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO it"
        )


def check_position(
    source: SourceSettings, conn: pymysql.connections.Connection, position: Position
) -> None:
    files = binary_logs(conn)
    if position.file not in files:
        raise PositionLostError(
            f"source {source.name!r}: binlog {position.file} (the checkpoint) is no longer on "
            f"the server (oldest is {files[0] if files else 'none'}); changes after it are "
            f"lost to aesop: keep binlogs longer (expire_logs_days), re-sync the consumers, "
            "and delete the checkpoint to restart from 'start'"
        )


def starting_checkpoint(source: SourceSettings, conn: pymysql.connections.Connection) -> Checkpoint:
    """Where a source with no checkpoint starts, per its ``start`` setting."""
    start = source.start
    if start == "earliest":
        files = binary_logs(conn)
        if not files:
            raise SourceError(f"source {source.name!r}: the server lists no binary logs")
        return Checkpoint.at(Position(files[0], 4))
    if start == "latest":
        return Checkpoint.at(current_position(conn))
    if start.startswith("gtid:"):
        raise SourceError(
            f"source {source.name!r}: start = {start!r}: GTID starts are not supported yet; "
            "use earliest, latest or 'file:pos'"
        )
    return Checkpoint.at(Position.parse(start))


def preflight(source: SourceSettings, checkpoint: Checkpoint | None) -> Checkpoint:
    """Check the server and the position; return where to start reading."""
    with connect(source) as conn:
        try:
            check_server(source, conn)
            chosen = checkpoint or starting_checkpoint(source, conn)
            check_position(source, conn, chosen.position)
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"source {source.name!r}: {describe(exc, source)}") from None
    return chosen
