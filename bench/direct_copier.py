"""The latency benchmark's baseline: binlog rows straight into another database, no Kafka.

``python -m bench.direct_copier FILE POS DB TABLE DEST SERVER_ID`` reads the binlog from
``FILE:POS`` with python-mysql-replication as released (blocking, like a replica) and
upserts each inserted or updated row of ``DB.TABLE`` into ``DEST.TABLE`` with PyMySQL, in
the statement shape the ``mysql`` handler uses; it runs until it is sent SIGTERM.

The reader thread hands rows to one applier thread, which applies whatever has arrived as
one transaction and commits it at once, never waiting for more: each row in a transaction
of its own while the applier keeps up, and the commits (each a log flush) shared when it
falls behind, as a replica's group commit does. Committing every row on its own could not
keep up with 1,000 commits/s on a shared disk, and a baseline that falls behind measures
the backlog, not the copy. It never imports relay (the benchmark's types need none of its
decoding fixes), so its cost is the library's and PyMySQL's alone.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
from types import FrameType
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import UpdateRowsEvent, WriteRowsEvent

from tests.support.mysql import mysql_url

BATCH_MAX = 4000  # rows per transaction at most, as the mysql handler's batches
SWITCH_INTERVAL_S = 0.0005  # as the aesop worker's: at 5 ms, the applier waits for the GIL


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def upsert_sql(dest: str, table: str, columns: tuple[str, ...]) -> str:
    """INSERT ... ON DUPLICATE KEY UPDATE of every column, as the mysql handler writes."""
    names = ",".join(f"`{c}`" for c in columns)
    values = ",".join(["%s"] * len(columns))
    updates = ",".join(f"`{c}`=VALUES(`{c}`)" for c in columns)
    insert = f"INSERT INTO `{dest}`.`{table}` ({names}) VALUES ({values})"
    return f"{insert} ON DUPLICATE KEY UPDATE {updates}"


def apply_rows(rows: queue.SimpleQueue[dict[str, Any]], dest: str, table: str) -> None:
    """Applies what has arrived as one transaction, then waits for the next row."""
    conn = pymysql.connect(**mysql_url().connect_args(), autocommit=False)
    statements: dict[tuple[str, ...], str] = {}
    with conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        while True:
            batch = [rows.get()]
            while len(batch) < BATCH_MAX and not rows.empty():
                batch.append(rows.get_nowait())
            for image in batch:
                columns = tuple(image)
                sql = statements.get(columns)
                if sql is None:
                    sql = statements[columns] = upsert_sql(dest, table, columns)
                cur.execute(sql, [image[c] for c in columns])
            conn.commit()


def main(argv: list[str]) -> int:
    file, pos, db, table, dest, server_id = argv
    signal.signal(signal.SIGTERM, _stop)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    url = mysql_url()
    settings = {"host": url.host, "port": url.port, "user": url.user, "passwd": url.password}
    stream = BinLogStreamReader(
        connection_settings=settings,
        server_id=int(server_id),
        resume_stream=True,
        log_file=file,
        log_pos=int(pos),
        blocking=True,
        only_events=[WriteRowsEvent, UpdateRowsEvent],
        only_schemas=[db],
        only_tables=[table],
        enable_logging=False,
    )
    rows: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    threading.Thread(target=apply_rows, args=(rows, dest, table), daemon=True).start()
    try:
        for event in stream:
            for row in event.rows:
                rows.put(row["after_values"] if "after_values" in row else row["values"])
    finally:
        stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
