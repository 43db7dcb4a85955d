"""What a server says of its binlog, on MySQL 5.7 to 9 and MariaDB: blocking calls.

MySQL 8.2 renamed ``SHOW MASTER STATUS`` to ``SHOW BINARY LOG STATUS`` and 8.4 removed the
old name; MariaDB keeps ``SHOW MASTER STATUS`` (10.5.2+ also has ``SHOW BINLOG STATUS``)
and has no ``SHOW BINARY LOG STATUS``. Like python-mysql-replication, aesop sends the new
name and falls back to the old one on exactly the parse error (1064) a server without it
answers, so a server is never misread by its version string. ``SHOW BINARY LOGS`` and
``SHOW BINLOG EVENTS`` keep their names on every server.

GTIDs: MySQL has them with ``gtid_mode=ON``; MariaDB always logs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pymysql

from app.errors import SourceError
from app.gtids import MARIADB, MYSQL, GtidSet
from tables.positions import Position

ER_PARSE_ERROR = 1064
NEW_STATUS = "SHOW BINARY LOG STATUS"
OLD_STATUS = "SHOW MASTER STATUS"
EVENTS_PER_PAGE = 5000
# Gtid events as SHOW BINLOG EVENTS shows them.
_MYSQL_GTID_INFO = re.compile(r"GTID_NEXT\s*=\s*'([^']+)'")
_MARIADB_GTID_INFO = re.compile(r"GTID (\d+-\d+-\d+)")


def binary_log_status(cur: Any) -> tuple[Any, ...] | None:
    """The server's binlog status row (File, Position, ...), or None when logging is off."""
    try:
        cur.execute(NEW_STATUS)
    except pymysql.err.ProgrammingError as exc:
        if not exc.args or exc.args[0] != ER_PARSE_ERROR:
            raise
        cur.execute(OLD_STATUS)
    row = cur.fetchone()
    return None if row is None else tuple(row)


def flavour(conn: Any) -> str:
    return MARIADB if "mariadb" in conn.get_server_info().lower() else MYSQL


def gtids_on(conn: Any, kind: str) -> bool:
    """Does the server give every transaction a GTID? (MySQL: gtid_mode=ON.)"""
    if kind == MARIADB:
        return True
    with conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.gtid_mode")
        row = cur.fetchone()
    return row is not None and str(row[0]).upper() == "ON"


def current(conn: Any, kind: str, with_gtids: bool) -> Position:
    """The server's binlog end, with its executed GTID set when it has GTIDs."""
    with conn.cursor() as cur:
        row = binary_log_status(cur)
    if row is None:
        raise SourceError(f"{OLD_STATUS} is empty: binary logging is off")
    position = Position(str(row[0]), int(row[1]))
    if not with_gtids:
        return position
    if kind == MYSQL:
        # The same row holds the position and the set, so they agree.
        executed = str(row[4]) if len(row) > 4 and row[4] is not None else ""
        gtid_set = str(GtidSet.parse(executed, MYSQL))
    else:
        gtid_set = gtid_set_at(conn, kind, position)
    return Position(position.file, position.pos, None, gtid_set)


def events(conn: Any, file: str, start: int = 4) -> Iterator[tuple[int, str, int, str]]:
    """(pos, type, end_log_pos, info) of a binlog file's events from ``start``, page by page."""
    at = start
    while True:
        with conn.cursor() as cur:
            cur.execute(f"SHOW BINLOG EVENTS IN %s FROM {int(at)} LIMIT {EVENTS_PER_PAGE}", (file,))
            rows = cur.fetchall()
        for row in rows:
            yield int(row[1]), str(row[2]), int(row[4]), str(row[5] or "")
        if len(rows) < EVENTS_PER_PAGE or not int(rows[-1][4]):
            return
        at = int(rows[-1][4])


def _gtid_of(kind: str, event_type: str, info: str) -> str | None:
    if event_type != "Gtid":
        return None
    match = (_MYSQL_GTID_INFO if kind == MYSQL else _MARIADB_GTID_INFO).search(info)
    return match.group(1) if match and match.group(1) != "ANONYMOUS" else None


def header_set(conn: Any, kind: str, file: str) -> GtidSet:
    """The GTID state a binlog file starts from (MySQL Previous_gtids, MariaDB Gtid_list)."""
    wanted = "Previous_gtids" if kind == MYSQL else "Gtid_list"
    for _, event_type, _, info in events(conn, file):
        if event_type == wanted:
            return GtidSet.parse(info.strip().strip("[]"), kind)
        if event_type not in ("Format_desc", "Start_encryption"):
            break
    return GtidSet(kind)


def gtid_set_at(conn: Any, kind: str, position: Position) -> str:
    """The executed GTID set at a transaction boundary ``position``.

    MariaDB computes it (BINLOG_GTID_POS); on MySQL it is the file's Previous_gtids plus every
    GTID before ``position``, read with SHOW BINLOG EVENTS (one pass over that file, once).
    """
    if kind == MARIADB:
        with conn.cursor() as cur:
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (position.file, position.pos))
            row = cur.fetchone()
        if row is None or row[0] is None:
            raise SourceError(
                f"{position} is not a transaction boundary the server knows (BINLOG_GTID_POS "
                "is NULL); give a position from SHOW BINLOG EVENTS or a gtid start"
            )
        return str(GtidSet.parse(str(row[0]), MARIADB))
    found = header_set(conn, kind, position.file)
    for pos, event_type, _, info in events(conn, position.file):
        if pos >= position.pos:
            break
        gtid = _gtid_of(kind, event_type, info)
        if gtid is not None:
            found.add(gtid)
    return str(found)


def purged(conn: Any, kind: str, files: list[str]) -> GtidSet:
    """What the server can no longer send: MySQL gtid_purged; MariaDB, the state its oldest
    binlog starts from."""
    if kind == MYSQL:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.gtid_purged")
            row = cur.fetchone()
        return GtidSet.parse(str(row[0] or "") if row else "", MYSQL)
    return header_set(conn, kind, files[0]) if files else GtidSet(kind)


def position_of(conn: Any, kind: str, gtid_set: GtidSet, files: list[str]) -> Position:
    """Where the server starts sending for ``gtid_set``: the first transaction not in it.

    As the server does, the newest binlog whose starting state the set covers, then its first
    GTID outside the set (one pass over that file).
    """
    for index in range(len(files) - 1, -1, -1):
        file = files[index]
        if gtid_set.missing_from(header_set(conn, kind, file)) is not None and index:
            continue
        end = 4
        for pos, event_type, end_log_pos, info in events(conn, file):
            gtid = _gtid_of(kind, event_type, info)
            if gtid is not None and not gtid_set.contains(gtid):
                return Position(file, pos, None, str(gtid_set))
            end = end_log_pos or end
        if index == len(files) - 1:
            return Position(file, end, None, str(gtid_set))
        return Position(files[index + 1], 4, None, str(gtid_set))
    raise SourceError("the server lists no binary logs")
