"""Baselines: the pymysqlreplication decode rate (patched and as released), the reader alone."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from typing import Any

import orjson
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from app.settings import SourceSettings
from bench.raw_parser import count_rows
from relay import _pmr_patches, binlog
from relay.handoff import Batch
from tables.positions import Position
from tests.support.mysql import mysql_url
from tests.support.stack import ROOT

ROW_EVENTS = (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)


def server_id() -> int:
    """An id for one more replica connection; random so parallel runs do not collide."""
    return random.randint(50_000, 2**31 - 1)


def source_settings(db: str, table: str, topic: str = "unused") -> SourceSettings:
    return SourceSettings(
        name="bench",
        mysql=mysql_url(),
        server_id=server_id(),
        include=(f"{db}.{table}",),
        exclude=(),
        start="earliest",
        topic=topic,
    )


def parser_rate(start: tuple[str, int], db: str, table: str, rows: int) -> dict[str, Any]:
    """pymysqlreplication alone, as the relay configures it: decode ``rows`` rows of db.table.

    The relay's decoding fixes (relay._pmr_patches) are in force: they are part of the
    parser the relay runs.
    """
    _pmr_patches.apply()
    source = source_settings(db, table)
    stream = BinLogStreamReader(
        connection_settings=binlog.connection_settings(source),
        server_id=source.server_id,
        resume_stream=True,
        log_file=start[0],
        log_pos=start[1],
        blocking=False,
        only_events=binlog.EVENTS,
        freeze_schema=True,
        enable_logging=False,
    )
    return count_rows(stream, db, table, rows)


def raw_parser_rate(start: tuple[str, int], db: str, table: str, rows: int) -> dict[str, Any]:
    """parser_rate for pymysqlreplication as released, without the relay's fixes."""
    names = [kind.__name__ for kind in binlog.EVENTS]
    command = [sys.executable, "-m", "bench.raw_parser", start[0], str(start[1]), db, table]
    command += [str(rows), str(server_id()), *names]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(orjson.loads(done.stdout))


class _CountingHandoff:
    """Stands in for relay.handoff.Handoff: counts the changes and drops them."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.seen = 0
        self.batches = 0
        self.reader: binlog.BinlogReader | None = None

    def put(self, batch: Batch, stop: threading.Event) -> None:
        self.seen += len(batch.changes)
        self.batches += 1
        if self.seen >= self.rows and self.reader is not None:
            self.reader.stopping.set()

    def done(self) -> None:
        pass


def reader_rate(start: tuple[str, int], db: str, table: str, rows: int) -> dict[str, Any]:
    """relay.binlog.BinlogReader with no Kafka: decode, convert, serialize and batch."""
    handoff = _CountingHandoff(rows)
    reader = binlog.BinlogReader(
        source_settings(db, table),
        Position(*start),
        (-1, -1),
        handoff,  # type: ignore[arg-type]
    )
    handoff.reader = reader
    began = time.perf_counter()
    reader.run()
    elapsed = time.perf_counter() - began
    return {
        "rows": handoff.seen,
        "seconds": elapsed,
        "rows_per_s": handoff.seen / elapsed,
        "batches": handoff.batches,
    }
