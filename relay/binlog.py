"""The border with python-mysql-replication: binlog events in, aesop change batches out.

Nothing outside ``relay.binlog``, ``relay.decoder``, ``relay.values`` and
``relay._pmr_patches`` imports pymysqlreplication. The reader runs in its own thread (the
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

from app.change_event import CREATE, DELETE, UPDATE, key_prefix, source_block
from app.errors import DecodeError, PositionLostError, SourceError
from app.gtids import MARIADB, MYSQL, GtidSet, flavour_of
from app.settings import SourceSettings
from relay import _pmr_patches, values
from relay.decoder import RowDecoder, layout_key
from relay.handoff import Batch, Handoff, SerializedChange, Stopped
from relay.include import TableFilter
from tables.positions import Position, scn_of

log = logging.getLogger(__name__)

# Events we cannot decode: MariaDB's compressed events (log_bin_compress=ON) and MySQL 8's
# partial JSON updates (binlog_row_value_options=PARTIAL_JSON: the after image holds a diff,
# not the row). Skipping them would silently drop changes, so they stop the relay.
COMPRESSED_FIX = "log_bin_compress=OFF"
PARTIAL_JSON_FIX = "binlog_row_value_options=''"
UNDECODABLE = {
    165: ("QUERY_COMPRESSED_EVENT", COMPRESSED_FIX),
    166: ("WRITE_ROWS_COMPRESSED_EVENT_V1", COMPRESSED_FIX),
    167: ("UPDATE_ROWS_COMPRESSED_EVENT_V1", COMPRESSED_FIX),
    168: ("DELETE_ROWS_COMPRESSED_EVENT_V1", COMPRESSED_FIX),
    169: ("WRITE_ROWS_COMPRESSED_EVENT", COMPRESSED_FIX),
    170: ("UPDATE_ROWS_COMPRESSED_EVENT", COMPRESSED_FIX),
    171: ("DELETE_ROWS_COMPRESSED_EVENT", COMPRESSED_FIX),
    39: ("PARTIAL_UPDATE_ROWS_EVENT", PARTIAL_JSON_FIX),
}
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
    NotImplementedEvent,
]
OPS = {WriteRowsEvent: CREATE, UpdateRowsEvent: UPDATE, DeleteRowsEvent: DELETE}
ROWS_PER_BATCH = 500  # changes per batch handed from the reader thread to the loop
HEARTBEAT_S = 1.0
READ_TIMEOUT_S = 10
POSITION_EVERY_S = 1.0


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
    ) -> None:
        _pmr_patches.apply()  # done at worker start; here for readers made without a worker
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
        self._is_mariadb = False
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
            # The library drops NotImplementedEvent by default: compressed row events would
            # vanish without a trace instead of reaching the UNDECODABLE check below.
            filter_non_implemented_events=False,
            slave_heartbeat=HEARTBEAT_S,
            freeze_schema=True,
            enable_logging=False,
        )
        state = _Reading(_Transaction(), Batch(resume=self.start), self.start.gtid)
        self._file = self.start.file
        handlers = self._handlers()
        while not self.stopping.is_set():
            event = stream.fetchone()
            if event is None or self.stopping.is_set():
                break
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event, state)

    def _handlers(self) -> dict[type, Callable[[Any, _Reading], None]]:
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
            NotImplementedEvent: self._on_not_implemented,
        }

    def _on_rows(self, event: Any, state: _Reading) -> None:
        self._rows(event, type(event), self._file, state.txn, state.batch)
        if len(state.batch.changes) >= ROWS_PER_BATCH:
            state.batch = self._flush(state.batch)

    def _on_query(self, event: Any, state: _Reading) -> None:
        txn = state.txn
        if event.query == "BEGIN":
            txn.begin(txn.gtid, open_=True)
        elif txn.ends_with(event.query):
            self._on_commit(event, state)

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
        state.batch = self._flush(batch)

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
        if state.batch.changes:
            state.batch = self._flush(state.batch)

    def _on_undecodable(self, event: Any, state: _Reading) -> None:
        raise self._undecodable(event.event_type, self._file, event.packet)

    def _on_not_implemented(self, event: Any, state: _Reading) -> None:
        if event.event_type in UNDECODABLE:
            raise self._undecodable(event.event_type, self._file, event.packet)

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
        elif batch.resume == self._handed_resume or now - self._handed_at < POSITION_EVERY_S:
            return batch
        self.handoff.put(batch, self.stopping)
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
            self._ctl = pymysql.connect(**self.source.mysql.connect_args(), connect_timeout=5)
            self._is_mariadb = "mariadb" in self._ctl.get_server_info().lower()
        if not self._is_mariadb:
            return frozenset()
        with self._ctl.cursor() as cursor:
            return values.mariadb_json_columns(cursor, db, table)

    def _rows(self, event: Any, kind: type, file: str, txn: _Transaction, batch: Batch) -> None:
        db, table = event.schema, event.table
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
        # ``row`` numbers the events built from this rows event, which is more than its rows
        # when an update changes a primary key; the same bytes always number the same way.
        number = 0
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
                txn.held = (change, key_head + orjson.dumps(key_values) + b"}")
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
