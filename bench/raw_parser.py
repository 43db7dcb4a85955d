"""The untouched pymysqlreplication decode rate, in a process that never imports relay.

Once relay._pmr_patches.apply() has run (every reader does) the library stays patched, so
the library as released is timed in a process of its own:
``python -m bench.raw_parser FILE POS DB TABLE ROWS EVENT...`` prints
``{"rows", "seconds", "rows_per_s"}`` as JSON.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from pymysqlreplication import BinLogStreamReader, event, row_event

from tests.support.mysql import mysql_url

ROW_EVENTS = (row_event.WriteRowsEvent, row_event.UpdateRowsEvent, row_event.DeleteRowsEvent)


def main(argv: list[str]) -> int:
    file, pos, db, table, rows, server_id, *names = argv
    # The same event classes the relay asks for, named by the parent (relay.binlog.EVENTS).
    events = [getattr(row_event, name, None) or getattr(event, name) for name in names]
    url = mysql_url()
    stream = BinLogStreamReader(
        connection_settings={
            "host": url.host,
            "port": url.port,
            "user": url.user,
            "passwd": url.password,
        },
        server_id=int(server_id),
        resume_stream=True,
        log_file=file,
        log_pos=int(pos),
        blocking=False,
        only_events=events,
        freeze_schema=True,
        enable_logging=False,
    )
    assert "relay" not in sys.modules, "relay was imported: the parser is patched"
    print(orjson.dumps(count_rows(stream, db, table, int(rows))).decode())
    return 0


def count_rows(stream: BinLogStreamReader, db: str, table: str, rows: int) -> dict[str, Any]:
    """Decode every row of ``db.table`` until ``rows`` were seen; close the stream; the rate."""
    seen = 0
    began = time.perf_counter()
    try:
        for item in stream:
            if isinstance(item, ROW_EVENTS) and item.schema == db and item.table == table:
                for _row in item.rows:
                    seen += 1
                if seen >= rows:
                    break
    finally:
        elapsed = time.perf_counter() - began
        stream.close()
    return {"rows": seen, "seconds": elapsed, "rows_per_s": seen / elapsed}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
