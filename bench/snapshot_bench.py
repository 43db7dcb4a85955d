"""`make bench`, snapshot: rows/s of an initial snapshot into Kafka against mysqldump, peak RSS.

Run it under the stack lock, since it loads the shared 2-core machine:
``flock /tmp/aesop-stack.lock .venv/bin/python -m bench.snapshot_bench [--rows N] [--quick]``.

A fresh table of ``--rows`` rows (default 1,000,000) and the 7 columns of ``bench.load``
(BIGINT key, INT, BIGINT, VARCHAR, DECIMAL, DATETIME(6), DOUBLE) is read twice, one after
the other:

(a) the baseline: ``mysqldump --single-transaction --quick`` of the table into /dev/null
    (MariaDB's client, as an operator would copy the table), timed from start to exit;
(b) aesop: a worker with ``snapshot = "initial"`` on that table (default chunk), timed from the
    relay's "initial snapshot of" log line until Kafka holds every row (end offsets, which
    count only acknowledged records); its peak RSS is the kernel's VmHWM.

The figure is the ratio of (b)'s rows/s to (a)'s, both measured in the same run; the target
is at least 1x. The process exits 0 whatever the figures (it is not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

import orjson

from bench import ceiling, load
from bench.probes import RssSampler, TopicWatch, clean_up_run, dumps, log_time, worker_log_tail
from bench.relay_bench import Run
from tests.support.config import SourceSpec, write_config
from tests.support.stack import ROOT
from tests.support.workers import Worker

RESULTS = ROOT / "bench" / "results.json"
RESULTS_KEY = "snapshot"
TABLE = "rows7"
STARTED = "initial snapshot of"
TARGET_RATIO = 1.0


def fill(db: str, rows: int) -> None:
    load.create_database(db, (TABLE,))
    with load.connect(db) as conn, conn.cursor() as cur:
        step = 100_000
        for first in range(0, rows, step):
            last = min(rows, first + step)
            cur.execute(
                f"INSERT INTO {TABLE} SELECT seq, seq % 1000, seq * 7919, CONCAT('name-', seq),"
                " (seq % 100000) / 100, '2024-01-01 00:00:00.123456' + INTERVAL seq SECOND,"
                f" seq / 3 FROM seq_{first + 1}_to_{last}"
            )


def dump(db: str) -> float:
    """Seconds mysqldump takes to write the table to /dev/null."""
    began = time.monotonic()
    with open("/dev/null", "wb") as sink:
        subprocess.run(
            ["mysqldump", "--single-transaction", "--quick", "-h", "127.0.0.1", "-P", "3306",
             "-u", "root", db, TABLE],
            stdout=sink, stderr=subprocess.PIPE, check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    return time.monotonic() - began


async def snapshot(run: Run, rows: int) -> dict[str, Any]:
    app_id, topic = f"{run.prefix}-snap", f"{run.prefix}-snap"
    run.app_ids.append(app_id)
    spec = SourceSpec(
        name="bench",
        include=[f"{run.db}.{TABLE}"],
        server_id=ceiling.server_id(),
        start="",
        topic=topic,
        snapshot="initial",
    )
    config = write_config(run.tmp / "snap.toml", app_id, [spec], partitions=8)
    worker = Worker(config, run.tmp / "snap.log")
    sampler = RssSampler(worker.proc.pid).start()
    try:
        await asyncio.to_thread(worker.wait_for_log, STARTED, 180.0)
        began = log_time(worker.log(), STARTED) or time.time()
        async with TopicWatch(topic) as watch:
            count, ended = await watch.wait_for(rows, timeout=1800.0, poll=0.2)
        if count < rows:
            raise RuntimeError(f"only {count} of {rows} rows reached Kafka:\n"
                               f"{worker_log_tail(worker.log_path)}")  # fmt: skip
        seconds = ended - began
    finally:
        sampler.stop()
        try:
            worker.stop(60.0)
        except AssertionError as exc:
            print(f"warning: {exc}", file=sys.stderr)
    return {
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb": round(max(sampler.hwm_kb, sampler.peak_rss_kb) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--keep", action="store_true", help="keep the database and topics")
    args = parser.parse_args(argv)
    rows = 100_000 if args.quick else args.rows
    run = Run(args.keep)
    try:
        fill(run.db, rows)
        dump_s = dump(run.db)
        aesop = asyncio.run(snapshot(run, rows))
    finally:
        if not args.keep:
            load.drop_database(run.db)
            clean_up_run(run.prefix, [], run.app_ids, run.tmp)
    dump_rate = rows / dump_s
    ratio = aesop["rows_per_s"] / dump_rate
    results = {
        "rows": rows,
        "mysqldump": {"seconds": round(dump_s, 3), "rows_per_s": round(dump_rate)},
        "aesop": aesop,
        "ratio_to_mysqldump": round(ratio, 3),
        "meets_target": ratio >= TARGET_RATIO,
    }
    stored = orjson.loads(RESULTS.read_bytes()) if RESULTS.exists() else {}
    stored[RESULTS_KEY] = results
    RESULTS.write_bytes(dumps(stored) + b"\n")
    print(f"snapshot of {rows} rows x 7 columns:")
    print(f"  mysqldump  {dump_s:8.2f} s  {dump_rate:10.0f} rows/s")
    print(f"  aesop      {aesop['seconds']:8.2f} s  {aesop['rows_per_s']:10.0f} rows/s "
          f"(into Kafka, acknowledged), peak RSS {aesop['peak_rss_mb']} MB")  # fmt: skip
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(f"  aesop / mysqldump = {ratio:.2f}x  {verdict} (target {TARGET_RATIO:g}x)")
    print(f"results: {RESULTS} (key {RESULTS_KEY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
