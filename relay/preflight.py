"""What a source server says about itself: settings, privileges, binlog files; blocking calls.

Each check raises a SourceError whose message names the source and says what to change.
Call these from a thread (``asyncio.to_thread``) when on the event loop.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pymysql

from app.errors import GtidError, GtidPurgedError, PositionLostError, SourceError
from app.gtids import GtidSet, parse_for
from app.settings import SourceSettings
from relay import binlog_status, snapshot
from tables.positions import Checkpoint, Position, SnapshotProgress

log = logging.getLogger(__name__)

# The settings a row-based reader needs, and the value each must have.
REQUIRED = (
    ("binlog_format", "ROW"),
    ("binlog_row_image", "FULL"),
    ("binlog_row_metadata", "FULL"),
)
# Binlog compression, which the relay decodes: reported by `aesop check`, never refused.
COMPRESSION = (
    "log_bin_compress",  # MariaDB 10.2+: query and rows events, zlib
    "log_bin_compress_min_len",  # MariaDB: events shorter than this stay uncompressed
    "binlog_transaction_compression",  # MySQL 8.0.20+: whole transactions, zstd
    "binlog_transaction_compression_level_zstd",
)
GLOBAL_GRANT = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.IGNORECASE)
# SHOW GRANTS prints MariaDB 10.5+'s REPLICATION CLIENT as BINLOG MONITOR; SUPER still
# allows SHOW BINARY LOGS on both servers. REPLICATION REPLICA is MySQL 8's alias.
CLIENT_PRIVILEGES = ("REPLICATION CLIENT", "BINLOG MONITOR", "SUPER")
SLAVE_PRIVILEGES = ("REPLICATION SLAVE", "REPLICATION REPLICA")


@contextmanager
def connect(source: SourceSettings) -> Iterator[pymysql.connections.Connection]:
    url = source.mysql
    try:
        conn = pymysql.connect(**url.connect_args(), connect_timeout=5, read_timeout=30)
    except pymysql.err.MySQLError as exc:
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


def binlog_variables(conn: pymysql.connections.Connection) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN "
            "('log_bin','binlog_format','binlog_row_image','binlog_row_metadata',"
            "'binlog_row_value_options','binlog_legacy_event_pos','version',"
            + ",".join(f"'{name}'" for name in COMPRESSION)
            + ")"
        )
        return {name.lower(): str(value) for name, value in cur.fetchall()}


def _global_grants(conn: pymysql.connections.Connection) -> set[str]:
    """Privileges on *.* of the current user and its default role (plain SHOW GRANTS)."""
    with conn.cursor() as cur:
        cur.execute("SHOW GRANTS")
        grants: set[str] = set()
        for (line,) in cur.fetchall():
            match = GLOBAL_GRANT.match(line)
            if match:
                grants.update(p.strip().upper() for p in match.group(1).split(","))
        return grants


def _current_user(conn: pymysql.connections.Connection) -> str:
    """The account the server matched, quoted for a GRANT: 'repl'@'%'."""
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        user, _, host = str(cur.fetchone()[0]).rpartition("@")
    return f"'{user}'@'{host}'"


def binary_logs(conn: pymysql.connections.Connection) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [row[0] for row in cur.fetchall()]


def check_server(source: SourceSettings, conn: pymysql.connections.Connection) -> dict[str, str]:
    """Binlog settings and privileges; raises SourceError naming what to fix. Returns the
    binlog variables found."""
    found = binlog_variables(conn)
    check_variables(source, found)
    check_grants(source, conn)
    return found


def compression_report(found: dict[str, str]) -> str:
    """The binlog compression settings among ``found``, as ``name=value`` pairs ("" if the
    server has none of them: MySQL before 8.0.20 has neither family)."""
    return ", ".join(f"{name}={found[name]}" for name in COMPRESSION if name in found)


def check_variables(source: SourceSettings, found: dict[str, str]) -> None:
    """The binlog settings, as SHOW GLOBAL VARIABLES lists them (names in lower case).

    A variable the server does not have (MariaDB has no binlog_row_value_options, MySQL no
    binlog_legacy_event_pos) cannot be set wrong, so it passes. Compression is not checked:
    the relay decodes compressed binlogs.
    """
    prefix = f"source {source.name!r}: "
    if found.get("log_bin", "OFF").upper() != "ON":
        raise SourceError(
            prefix + "binary logging is off; start the server with log-bin=mysql-bin "
            "(and binlog_format=ROW, binlog_row_image=FULL, binlog_row_metadata=FULL)"
        )
    wrong = [
        (name, found.get(name), wanted)
        for name, wanted in REQUIRED
        if found.get(name, "").upper() != wanted
    ]
    if wrong:
        found_text = ", ".join(
            f"{name} is {value}"
            if value
            else f"{name} is missing (needs MariaDB 10.5+ or MySQL 8.0.14+)"
            for name, value, _ in wrong
        )
        fix = ", ".join(f"{name}={wanted}" for name, _, wanted in wrong)
        raise SourceError(f"{prefix}{found_text}; set {fix} in the server's config and restart it")
    value_options = found.get("binlog_row_value_options", "")
    if "PARTIAL_JSON" in value_options.upper():
        raise SourceError(
            f"{prefix}binlog_row_value_options is {value_options}; partial JSON updates log a "
            "diff instead of the new row and cannot be decoded: set binlog_row_value_options='' "
            "(SET PERSIST binlog_row_value_options='')"
        )
    if found.get("binlog_legacy_event_pos", "ON").upper() == "OFF":
        raise SourceError(
            f"{prefix}binlog_legacy_event_pos is OFF; MariaDB 11.4+ then logs the events inside "
            "a transaction with end_log_pos 0 and their rows get no position: set "
            "binlog_legacy_event_pos=ON (SET GLOBAL, and in the server's config)"
        )


def check_grants(source: SourceSettings, conn: pymysql.connections.Connection) -> None:
    """REPLICATION SLAVE and REPLICATION CLIENT, directly or through the default role."""
    prefix = f"source {source.name!r}: "
    grants = _global_grants(conn)
    if "ALL PRIVILEGES" in grants:
        return
    missing = [
        name
        for name, accepted in (
            ("REPLICATION SLAVE", SLAVE_PRIVILEGES),
            ("REPLICATION CLIENT", CLIENT_PRIVILEGES),
        )
        if not grants.intersection(accepted)
    ]
    if missing:
        raise SourceError(
            f"{prefix}user {source.mysql.user!r} lacks {' and '.join(missing)}; "
            f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {_current_user(conn)}"
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


def starting_checkpoint(
    source: SourceSettings, conn: pymysql.connections.Connection, server: Server
) -> Checkpoint:
    """Where a source with no checkpoint starts, per its ``start`` setting."""
    start = source.start
    if source.snapshot == "initial":  # the snapshot reads what the binlog before holds
        return Checkpoint.at(binlog_status.current(conn, server.kind, server.gtids))
    if start.startswith("gtid:"):
        return Checkpoint.at(gtid_start(source, conn, server, start[len("gtid:") :]))
    if start == "earliest":
        files = binary_logs(conn)
        if not files:
            raise SourceError(f"source {source.name!r}: the server lists no binary logs")
        position = Position(files[0], 4)
    elif start == "latest":
        return Checkpoint.at(binlog_status.current(conn, server.kind, server.gtids))
    else:
        position = Position.parse(start)
    check_position(source, conn, position)
    return Checkpoint.at(with_gtid_set(conn, server, position))


@dataclass(frozen=True, slots=True)
class Server:
    """The flavour of a source's server, and whether it gives transactions GTIDs."""

    kind: str
    gtids: bool

    @classmethod
    def of(cls, conn: pymysql.connections.Connection) -> Server:
        kind = binlog_status.flavour(conn)
        return cls(kind, binlog_status.gtids_on(conn, kind))


def with_gtid_set(
    conn: pymysql.connections.Connection, server: Server, position: Position
) -> Position:
    """``position`` with the executed GTID set there, where the server has GTIDs."""
    if not server.gtids:
        return replace(position, gtid_set=None)
    return replace(position, gtid_set=binlog_status.gtid_set_at(conn, server.kind, position))


def gtid_start(
    source: SourceSettings, conn: pymysql.connections.Connection, server: Server, text: str
) -> Position:
    """The position of ``start = "gtid:<set>"``: the first transaction not in the set."""
    prefix = f"source {source.name!r}: "
    if not server.gtids:
        raise GtidError(
            f"{prefix}start = 'gtid:...' but the server has gtid_mode OFF; turn GTIDs on "
            "(gtid_mode=ON, enforce_gtid_consistency=ON) or start from earliest, latest or "
            "'file:pos'"
        )
    try:
        gtid_set = parse_for(text, server.kind, "start = 'gtid:...':")
    except SourceError as exc:
        raise GtidError(prefix + str(exc)) from None
    files = binary_logs(conn)
    check_not_purged(source, conn, server, gtid_set, files, "start = 'gtid:...'")
    return binlog_status.position_of(conn, server.kind, gtid_set, files)


def check_not_purged(
    source: SourceSettings,
    conn: pymysql.connections.Connection,
    server: Server,
    gtid_set: GtidSet,
    files: list[str],
    what: str,
) -> None:
    missing = gtid_set.missing_from(binlog_status.purged(conn, server.kind, files))
    if missing is not None:
        raise GtidPurgedError(
            f"source {source.name!r}: {what} lacks {missing}, which the server has purged from "
            "its binlogs; the changes in between are lost to aesop: give a GTID set that "
            "includes the server's purged set (MySQL: SELECT @@gtid_purged; MariaDB: the "
            "Gtid_list of its oldest binlog), re-sync the consumers, and delete the checkpoint "
            "to restart from 'start'"
        )


def resume_point(
    source: SourceSettings,
    conn: pymysql.connections.Connection,
    server: Server,
    checkpoint: Checkpoint,
) -> Checkpoint:
    """The stored checkpoint, checked against the server: by GTID when it has a GTID set
    and the server has GTIDs, else by file:pos (adding the GTID set where the server has
    one, for checkpoints written before aesop kept it)."""
    if checkpoint.gtid_set is not None and server.gtids:
        try:
            gtid_set = parse_for(checkpoint.gtid_set, server.kind, "the checkpoint's gtid_set")
        except SourceError as exc:
            raise GtidError(
                f"source {source.name!r}: {exc}; this source's checkpoint was written "
                "reading another kind of server: delete it to restart from 'start'"
            ) from None
        what = f"the checkpoint's gtid_set {checkpoint.gtid_set}"
        check_not_purged(source, conn, server, gtid_set, binary_logs(conn), what)
        return checkpoint
    check_position(source, conn, checkpoint.position)
    if checkpoint.gtid_set is None and not server.gtids:
        return checkpoint
    position = with_gtid_set(conn, server, checkpoint.position)
    return replace(checkpoint, gtid_set=position.gtid_set)


def with_new_tables(
    source: SourceSettings, conn: Any, chosen: Checkpoint, stored: Checkpoint | None
) -> Checkpoint:
    """With ``snapshot_new_tables``: the start checkpoint keeps the source's globs, and the
    tables they include that the stored checkpoint's globs did not (a config change since) are
    queued for a snapshot. Without it, no globs are kept (turned on later, the option starts
    from the config of that start)."""
    if not source.snapshot_new_tables:
        return replace(chosen, tables=None)
    globs = (source.include, source.exclude)
    before = None if stored is None else stored.tables
    if before is None or before == globs:
        return replace(chosen, tables=globs)
    with conn.cursor() as cur:
        added = snapshot.newly_included(cur, source, before)
    progress, queued = snapshot.queued(chosen.snapshot, added)
    if queued:
        log.info("relay %s: snapshot of %s queued: newly included by the config",
                 source.name, ", ".join(f"{db}.{table}" for db, table in queued))  # fmt: skip
    return replace(chosen, tables=globs, snapshot=progress)


def preflight(source: SourceSettings, checkpoint: Checkpoint | None) -> Checkpoint:
    """Check the server and the position; return where to start reading."""
    return check(source, checkpoint)[0]


def check(source: SourceSettings, checkpoint: Checkpoint | None) -> tuple[Checkpoint, str]:
    """``preflight``, and the server's binlog compression settings (``compression_report``)."""
    with connect(source) as conn:
        try:
            found = check_server(source, conn)
            server = Server.of(conn)
            if checkpoint is None:
                chosen = starting_checkpoint(source, conn, server)
                if source.snapshot == "initial":
                    with conn.cursor() as cur:
                        tables = snapshot.included_tables(cur, source)
                    if tables:
                        progress = SnapshotProgress(snapshot.INITIAL, tables)
                        chosen = replace(chosen, snapshot=progress)
            else:
                chosen = resume_point(source, conn, server, checkpoint)
            chosen = with_new_tables(source, conn, chosen, checkpoint)
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"source {source.name!r}: {describe(exc, source)}") from None
    return chosen, compression_report(found)
