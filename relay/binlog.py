"""The border with python-mysql-replication: binlog events in, aesop change batches out.

Nothing outside ``relay.binlog``, ``relay.compressed``, ``relay.decoder``, ``relay.values``
and ``relay._pmr_patches`` imports pymysqlreplication. The reader runs in its own thread (the
library blocks) and hands serialized batches to the loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from app.change_event import CREATE, DELETE, READ, UPDATE, key_prefix, source_block
from app.errors import DecodeError, LibraryVersionError, PositionLostError, SourceError
from app.gtids import MARIADB, MYSQL, GtidSet, flavour_of
from app.settings import SourceSettings
from relay import _pmr_patches, values
from relay.compressed import CompressedEventError, MariadbCompressedEvent, TransactionPayloadEvent
from relay.ddl import new_table_names
from relay.decoder import RowDecoder, layout_key
from relay.handoff import Batch, Handoff, SerializedChange, Stopped
from relay.include import TableFilter
from relay.snapshot import Published, Snapshotter, queued, snapshot_request
from tables.positions import Position, SnapshotProgress, scn_of

log = logging.getLogger(__name__)

# MySQL 8's partial JSON updates (binlog_row_value_options=PARTIAL_JSON: the after image
# holds a diff, not the row) cannot be decoded; skipping them would silently drop changes,
# so they stop the relay.
PARTIAL_JSON_FIX = "binlog_row_value_options=''"
UNDECODABLE = {39: ("PARTIAL_UPDATE_ROWS_EVENT", PARTIAL_JSON_FIX)}
EVENTS = [
    WriteRowsEvent,
    UpdateRowsEvent,
    DeleteRowsEvent,
    # Type 39 comes as this class, and the library drops classes not listed here.
    PartialUpdateRowsEvent,
    QueryEvent,
    XidEvent,
    RotateEvent,
    XAPrepareEvent,
    GtidEvent,
    MariadbGtidEvent,
    HeartbeatLogEvent,
    # MariaDB's compressed events (165-171) come out as the query or rows event they hold;
    # MySQL's compressed transactions (40) as a payload of inner events (relay.compressed).
    MariadbCompressedEvent,
    TransactionPayloadEvent,
    NotImplementedEvent,
]
# The allow-list: every binlog event type the reader knows, beside those EVENTS decode.
# The library reads these (or drops them unread) and the reader deliberately does nothing
# with them; any type in neither list stops the source (``_on_not_implemented``), so a
# future event that could carry changes is never skipped without a word.
IGNORED = {
    3: "STOP_EVENT",  # the server stopped; the next file follows
    5: "INTVAR_EVENT",  # statement-based context (binlog_format=ROW logs rows)
    13: "RAND_EVENT",  # statement-based context
    14: "USER_VAR_EVENT",  # statement-based context
    15: "FORMAT_DESCRIPTION_EVENT",  # read by the library for the events that follow
    17: "BEGIN_LOAD_QUERY_EVENT",  # statement-based LOAD DATA
    18: "EXECUTE_LOAD_QUERY_EVENT",  # statement-based LOAD DATA
    19: "TABLE_MAP_EVENT",  # kept by the library for the rows events that follow
    29: "ROWS_QUERY_LOG_EVENT",  # the statement's text, informational
    34: "ANONYMOUS_GTID_LOG_EVENT",  # a transaction start without a GTID
    35: "PREVIOUS_GTIDS_LOG_EVENT",  # the GTIDs of earlier files
    36: "TRANSACTION_CONTEXT_EVENT",  # group replication certification
    37: "VIEW_CHANGE_EVENT",  # group replication membership
    160: "ANNOTATE_ROWS_EVENT",  # MariaDB: the statement's text
    161: "BINLOG_CHECKPOINT_EVENT",  # MariaDB: crash recovery bookkeeping
    163: "GTID_LIST_EVENT",  # MariaDB: the GTID state at a file start
    164: "START_ENCRYPTION_EVENT",  # MariaDB: the server decrypts before sending
}
HEARTBEAT_V2 = 41  # MySQL 8.0.26+: a heartbeat the library does not know
# Names of types the reader neither decodes nor ignores, for the stop message.
OTHER_TYPE_NAMES = {
    0: "UNKNOWN_EVENT",
    1: "START_EVENT_V3",
    6: "LOAD_EVENT",
    7: "SLAVE_EVENT",
    8: "CREATE_FILE_EVENT",
    9: "APPEND_BLOCK_EVENT",
    10: "EXEC_LOAD_EVENT",
    11: "DELETE_FILE_EVENT",
    12: "NEW_LOAD_EVENT",
    20: "PRE_GA_WRITE_ROWS_EVENT",
    21: "PRE_GA_UPDATE_ROWS_EVENT",
    22: "PRE_GA_DELETE_ROWS_EVENT",
    26: "INCIDENT_EVENT",
    28: "IGNORABLE_LOG_EVENT",
    42: "GTID_TAGGED_LOG_EVENT",
}
OPS = {WriteRowsEvent: CREATE, UpdateRowsEvent: UPDATE, DeleteRowsEvent: DELETE}
ROWS_PER_BATCH = 500  # changes per batch handed from the reader thread to the loop
HEARTBEAT_S = 1.0
READ_TIMEOUT_S = 10
POSITION_EVERY_S = 1.0


def unreviewed_types(event_map: dict[int, type]) -> dict[int, str]:
    """Types the library makes into a class the reader neither decodes nor lists in IGNORED.

    The library drops events of classes not in EVENTS before the reader sees them, so each
    such type must be one the reader deliberately ignores; ``apply`` stops on any other.
    """
    decoded = set(EVENTS) - {NotImplementedEvent}
    return {
        event_type: cls.__name__
        for event_type, cls in event_map.items()
        if cls not in decoded and event_type not in IGNORED and cls is not NotImplementedEvent
    }


class RowDecodeError(DecodeError):
    """An event the library failed on: a defect or a corrupt stream, retried with backoff."""


def connection_settings(source: SourceSettings) -> dict[str, Any]:
    url = source.mysql
    return {
        "host": url.host,
        "port": url.port,
        "user": url.user,
        "passwd": url.password,
        "connect_timeout": 5,
        "read_timeout": READ_TIMEOUT_S,
    }


class _Transaction:
    """The open transaction: its GTID, row count, and the one change held back.

    The last row of a transaction is only known at its commit, so each change waits for
    the next one (or the commit) before it is serialized with ``txn.last``.
    """

    def __init__(self) -> None:
        self.gtid: str | None = None
        self.open = False
        self.seq = 0
        self.held: tuple[dict[str, Any], bytes] | None = None

    def begin(self, gtid: str | None, open_: bool) -> None:
        self.gtid = gtid
        self.open = open_
        self.seq = 0
        self.held = None

    def ends_with(self, query: str) -> bool:
        """Does this query event close the transaction? (SAVEPOINT and the like do not.)"""
        return not self.open or query == "COMMIT"


@dataclass(slots=True)
class _Reading:
    """What one read of the binlog carries from event to event."""

    txn: _Transaction
    batch: Batch
    # The GTID of the last transaction that ended, for a resume point taken at a Rotate.
    ended_gtid: str | None


class BinlogReader:
    """Follows one source's binlog from a checkpoint and hands change batches to the loop."""

    def __init__(
        self,
        source: SourceSettings,
        start: Position,
        skip_through: tuple[int, int],
        handoff: Handoff,
        clock: Callable[[], float] = time.time,
        on_streaming: Callable[[], None] | None = None,
        snapshot: SnapshotProgress | None = None,
    ) -> None:
        _pmr_patches.apply()  # done at worker start; here for readers made without a worker
        unreviewed = unreviewed_types(_pmr_patches.event_map())
        if unreviewed:
            raise LibraryVersionError(
                f"python-mysql-replication makes binlog event types {unreviewed} into classes "
                "the reader neither decodes nor ignores, so they would be dropped unseen; add "
                "each to relay/binlog.py's EVENTS or IGNORED"
            )
        self.source = source
        self.start = start
        # Changes at or below (scn, row) were already published; resuming at a transaction
        # start re-reads them, and they are dropped here.
        self.skip_through = skip_through
        self.handoff = handoff
        self.clock = clock
        self.published_through = skip_through
        self.resume = start
        self._handed_resume = start
        self._handed_at = 0.0
        self.stopping = threading.Event()
        # Set (and ``on_streaming`` called, from this thread) at the first heartbeat or handed
        # batch: the server is sending the binlog, not just accepting the connection.
        self.streaming = False
        self._on_streaming = on_streaming
        self._stream: BinLogStreamReader | None = None
        self._wants = TableFilter.of(source)
        self._decoders: dict[tuple[Any, ...], RowDecoder] = {}
        # Per (db, table): the last table map's column list and its decoder, so that the
        # layout key is only built when a new table map comes (once per transaction).
        self._last_decoder: dict[tuple[str, str], tuple[Any, RowDecoder]] = {}
        self._ctl: pymysql.connections.Connection | None = None
        self._file = start.file  # the binlog file being read, for error messages
        self._handlers: dict[type, Callable[[Any, _Reading], None]] = {}
        self._is_mariadb = False
        # A snapshot under way (relay.snapshot), and its progress as of the last handed batch.
        self.snapshot_progress = snapshot
        self._snap = (
            None if snapshot is None else Snapshotter(source, snapshot, source.snapshot_chunk)
        )
        if snapshot is not None:
            db, table = snapshot.tables[0]
            log.info(
                "relay %s: %s snapshot of %d table(s): %s.%s %s (%d rows of it published)",
                source.name, snapshot.kind, len(snapshot.tables), db, table,
                "from the start"
                if snapshot.after is None
                else f"after key {orjson.dumps(snapshot.after).decode()}",
                snapshot.done,
            )  # fmt: skip
        # The executed GTID set through the last transaction read, where the server has
        # GTIDs: the reader resumes by it (auto-position) and adds each transaction's GTID.
        # An empty set (a server that has logged no GTID yet) is read by file:pos, and the set
        # starts with the first GTID read, of that GTID's flavour.
        self._track_gtids = start.gtid_set is not None
        self._gtids = GtidSet.parse(start.gtid_set) if start.gtid_set else None
        self._by_gtid = self._gtids is not None

    def stop(self) -> None:
        """Ask the thread to stop; closing the stream unblocks a pending read."""
        self.stopping.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def run(self) -> None:
        """Thread body: read until stopped; raise SourceError/DecodeError on failure."""
        try:
            self._run()
        except pymysql.err.OperationalError as exc:
            if self.stopping.is_set():
                return
            reason = _mysql_reason(exc)
            if exc.args and exc.args[0] == 1236:  # the server cannot send from there
                where = self.resume
                place = f"GTID set {where.gtid_set}" if self._by_gtid else str(where)
                raise PositionLostError(
                    f"source {self.source.name!r}: the server cannot send its binlog from "
                    f"{place} ({reason}); if that binlog was purged, changes after it are "
                    "lost to aesop: keep binlogs longer (expire_logs_days), re-sync the "
                    "consumers, and delete the checkpoint to restart from 'start'"
                ) from None
            raise SourceError(f"source {self.source.name!r}: {reason}") from exc
        except CompressedEventError as exc:
            if self.stopping.is_set():
                return
            # Raised while the stream made the event, so its position is still the event's start.
            stream = self._stream
            raise self._unopened(exc, getattr(stream, "log_pos", "?")) from exc
        except (SourceError, Stopped, pymysql.err.Error, OSError):
            raise
        except Exception as exc:
            if self.stopping.is_set():
                return
            # Not the connection: an event the reader could not decode. Reported as such,
            # never as a lost connection (which would hide a decoding defect).
            stream = self._stream
            pos = getattr(stream, "log_pos", None)
            raise RowDecodeError(
                f"source {self.source.name!r}: the binlog event before {self._file}:{pos} "
                f"could not be decoded ({exc!r}); reading again from {self.resume}"
            ) from exc
        finally:
            self._close()

    def _close(self) -> None:
        if self._snap is not None:
            self._snap.close()
        if self._ctl is not None:
            with contextlib.suppress(Exception):
                self._ctl.close()
            self._ctl = None
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
            self._stream = None

    def _where(self) -> dict[str, Any]:
        """Where the stream starts: by GTID set (the server skips the transactions in it)
        when there is one, else by file and position. Both start at ``self.start``."""
        start = self.start
        if not self._by_gtid or start.gtid_set is None:
            return {"log_file": start.file, "log_pos": start.pos}
        flavour = GtidSet.parse(start.gtid_set).flavour
        return {"auto_position": start.gtid_set, "is_mariadb": flavour == MARIADB}

    def _run(self) -> None:
        self._stream = stream = BinLogStreamReader(
            connection_settings=connection_settings(self.source),
            server_id=self.source.server_id,
            resume_stream=True,
            **self._where(),
            blocking=True,
            only_events=EVENTS,
            # The library drops NotImplementedEvent by default: an event type it does not know
            # would vanish without a trace instead of reaching the allow-list check below.
            filter_non_implemented_events=False,
            slave_heartbeat=HEARTBEAT_S,
            freeze_schema=True,
            enable_logging=False,
        )
        state = _Reading(_Transaction(), Batch(resume=self.start), self.start.gtid)
        self._file = self.start.file
        self._handlers = handlers = self._handlers_by_class()
        while not self.stopping.is_set():
            event = stream.fetchone()
            if self.stopping.is_set():
                break
            if event is None:
                # A blocking stream ends only when the server ends it: MySQL 8 sends an EOF
                # packet to the binlog dump connection when it shuts down. Ending the thread
                # quietly here would leave the source stopped without a word.
                raise SourceError(
                    f"source {self.source.name!r}: the server ended the binlog stream at "
                    f"{self._file}:{getattr(stream, 'log_pos', None)} (it is shutting down "
                    "or the connection was killed)"
                )
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event, state)

    def _handlers_by_class(self) -> dict[type, Callable[[Any, _Reading], None]]:
        """What each kind of event does to the reading state (kinds not listed: nothing)."""
        return {
            **dict.fromkeys(OPS, self._on_rows),
            QueryEvent: self._on_query,
            XidEvent: self._on_commit,
            XAPrepareEvent: self._on_commit,
            MariadbGtidEvent: self._on_mariadb_gtid,
            GtidEvent: self._on_gtid,
            RotateEvent: self._on_rotate,
            HeartbeatLogEvent: self._on_heartbeat,
            PartialUpdateRowsEvent: self._on_undecodable,
            TransactionPayloadEvent: self._on_payload,
            NotImplementedEvent: self._on_not_implemented,
        }

    def _on_rows(self, event: Any, state: _Reading) -> None:
        self._rows(event, type(event), self._file, state.txn, state.batch)
        if len(state.batch.changes) >= ROWS_PER_BATCH:
            state.batch = self._flush(state.batch)

    def _on_payload(self, event: Any, state: _Reading) -> None:
        """A compressed transaction (MySQL binlog_transaction_compression=ON): its inner
        events, handled as if they stood in the binlog in its place.

        Every inner event starts where the payload starts, so all its changes share the
        payload's SCN; ``row`` is the inner rows event's offset in the uncompressed payload
        plus the change's number in that event. An event makes fewer changes than it has
        bytes, so rows increase and never repeat across the payload, and are the same on every
        read whatever tables are included. The inner commit's end is the payload's end.
        """
        handlers = self._handlers
        try:
            for offset, inner in event.inner():
                kind = type(inner)
                if kind in OPS:
                    self._rows(inner, kind, self._file, state.txn, state.batch, offset)
                    if len(state.batch.changes) >= ROWS_PER_BATCH:
                        state.batch = self._flush(state.batch)
                else:
                    handler = handlers.get(kind)
                    if handler is not None:
                        handler(inner, state)
        except CompressedEventError as exc:
            raise self._unopened(exc, event.packet.log_pos - event.packet.event_size) from exc

    def _unopened(self, exc: CompressedEventError, pos: Any) -> RowDecodeError:
        """A compressed event that does not open: a corrupt stream, read again with backoff."""
        return RowDecodeError(
            f"source {self.source.name!r}: the compressed binlog event at {self._file}:{pos} "
            f"could not be opened ({exc}); reading again from {self.resume}"
        )

    def _on_query(self, event: Any, state: _Reading) -> None:
        txn = state.txn
        if event.query == "BEGIN":
            txn.begin(txn.gtid, open_=True)
        elif txn.ends_with(event.query):
            if self.source.snapshot_new_tables and not txn.open:
                self._on_ddl(event, state.batch)
            self._on_commit(event, state)

    def _on_ddl(self, event: Any, batch: Batch) -> None:
        """A statement outside a transaction that creates a table the source includes, or
        renames one to such a name: snapshot it (``snapshot_new_tables``)."""
        schema = event.schema.decode() if isinstance(event.schema, bytes) else event.schema
        named = [t for t in new_table_names(event.query, schema) if self._wants(*t)]
        if named:
            self._queue_snapshot(named, batch, "queued: a new table the source includes")

    def _on_commit(self, event: Any, state: _Reading) -> None:
        txn, batch = state.txn, state.batch
        self._release(txn, batch, last=True)
        # After a commit (or DDL, which commits implicitly, or XA PREPARE, after which XA
        # COMMIT comes as a transaction of its own), the next event is a transaction
        # boundary: a safe place to resume.
        if self._track_gtids and txn.gtid is not None:
            if self._gtids is None:
                self._gtids = GtidSet(flavour_of(txn.gtid) or MYSQL)
            self._gtids.add(txn.gtid)
        batch.resume = Position(self._file, event.packet.log_pos, txn.gtid, self._gtid_text())
        state.ended_gtid = txn.gtid
        txn.begin(None, open_=False)
        if self._snap is not None:
            self._snapshot_step(state, batch.resume)
        state.batch = self._flush(state.batch)

    def _on_mariadb_gtid(self, event: Any, state: _Reading) -> None:
        # FL_STANDALONE (1): a DDL or other statement that is its own transaction.
        state.txn.begin(event.gtid, open_=not event.flags & 1)

    def _on_gtid(self, event: Any, state: _Reading) -> None:
        state.txn.begin(event.gtid, open_=False)

    def _on_rotate(self, event: Any, state: _Reading) -> None:
        self._file = event.next_binlog
        # Table ids are only unique within one binlog file: a restarted server reuses them
        # for other tables. The library keeps its id -> table cache across the rotate that
        # starts a file (timestamp 0), and with freeze_schema it then decodes rows under
        # another table's columns; start every file afresh.
        assert self._stream is not None
        self._stream.table_map = {}
        # A stream started by GTID begins with a rotate to its file at position 4 (the
        # server then skips what the set holds): the resume point stays where it was.
        by_gtid_start = self._by_gtid and not event.packet.log_pos
        if not state.txn.open and not by_gtid_start:
            state.batch.resume = Position(
                self._file, event.position, state.ended_gtid, self._gtid_text()
            )

    def _gtid_text(self) -> str | None:
        if not self._track_gtids:
            return None
        return "" if self._gtids is None else str(self._gtids)

    def _on_heartbeat(self, event: Any, state: _Reading) -> None:
        self._mark_streaming()
        if self._snap is not None and not state.txn.open:
            # Nothing more to send and no transaction open: the server's position is a
            # boundary too (past the last commit when non-transactional events followed it).
            boundary = state.batch.resume
            assert boundary is not None
            at = event.packet.log_pos
            if at and (self._file, at) > (boundary.file, boundary.pos):
                boundary = Position(self._file, at, boundary.gtid)
            self._snapshot_step(state, boundary)
        if state.batch.changes or state.batch.snapshot_set:
            state.batch = self._flush(state.batch)

    def _on_undecodable(self, event: Any, state: _Reading) -> None:
        raise self._undecodable(event.event_type, self._file, event.packet)

    def _on_not_implemented(self, event: Any, state: _Reading) -> None:
        """An event type the library does not know: ignored only if the reader knows it."""
        event_type = event.event_type
        if event_type in IGNORED:
            return
        if event_type == HEARTBEAT_V2:
            self._on_heartbeat(event, state)
            return
        raise self._unknown(event_type, self._file, event.packet)

    def _unknown(self, event_type: int, file: str, packet: Any) -> DecodeError:
        """The one-line error for an event type the reader does not know."""
        name = OTHER_TYPE_NAMES.get(event_type, "a type aesop does not know")
        pos = packet.log_pos - packet.event_size if packet.log_pos else "?"
        return DecodeError(
            f"source {self.source.name!r}: binlog event type {event_type} ({name}) at "
            f"{file}:{pos} is neither decoded nor known to be safe to skip, and skipping it "
            "could drop changes; stop the server from writing it (or run an aesop that decodes "
            "it), then restart this source past it (its changes are lost to aesop: re-sync what "
            f'needs them): delete its checkpoint and set start = "{file}:<pos>" at a '
            f"transaction start after it (SHOW BINLOG EVENTS IN '{file}' FROM {pos}), or "
            'start = "latest"'
        )

    def _unplaced(self, db: str, table: str, file: str) -> DecodeError:
        """A rows event without its end position (MariaDB 11.4+ logs end_log_pos 0 inside
        transactions unless binlog_legacy_event_pos=ON): it has no SCN, and skipping it would
        silently drop its rows."""
        return DecodeError(
            f"source {self.source.name!r}: a rows event of {db}.{table} in {file} after "
            f"{self.resume} has end_log_pos 0, so its rows get no position; set "
            "binlog_legacy_event_pos=ON on the server (SET GLOBAL, and in its config), then "
            "restart this source past the events written before (their changes are lost to "
            'aesop: re-sync what needs them): delete its checkpoint and set start = "latest" '
            'or a "file:pos" after them'
        )

    def _undecodable(self, event_type: int, file: str, packet: Any) -> DecodeError:
        """The one-line error for an event we cannot decode: how to fix and move past it."""
        name, fix = UNDECODABLE[event_type]
        pos = packet.log_pos - packet.event_size
        return DecodeError(
            f"source {self.source.name!r}: {name} at {file}:{pos} cannot be decoded; set {fix} "
            "on the server, then restart this source past the undecodable events (their "
            "changes are lost to aesop: re-sync what needs them): delete its checkpoint and set "
            f'start = "{file}:<pos>" at a transaction start after them (SHOW BINLOG EVENTS IN '
            f"'{file}' FROM {pos}), or start = \"latest\""
        )

    def _on_signals(self, event: Any, batch: Batch) -> None:
        """Rows written to the signal table: snapshot requests (``aesop snapshot``), taken
        where the binlog has them; one a re-read meets again adds nothing."""
        asked: list[tuple[str, str]] = []
        for _, row in self._decoder(event).images(event, CREATE):
            assert row is not None
            for table in snapshot_request(self.source, row, self._wants):
                if table not in asked:
                    asked.append(table)
        self._queue_snapshot(asked, batch, "requested")

    def _queue_snapshot(self, tables: list[tuple[str, str]], batch: Batch, why: str) -> None:
        """Queue ``tables`` after the snapshot under way (or start one); the batch carries the
        progress, so the checkpoint keeps the request once Kafka has what came before it."""
        current = self.snapshot_progress if self._snap is None else self._snap.progress
        progress, added = queued(current, tables)
        if progress is None or not added:
            return
        log.info("relay %s: snapshot of %s %s", self.source.name,
                 ", ".join(f"{db}.{table}" for db, table in added), why)  # fmt: skip
        if self._snap is None:
            self._snap = Snapshotter(self.source, progress, self.source.snapshot_chunk)
        else:
            self._snap.progress = progress
        batch.snapshot, batch.snapshot_set = progress, True

    def _snapshot_step(self, state: _Reading, boundary: Position) -> None:
        """At a transaction boundary: publish each waiting chunk whose ``high`` the stream
        reached, and read the next, until one must wait for the stream or none is left."""
        snap = self._snap
        assert snap is not None
        at = scn_of(boundary.file, boundary.pos)
        while not self.stopping.is_set():
            if snap.chunk is None and not snap.read_chunk():
                snap.close()
                self._snap = None
                return
            if not snap.ready(at):
                return
            published = snap.take()
            if published is not None:
                self._publish_chunk(published, boundary, at, state)

    def _publish_chunk(
        self, published: Published, boundary: Position, at: int, state: _Reading
    ) -> None:
        """A chunk's rows as ``r`` events at the boundary's SCN, then hand them over."""
        batch = state.batch
        shape = published.table
        snap = self._snap
        assert snap is not None
        done_scn, done_row = self.published_through
        first = done_row + 1 if done_scn == at else 0
        if batch.changes and batch.changes[-1].scn == at:
            first = batch.changes[-1].row + 1
        args = (self.source.name, snap.server_id, shape.db, shape.table, boundary.file,
                boundary.pos, None, published.read_ms)  # fmt: skip
        source, last_source = source_block(*args, snapshot=True), source_block(*args, "last")
        now_ms = int(self.clock() * 1000)
        rows = published.rows
        for i, (key, after) in enumerate(rows):
            last = i == len(rows) - 1
            change = {
                "op": READ,
                "source": last_source if last and published.last_of_table else source,
                "scn": at,
                "row": first + i,
                "txn": {"seq": i, "last": last},
                "key": {name: after[name] for name in shape.pk} if shape.pk else None,
                "before": None,
                "after": after,
                "changed": [],
                "ts_ms": now_ms,
            }
            batch.changes.append(SerializedChange(key, _dumps(change), at, first + i))
        if rows:
            counted = (shape.db, shape.table, READ)
            batch.counts[counted] = batch.counts.get(counted, 0) + len(rows)
        batch.snapshot, batch.snapshot_set = published.progress, True
        state.batch = self._flush(batch)

    def _mark_streaming(self) -> None:
        if not self.streaming:
            self.streaming = True
            if self._on_streaming is not None:
                self._on_streaming()

    def _flush(self, batch: Batch) -> Batch:
        """Hand a batch to the loop; a batch that only moves the position goes once a second."""
        assert batch.resume is not None
        self.resume = batch.resume
        now = time.monotonic()
        if batch.changes:
            batch.last = (batch.changes[-1].scn, batch.changes[-1].row)
            self.published_through = batch.last
        elif not batch.snapshot_set and (
            batch.resume == self._handed_resume or now - self._handed_at < POSITION_EVERY_S
        ):
            return batch
        self.handoff.put(batch, self.stopping)
        if batch.snapshot_set:
            self.snapshot_progress = batch.snapshot
        self._handed_resume, self._handed_at = batch.resume, now
        self._mark_streaming()
        return Batch(resume=batch.resume)

    def _release(self, txn: _Transaction, batch: Batch, last: bool) -> None:
        """Serialize the held change now that we know whether it ends its transaction."""
        if txn.held is None:
            return
        event, key = txn.held
        txn.held = None
        event["txn"]["last"] = last
        batch.changes.append(SerializedChange(key, _dumps(event), event["scn"], event["row"]))

    def _decoder(self, event: Any) -> RowDecoder:
        columns = event.columns
        table = (event.schema, event.table)
        last = self._last_decoder.get(table)
        if last is not None and last[0] is columns:
            return last[1]
        signature = (*table, layout_key(columns))
        decoder = self._decoders.get(signature)
        if decoder is None:
            json_columns = self._json_columns(*table)
            decoder = self._decoders[signature] = RowDecoder(columns, json_columns)
        self._last_decoder[table] = (columns, decoder)
        return decoder

    def _json_columns(self, db: str, table: str) -> frozenset[str]:
        """MariaDB logs JSON as LONGTEXT: ask the server which columns are JSON.

        Asked once per table-map shape; a schema changed since the event was written can
        answer for the newer shape, which only matters for a JSON column added or dropped
        in between, and then only for how its text is shown.
        """
        if self._ctl is None:
            # read_timeout too: connect_timeout covers only the TCP connect, and a server
            # that accepts but never answers would hold the reader thread for good.
            self._ctl = pymysql.connect(
                **self.source.mysql.connect_args(), connect_timeout=5, read_timeout=READ_TIMEOUT_S
            )
            self._is_mariadb = "mariadb" in self._ctl.get_server_info().lower()
        if not self._is_mariadb:
            return frozenset()
        with self._ctl.cursor() as cursor:
            return values.mariadb_json_columns(cursor, db, table)

    def _rows(
        self,
        event: Any,
        kind: type,
        file: str,
        txn: _Transaction,
        batch: Batch,
        first_row: int = 0,
    ) -> None:
        db, table = event.schema, event.table
        if (db, table) == self.source.signal_table:
            if kind is WriteRowsEvent:
                self._on_signals(event, batch)
            return
        if not self._wants(db, table):
            return
        if not event.packet.log_pos:
            raise self._unplaced(db, table, file)
        pos = event.packet.log_pos - event.packet.event_size
        scn = scn_of(file, pos)
        op = OPS[kind]
        images = self._decoder(event).images(event, op)
        pk = event.primary_key
        pk_columns = (pk,) if isinstance(pk, str) and pk else tuple(pk or ())
        # Built once per event: every row of it carries the same source and key prefix.
        source = source_block(
            self.source.name,
            event.packet.server_id,
            db,
            table,
            file,
            pos,
            txn.gtid,
            event.timestamp * 1000,
        )
        # A row's key, key_head + dumps(pk) + b"}", is change_event.key_bytes(db, table, pk).
        key_head = key_prefix(db, table)
        skip_scn, skip_row = self.skip_through
        now_ms = int(self.clock() * 1000)
        snap = self._snap
        watched = snap is not None and snap.watching(db, table, scn)
        # ``row`` numbers the events built from this rows event, which is more than its rows
        # when an update changes a primary key; the same bytes always number the same way.
        # Inside a compressed transaction the numbers start at the event's offset in it.
        number = first_row
        made = dict.fromkeys("cud", 0)
        for row_before, row_after in images:
            for op_, before, after, changed in _row_changes(op, row_before, row_after, pk_columns):
                row_number = number
                number += 1
                seq = txn.seq
                txn.seq += 1
                if scn < skip_scn or (scn == skip_scn and row_number <= skip_row):
                    continue
                made[op_] += 1
                image = before if after is None else after
                assert image is not None
                key_values = {name: image[name] for name in pk_columns} if pk_columns else None
                # A ChangeEvent, its fields in order (change_event.FIELDS; the tests check).
                change = {
                    "op": op_,
                    "source": source,
                    "scn": scn,
                    "row": row_number,
                    "txn": {"seq": seq, "last": False},
                    "key": key_values,
                    "before": before,
                    "after": after,
                    "changed": changed,
                    "ts_ms": now_ms,
                }
                self._release(txn, batch, last=False)
                key = key_head + orjson.dumps(key_values) + b"}"
                txn.held = (change, key)
                if watched:
                    assert snap is not None
                    snap.drop(key)
        counts = batch.counts
        for op_, n in made.items():
            if n:
                counts[(db, table, op_)] = counts.get((db, table, op_), 0) + n
        batch.commit_ts = event.timestamp


Image = dict[str, Any]


def _row_changes(
    op: str, before: Image | None, after: Image | None, pk_columns: tuple[str, ...]
) -> list[tuple[str, Image | None, Image | None, list[str]]]:
    """The (op, before, after, changed) events of one row of a rows event.

    An update that changes the primary key is, as in Debezium, a delete under the old key
    and a create under the new one: otherwise the old key's partition (and a compacted
    topic) would never learn that the row left.
    """
    if op == "c":
        return [("c", None, after, [])]
    if op == "d":
        return [("d", before, None, [])]
    assert before is not None and after is not None
    if any(before[name] != after[name] for name in pk_columns):
        return [("d", before, None, []), ("c", None, after, [])]
    return [
        ("u", before, after, [name for name, value in after.items() if before.get(name) != value])
    ]


def _dumps(value: Any) -> bytes:
    """orjson.dumps, right-sized: orjson 3.12+ returns bytes that keep their 4 KiB-or-more
    buffer, and with tens of thousands of changes in flight that was 300 MB of RSS."""
    return bytes(memoryview(orjson.dumps(value)))


def _mysql_reason(exc: pymysql.err.OperationalError) -> str:
    code = exc.args[0] if exc.args else None
    message = exc.args[1] if len(exc.args) > 1 else str(exc)
    return f"MySQL error {code}: {message}"
