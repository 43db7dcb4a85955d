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
from typing import Any

import orjson
import pymysql
from pymysqlreplication import BinLogStreamReader, binlogstream
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
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from app.errors import DecodeError, SourceError
from app.settings import SourceSettings
from relay import values
from relay.decoder import RowDecoder, layout_key
from relay.handoff import Batch, Change, Handoff
from relay.include import TableFilter
from relay.position import Position, scn_of

log = logging.getLogger(__name__)

# Row events we cannot decode: MariaDB's compressed events (log_bin_compress=ON) and MySQL's
# partial JSON updates. Skipping them would silently drop changes, so they stop the relay.
UNDECODABLE = {
    165: "QUERY_COMPRESSED_EVENT",
    166: "WRITE_ROWS_COMPRESSED_EVENT_V1",
    167: "UPDATE_ROWS_COMPRESSED_EVENT_V1",
    168: "DELETE_ROWS_COMPRESSED_EVENT_V1",
    169: "WRITE_ROWS_COMPRESSED_EVENT",
    170: "UPDATE_ROWS_COMPRESSED_EVENT",
    171: "DELETE_ROWS_COMPRESSED_EVENT",
    39: "PARTIAL_UPDATE_ROWS_EVENT",
}
EVENTS = [
    WriteRowsEvent,
    UpdateRowsEvent,
    DeleteRowsEvent,
    QueryEvent,
    XidEvent,
    RotateEvent,
    XAPrepareEvent,
    GtidEvent,
    MariadbGtidEvent,
    HeartbeatLogEvent,
    NotImplementedEvent,
]
# On a lost connection (2006, 2013) the library reconnects by itself: at once, from its last
# event (mid-transaction too), with a multi-line warning. An empty list hands these errors to
# the relay, which reconnects with backoff from a transaction boundary, one line per attempt.
binlogstream.MYSQL_EXPECTED_ERROR_CODES = []
OPS = {WriteRowsEvent: "c", UpdateRowsEvent: "u", DeleteRowsEvent: "d"}
BATCH_MAX = 500
HEARTBEAT_S = 1.0
READ_TIMEOUT_S = 10
POSITION_EVERY_S = 1.0


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


class BinlogReader:
    """Follows one source's binlog from a checkpoint and hands change batches to the loop."""

    def __init__(
        self,
        source: SourceSettings,
        start: Position,
        skip_through: tuple[int, int],
        handoff: Handoff,
        clock: Callable[[], float] = time.time,
    ) -> None:
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
        self._stream: BinLogStreamReader | None = None
        self._wants = TableFilter.of(source)
        self._decoders: dict[tuple[Any, ...], RowDecoder] = {}
        # Per (db, table): the last table map's column list and its decoder, so that the
        # layout key is only built when a new table map comes (once per transaction).
        self._last_decoder: dict[tuple[str, str], tuple[Any, RowDecoder]] = {}
        self._ctl: pymysql.connections.Connection | None = None
        self._is_mariadb = False

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
            raise SourceError(f"source {self.source.name!r}: {_mysql_reason(exc)}") from exc
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

    def _run(self) -> None:
        self._stream = stream = BinLogStreamReader(
            connection_settings=connection_settings(self.source),
            server_id=self.source.server_id,
            resume_stream=True,
            log_file=self.start.file,
            log_pos=self.start.pos,
            blocking=True,
            only_events=EVENTS,
            # The library drops NotImplementedEvent by default: compressed row events would
            # vanish without a trace instead of reaching the UNDECODABLE check below.
            filter_non_implemented_events=False,
            slave_heartbeat=HEARTBEAT_S,
            freeze_schema=True,
            enable_logging=False,
        )
        txn = _Transaction()
        batch = Batch(resume=self.start)
        current_file = self.start.file
        while not self.stopping.is_set():
            event = stream.fetchone()
            if event is None or self.stopping.is_set():
                break
            kind = type(event)
            if kind in OPS:
                self._rows(event, kind, current_file, txn, batch)
                if len(batch.changes) >= BATCH_MAX:
                    batch = self._flush(batch)
            elif kind is XidEvent or kind is XAPrepareEvent or kind is QueryEvent:
                if kind is QueryEvent:
                    if event.query == "BEGIN":
                        txn.begin(txn.gtid, open_=True)
                        continue
                    if not txn.ends_with(event.query):
                        continue
                self._release(txn, batch, last=True)
                # After a commit (or DDL, which commits implicitly, or XA PREPARE, after which
                # XA COMMIT comes as a transaction of its own), the next event is a
                # transaction boundary: a safe place to resume.
                batch.resume = Position(current_file, event.packet.log_pos, txn.gtid)
                txn.begin(None, open_=False)
                batch = self._flush(batch)
            elif kind is MariadbGtidEvent:
                # FL_STANDALONE (1): a DDL or other statement that is its own transaction.
                txn.begin(event.gtid, open_=not event.flags & 1)
            elif kind is GtidEvent:
                txn.begin(event.gtid, open_=False)
            elif kind is RotateEvent:
                current_file = event.next_binlog
                if not txn.open:
                    batch.resume = Position(current_file, event.position, None)
            elif kind is HeartbeatLogEvent:
                if batch.changes:
                    batch = self._flush(batch)
            elif kind is NotImplementedEvent and event.event_type in UNDECODABLE:
                raise DecodeError(
                    f"source {self.source.name!r}: {UNDECODABLE[event.event_type]} at "
                    f"{current_file}:{event.packet.log_pos - event.packet.event_size} "
                    "cannot be decoded; set log_bin_compress=OFF (and "
                    "binlog_row_value_options='') on the server"
                )

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
        return Batch(resume=batch.resume)

    def _release(self, txn: _Transaction, batch: Batch, last: bool) -> None:
        """Serialize the held change now that we know whether it ends its transaction."""
        if txn.held is None:
            return
        event, key = txn.held
        txn.held = None
        event["txn"]["last"] = last
        batch.changes.append(Change(key, _dumps(event), event["scn"], event["row"]))

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
        pos = event.packet.log_pos - event.packet.event_size
        scn = scn_of(file, pos)
        op = OPS[kind]
        images = self._decoder(event).images(event, op)
        pk = event.primary_key
        pk_columns = (pk,) if isinstance(pk, str) and pk else tuple(pk or ())
        # Serialized once per event: every row of it carries the same source and key prefix.
        source = orjson.Fragment(
            orjson.dumps(
                {
                    "name": self.source.name,
                    "server_id": event.packet.server_id,
                    "db": db,
                    "table": table,
                    "file": file,
                    "pos": pos,
                    "gtid": txn.gtid,
                    "ts_ms": event.timestamp * 1000,
                }
            )
        )
        # orjson.dumps({"db": db, "table": table, "pk": pk}) is key_head + dumps(pk) + b"}".
        key_head = b'{"db":' + orjson.dumps(db) + b',"table":' + orjson.dumps(table) + b',"pk":'
        skip_scn, skip_row = self.skip_through
        now_ms = int(self.clock() * 1000)
        for row_index, (before, after) in enumerate(images):
            seq = txn.seq
            txn.seq += 1
            if scn < skip_scn or (scn == skip_scn and row_index <= skip_row):
                continue
            if op == "u":
                assert before is not None and after is not None
                changed = [name for name, value in after.items() if before.get(name) != value]
                image = after
            else:
                changed = []
                image = before if op == "d" else after
            assert image is not None
            key_values = {name: image[name] for name in pk_columns} if pk_columns else None
            change = {
                "op": op,
                "source": source,
                "scn": scn,
                "row": row_index,
                "txn": {"seq": seq, "last": False},
                "key": key_values,
                "before": before,
                "after": after,
                "changed": changed,
                "ts_ms": now_ms,
            }
            self._release(txn, batch, last=False)
            txn.held = (change, key_head + orjson.dumps(key_values) + b"}")


def _dumps(value: Any) -> bytes:
    """orjson.dumps, right-sized: orjson 3.12+ returns bytes that keep their 4 KiB-or-more
    buffer, and with tens of thousands of changes in flight that was 300 MB of RSS."""
    return bytes(memoryview(orjson.dumps(value)))


def _mysql_reason(exc: pymysql.err.OperationalError) -> str:
    code = exc.args[0] if exc.args else None
    message = exc.args[1] if len(exc.args) > 1 else str(exc)
    return f"MySQL error {code}: {message}"
