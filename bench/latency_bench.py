"""`make bench`, latency: commit-to-destination latency of the ``mysql`` consumer at 1,000/s.

Run it under the stack lock, since it loads the shared 2-core machine:
``flock /tmp/aesop-stack.lock .venv/bin/python -m bench.latency_bench [--seconds S] [--quick]``.

A writer commits single-row transactions at a steady rate (default 1,000 changes/s, 80%
inserts of new rows, 20% updates of random earlier rows; over four connections, as one
would wait on each commit's log flush) into a fresh source table; an applier copies them
into a destination table on the same server. Two appliers, each on tables of its own, under
the same load, one after the other (``--only together`` also runs both at once):

(a) direct: ``bench.direct_copier``, python-mysql-replication reading the binlog and
    upserting each row with PyMySQL at once, no Kafka: the baseline;
(b) aesop: one aesop worker running the relay (``start = "latest"``) and a ``[[consumer]]``
    with ``handler = "mysql"`` into the destination database. Its topic is read back
    afterwards, so each change's time is also split at the relay: the event's ``ts_ms``
    (built) and its Kafka CreateTime (taken by the relay's producer).

How the two ends are timed, on one clock (the server is on this host, so its ``NOW(6)`` and
this process's ``time.time()`` read the same system clock):

- commit: the writer's ``time.time()`` right after each autocommit statement returns, which
  is after the commit and its binlog write (later than the commit instant by under a
  loopback round trip, so latency is, if anything, understated by about 0.1 ms). Each change
  carries its sequence number in the row (``seq``), so every later step knows which it is.
- visible (the headline): a poller thread asks the destination, every ``POLL_EVERY_S``, for
  the current ``seq`` of every row that still has a change in flight (``WHERE id IN``, by
  primary key, autocommit, so each poll reads a fresh snapshot); a change is visible once its
  row's ``seq`` is at or past its own (changes of one row apply in order). Its time is the
  end of the first poll that saw it: an upper bound, late by at most one poll interval plus
  the poll itself (reported). A poll costs in proportion to the changes in flight, so an
  applier far behind makes polls slower and rarer (at most a quarter of a thread).
- applied (the cross-check): the destination table has one more column than the source,
  ``applied_at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)``.
  The ``mysql`` handler does not create or own destination tables: it reads their columns
  from information_schema and writes only the columns of the event's ``after`` image, as
  ``INSERT ... ON DUPLICATE KEY UPDATE`` of those columns (agents/mysql.py), so an extra
  column keeps its default: set on an insert, and, only because of ``ON UPDATE``, on the
  update of a row that exists (a replayed, identical upsert changes nothing and leaves it).
  It is the applying statement's start time, not the commit's: the handler applies a whole
  batch as one multi-row statement and one transaction, which readers see at its commit, so
  this is a lower bound on visibility; and only the last change of each row is kept.

Latencies count the changes committed in the measured window (after the warm-up). The
applier's CPU is read from /proc over that window, and again over ``IDLE_S`` seconds once
everything is applied and the writer has stopped (a worker that busy-waits shows there).
Figures are also given as ratios to the direct copier's in the same run, because the
machine is shared and noisy. PASS/FAIL is against the project's target (aesop's p99 under
100 ms at 1,000 changes/s); the exit code says only whether the benchmark could run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import ceiling, load
from bench.probes import clean_up_run, dumps, percentile, worker_log_tail
from tests.support.config import SourceSpec, write_config
from tests.support.stack import KAFKA, ROOT

RESULTS = ROOT / "bench" / "results.json"  # shared with the other benchmarks: key below
RESULTS_KEY = "consumer_latency"  # relay_bench has "latency" (commit to Kafka)
PARTITIONS = 8  # the product default ([aesop].partitions)
TABLE = "changes"
RATE = 1000.0
UPDATE_SHARE = 0.2
WRITERS = 4
POLL_EVERY_S = 0.002
IDLE_S = 10.0
READY_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 60.0
TARGET_P99_MS = 100.0
SOURCE = "lat"  # the [[source]] name; the relay logs "relay lat: reading ..."
SOURCE_SQL = (
    "CREATE TABLE {db}.{table} (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, n INT NOT NULL,"
    " name VARCHAR(64) NOT NULL, amount DECIMAL(12,2) NOT NULL, at DATETIME(6) NOT NULL"
    "{extra}) ENGINE=InnoDB"
)
APPLIED_AT = (
    ", applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"
)
INSERT_SQL = (
    "INSERT INTO changes (id, seq, n, name, amount, at) VALUES (%s, %s, %s, %s, %s, NOW(6))"
)
UPDATE_SQL = (
    "UPDATE changes SET seq = %s, n = n + 1, amount = amount + 0.01, at = NOW(6) WHERE id = %s"
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CannotRun(Exception):
    """The benchmark could not measure (stack down, an applier that never became ready)."""


# -- the load and what sees it -------------------------------------------------------------


@dataclass
class SteadyWriter:
    """Commits ``total`` single-row changes at ``rate``/s over ``WRITERS`` connections (one
    would wait on each commit's log flush): change i, whose seq is i + 1, is due at i / rate
    and committed by connection i % WRITERS, at once when late (never batched). Every change
    of a row comes from one connection, so in seq order. ``committed[i]``: its commit time;
    ``ids[i]``: its row; ``done``: the changes committed, in that order (for the pollers)."""

    db: str
    rate: float
    total: int
    committed: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    max_late_s: float = 0.0
    elapsed: float = 0.0

    def run(self, stop: threading.Event) -> None:
        self.committed = [math.nan] * self.total
        self.ids = [0] * self.total
        start = time.monotonic() + 0.05
        threads = [
            threading.Thread(target=self._write, args=(j, start, stop), name=f"writer-{j}")
            for j in range(WRITERS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.elapsed = time.monotonic() - start

    def _write(self, first: int, start: float, stop: threading.Event) -> None:
        rng = random.Random(13 + first)
        mine: list[int] = []  # the rows this connection inserted (and alone updates)
        with load.connect(self.db) as conn, conn.cursor() as cur:
            for i in range(first, self.total, WRITERS):
                if stop.is_set():
                    return
                late = time.monotonic() - (start + i / self.rate)
                if late < 0:
                    time.sleep(-late)
                self.max_late_s = max(self.max_late_s, late)
                if mine and rng.random() < UPDATE_SHARE:
                    row_id = rng.choice(mine)
                    cur.execute(UPDATE_SQL, (i + 1, row_id))
                else:
                    row_id = i + 1
                    name = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=24))
                    cur.execute(INSERT_SQL, (row_id, i + 1, rng.randrange(10**6), name, "10.50"))
                    mine.append(row_id)
                self.ids[i] = row_id
                self.committed[i] = time.time()
                self.done.append(i)


@dataclass
class VisibilityPoller:
    """Polls the destination for the rows with changes in flight; ``visible[i]``: when the
    change with seq i + 1 was first seen there (the end of that poll). A poll costs in
    proportion to the changes in flight, so the pause after one is at least three times its
    length: when the applier falls behind, the poller takes at most a quarter of a thread
    (and the resolution coarsens, where it matters least)."""

    db: str
    writer: SteadyWriter
    every: float = POLL_EVERY_S
    visible: dict[int, float] = field(default_factory=dict)
    polls: int = 0
    poll_seconds: float = 0.0
    in_flight: int = 0
    taken: int = 0

    def run(self, stop: threading.Event) -> None:
        waiting: dict[int, list[int]] = {}  # row id -> its changes not yet seen, in seq order
        done, ids = self.writer.done, self.writer.ids
        with load.connect(self.db) as conn, conn.cursor() as cur:
            while not stop.is_set():
                began = time.monotonic()
                for index in done[self.taken : len(done)]:
                    waiting.setdefault(ids[index], []).append(index)
                    self.taken += 1
                rows = list(waiting)
                for chunk in range(0, len(rows), 5000):
                    marks = ",".join(map(str, rows[chunk : chunk + 5000]))
                    cur.execute(f"SELECT id, seq FROM changes WHERE id IN ({marks})")
                    found = cur.fetchall()
                    now = time.time()
                    for row_id, seq in found:
                        pending = waiting[row_id]
                        while pending and pending[0] + 1 <= seq:
                            self.visible[pending.pop(0)] = now
                        if not pending:
                            del waiting[row_id]
                took = time.monotonic() - began
                if rows:
                    self.polls += 1
                    self.poll_seconds += took
                self.in_flight = sum(map(len, waiting.values()))
                stop.wait(max(self.every - took, 3 * took))


def cpu_ticks(pid: int) -> dict[int, int]:
    """utime + stime of ``pid`` (key 0: the whole process, threads that ended included) and
    of each of its live threads (key: thread id), in clock ticks."""
    ticks = {}
    paths = [(0, f"/proc/{pid}/stat")]
    with contextlib.suppress(OSError):
        paths += [(int(t), f"/proc/{pid}/task/{t}/stat") for t in os.listdir(f"/proc/{pid}/task")]
    for key, path in paths:
        with contextlib.suppress(OSError), open(path) as stat:
            fields = stat.read().rpartition(")")[2].split()
            ticks[key] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_share(before: dict[int, int], after: dict[int, int], seconds: float) -> float:
    """The process's CPU over ``seconds``, as a share of one core."""
    return (after.get(0, 0) - before.get(0, 0)) / CLOCK_TICKS / seconds


def cpu_pressure() -> float:
    """Microseconds in which some runnable task waited for a CPU (PSI; 0 where unavailable)."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/pressure/cpu") as psi:
        return float(psi.readline().split("total=")[1])
    return 0.0


def busiest_threads(
    pid: int, before: dict[int, int], after: dict[int, int], seconds: float, top: int = 3
) -> list[tuple[str, float]]:
    """The threads that spent the most CPU over ``seconds``: (name and id, share of a core)."""
    deltas = {tid: ticks - before.get(tid, 0) for tid, ticks in after.items() if tid}
    found = []
    for tid in sorted(deltas, key=lambda t: -deltas[t])[:top]:
        name = "?"
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/comm") as comm:
            name = comm.read().strip()
        label = f"{name} (main: the event loop)" if tid == pid else f"{name} ({tid})"
        found.append((label, deltas[tid] / CLOCK_TICKS / seconds))
    return found


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1e3 for v in values]
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 0.50),
        "p95_ms": percentile(ms, 0.95),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms, default=math.nan),
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
    }


# -- the appliers ----------------------------------------------------------------------------


class Run:
    """One benchmark run: its names, its scratch directory, and what to clean up."""

    def __init__(self, keep: bool) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"bench-lat-{self.id}"
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="aesop-latency-bench-"))
        self.databases: list[str] = []
        self.app_ids: list[str] = []
        self.groups: list[str] = []

    def database(self, name: str, extra: str = "") -> str:
        """A fresh database ``bench_lat_<run>_<name>`` with the table (plus ``extra``)."""
        db = f"bench_lat_{self.id}_{name}"
        self.databases.append(db)
        with load.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
            cur.execute(SOURCE_SQL.format(db=db, table=TABLE, extra=extra))
        return db

    def cleanup(self) -> None:
        if self.keep:
            print(f"kept: databases bench_lat_{self.id}_*, topics {self.prefix}-*, logs {self.tmp}")
            return
        for db in self.databases:
            with contextlib.suppress(Exception):
                load.drop_database(db)
        clean_up_run(self.prefix, self.groups, self.app_ids, self.tmp)


class Applier:
    """A process that copies the source table into the destination: its pid, log, stop."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def ready(self) -> None:
        """Return once it reads the binlog (a change after this will be applied)."""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        raise NotImplementedError


class DirectCopier(Applier):
    def __init__(self, run: Run, name: str, source: str, dest: str) -> None:
        file, pos = load.master_status()
        self.log_path = run.tmp / f"{name}.log"
        command = [sys.executable, "-m", "bench.direct_copier", file, str(pos), source, TABLE]
        command += [dest, str(ceiling.server_id())]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class AesopWorker(Applier):
    """One aesop worker, relay and mysql consumer, as ``faust -A app worker`` runs it (through
    ``bench.named_worker``, which only names its threads in /proc)."""

    def __init__(self, run: Run, name: str, source: str, dest: str) -> None:
        prefix = f"{run.prefix}-{name}"
        app_id, consumer, topic = f"{prefix}-w", f"{prefix}-mysql", f"{prefix}-events"
        self.topic = topic
        run.app_ids.append(app_id)
        run.groups += [app_id, consumer]
        spec = SourceSpec(
            name=SOURCE,
            include=[f"{source}.{TABLE}"],
            server_id=ceiling.server_id(),
            start="latest",
            topic=topic,
        )
        extra = (
            f'\n[[consumer]]\nname = "{consumer}"\ntopics = ["{topic}"]\nhandler = "mysql"\n'
            f'mysql = "mysql://root@127.0.0.1:3306/{dest}"\n'
        )
        path = run.tmp / f"{name}.toml"
        config = write_config(path, app_id, [spec], extra, partitions=PARTITIONS)
        self.log_path = run.tmp / f"{name}.log"
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.named_worker"],
                cwd=ROOT,
                env={**os.environ, "AESOP_CONFIG": str(config)},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def ready(self) -> None:
        reading = f"relay {SOURCE}: reading"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while reading not in self.log_path.read_text(errors="replace"):
            if not self.alive():
                print(worker_log_tail(self.log_path), file=sys.stderr)
                raise CannotRun(f"the aesop worker exited ({self.proc.returncode}) at start")
            if time.monotonic() > deadline:
                raise CannotRun(f"the aesop worker did not log {reading!r} in {READY_TIMEOUT_S}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                print("warning: the aesop worker did not stop in 60 s; killed", file=sys.stderr)
                self.proc.kill()
                self.proc.wait(10)


# -- one phase -------------------------------------------------------------------------------


def _wait_for_marker(appliers: dict[str, Applier], source: str, dests: dict[str, str]) -> None:
    """Commit row 0 and wait until every applier has copied it: each pipeline runs."""
    with load.connect(source) as conn, conn.cursor() as cur:
        cur.execute(INSERT_SQL, (0, 0, 0, "marker", "0.00"))
    deadline = time.monotonic() + READY_TIMEOUT_S
    for label, applier in appliers.items():
        with load.connect(dests[label]) as conn, conn.cursor() as cur:
            while not cur.execute("SELECT 1 FROM changes WHERE id = 0"):
                if not applier.alive():
                    code = applier.proc.returncode
                    raise CannotRun(f"the {label} applier exited ({code}) before it ran")
                if time.monotonic() > deadline:
                    raise CannotRun(f"row 0 did not reach {dests[label]} in {READY_TIMEOUT_S:.0f}s")
                time.sleep(0.1)


def _check_destination(source: str, dest: str) -> dict[str, Any]:
    totals = []
    for db in (source, dest):
        with load.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*), COALESCE(SUM(seq), 0), COALESCE(SUM(n), 0) FROM changes")
            totals.append([int(v) for v in cur.fetchone()])
    return {"source": totals[0], "destination": totals[1], "ok": totals[0] == totals[1]}


def _applied_at(dest: str) -> dict[int, float]:
    """seq -> applied_at (epoch seconds) of each destination row: each row's last change."""
    with load.connect(dest) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq, UNIX_TIMESTAMP(applied_at) FROM changes WHERE seq > 0")
        return {int(seq): float(at) for seq, at in cur.fetchall()}


def _slow_seconds(
    committed: list[float], latencies: dict[int, float], origin: float
) -> list[tuple[int, float, int]]:
    """The seconds of the measured window with a change that missed the target, worst
    first: (second, its max in ms, how many changes missed)."""
    worst: dict[int, list[float]] = {}
    for index, latency in latencies.items():
        if latency * 1e3 >= TARGET_P99_MS:
            worst.setdefault(int(committed[index] - origin), []).append(latency * 1e3)
    found = [(s, round(max(v), 1), len(v)) for s, v in worst.items()]
    return sorted(found, key=lambda f: -f[1])


def binlog_bytes() -> int:
    """Bytes in the server's binlogs: their growth over a window is what every reader of the
    binlog had to read through then, this benchmark's changes and anyone else's."""
    with load.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return sum(int(row[1]) for row in cur.fetchall())


def phase(
    run: Run,
    name: str,
    appliers: dict[str, type[Applier]],
    warmup: float,
    seconds: float,
    rate: float,
) -> dict[str, dict[str, Any]]:
    """One writer's load, applied by each of ``appliers`` (label: kind) into a destination
    of its own, all at once; the figures per label."""  # fmt: skip
    source = run.database(name)
    began = time.monotonic()
    dests, started = {}, {}
    stop_writer, stop_pollers = threading.Event(), threading.Event()
    writer = SteadyWriter(source, rate, int(rate * (warmup + seconds)))
    pollers, threads = {}, [threading.Thread(target=writer.run, args=(stop_writer,))]
    window: dict[str, Any] = {}
    try:
        for label, kind in appliers.items():
            dests[label] = run.database(f"{name}_{label}", APPLIED_AT)
            started[label] = kind(run, f"{name}-{label}", source, dests[label])
        for applier in started.values():
            applier.ready()
        _wait_for_marker(started, source, dests)
        for label in started:
            pollers[label] = VisibilityPoller(dests[label], writer)
            threads.append(threading.Thread(target=pollers[label].run, args=(stop_pollers,)))
        ready_seconds = time.monotonic() - began
        print(f"{name}: ready after {ready_seconds:.1f}s; {warmup:.0f}s warm-up,"
              f" {seconds:.0f}s measured", flush=True)  # fmt: skip
        for thread in threads:
            thread.start()
        t0 = time.monotonic()
        time.sleep(warmup)
        window["before"] = _window_mark(started)
        time.sleep(max(0.0, t0 + warmup + seconds - time.monotonic()))
        window["after"] = _window_mark(started)
        threads[0].join(DRAIN_TIMEOUT_S + seconds)
        stop_writer.set()
        threads[0].join()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        committed = sum(not math.isnan(t) for t in writer.committed)
        while any(p.taken < committed or p.in_flight for p in pollers.values()):
            if time.monotonic() > deadline or not all(a.alive() for a in started.values()):
                break
            time.sleep(0.05)
        stop_pollers.set()
        for thread in threads[1:]:
            thread.join()
        time.sleep(2.0)  # let the last offset commit and position writes settle
        window["idle_before"] = _window_mark(started)
        time.sleep(IDLE_S)
        window["idle_after"] = _window_mark(started)
        dead = [label for label, applier in started.items() if not applier.alive()]
        # Name the threads while they are there.
        load_threads, idle_threads = {}, {}
        for label, applier in started.items():
            pid, before, after = applier.proc.pid, window["before"], window["after"]
            span = after["at"] - before["at"]
            load_threads[label] = busiest_threads(pid, before[label], after[label], span)
            before, after = window["idle_before"], window["idle_after"]
            idle_threads[label] = busiest_threads(pid, before[label], after[label], IDLE_S)
    finally:
        stop_writer.set()
        stop_pollers.set()
        for thread in threads:
            if thread.is_alive():
                thread.join()
        for applier in started.values():
            applier.stop()
    for label in dead:
        print(worker_log_tail(started[label].log_path), file=sys.stderr)
        raise CannotRun(f"{name}: the {label} applier exited during the run")

    committed_at = writer.committed
    measured = [i for i in range(int(rate * warmup), writer.total) if committed_at[i] > 0]
    origin = committed_at[measured[0]] if measured else 0.0
    before, after = window["before"], window["after"]
    span = after["at"] - before["at"]
    shared = {
        "ready_seconds": ready_seconds,
        "appliers": list(started),
        "load": {
            "target_rate": rate,
            "changes": committed,
            "achieved_rate": committed / writer.elapsed if writer.elapsed else 0.0,
            "max_late_ms": writer.max_late_s * 1e3,
        },
        # The machine is shared: the share of the window in which some task waited for a
        # CPU, and the binlog every applier read through (this benchmark's and others').
        "machine_cpu_wait_share": (after["psi"] - before["psi"]) / 1e6 / span,
        "binlog_mb_per_s": (after["binlog"] - before["binlog"]) / 1e6 / span,
    }
    results = {}
    for label, poller in pollers.items():
        visible = {i: poller.visible[i] - committed_at[i] for i in measured if i in poller.visible}
        applied_at = _applied_at(dests[label])
        applied = [applied_at[i + 1] - committed_at[i] for i in measured if i + 1 in applied_at]
        idle = (window["idle_before"][label], window["idle_after"][label])
        results[label] = {
            **shared,
            "visible": summary(list(visible.values())),
            "not_visible": len(measured) - len(visible),
            "applied": summary(applied),
            "poll": {
                "polls": poller.polls,
                "mean_poll_ms": poller.poll_seconds / poller.polls * 1e3 if poller.polls else None,
                "every_ms": POLL_EVERY_S * 1e3,
            },
            "cpu": {
                "load_share": cpu_share(before[label], after[label], span),
                "idle_share": cpu_share(*idle, IDLE_S),
                "load_threads": load_threads[label],
                "idle_threads": idle_threads[label],
            },
            "slow_seconds": _slow_seconds(committed_at, visible, origin),
            "destination": _check_destination(source, dests[label]),
        }
        applier = started[label]
        if isinstance(applier, AesopWorker):
            stamps = asyncio.run(_relay_stamps(applier.topic))
            seen = [i for i in measured if i + 1 in stamps]
            results[label]["kafka"] = {
                what: summary([stamps[i + 1][n] - committed_at[i] for i in seen])
                for n, what in enumerate(("relay_built", "produced"))
            }
            results[label]["tail"] = _tail_split(visible, committed_at, stamps)
        if results[label]["not_visible"]:
            print(worker_log_tail(started[label].log_path), file=sys.stderr)
    return results


def _tail_split(
    visible: dict[int, float], committed_at: list[float], stamps: dict[int, tuple[float, float]]
) -> dict[str, float] | None:
    """Where the slowest 1% of changes (visible at or past the p99) spent their time: the
    medians of commit to the relay's producer, and of the producer to visible."""
    if not visible:
        return None
    p99 = percentile(list(visible.values()), 0.99)
    slow = [i for i, v in visible.items() if v >= p99 and i + 1 in stamps]
    if not slow:
        return None
    relay = sorted(stamps[i + 1][1] - committed_at[i] for i in slow)
    after = sorted(visible[i] - (stamps[i + 1][1] - committed_at[i]) for i in slow)
    return {
        "count": len(slow),
        "relay_ms": relay[len(relay) // 2] * 1e3,
        "consumer_ms": after[len(after) // 2] * 1e3,
    }


async def _relay_stamps(topic: str, timeout: float = 60.0) -> dict[int, tuple[float, float]]:
    """seq -> (the event's ts_ms, when the relay built it; its CreateTime, when the relay's
    producer took it), in seconds, for each change event on ``topic``: how much of the
    latency is spent before Kafka, and so how much in the consumer."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    stamps: dict[int, tuple[float, float]] = {}
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while not (found := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                return stamps
            await consumer._client.force_metadata_update()  # no public way
            await asyncio.sleep(0.2)
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(partitions)
        while time.monotonic() < deadline:
            if all([await consumer.position(tp) >= ends[tp] for tp in partitions]):
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                for record in records:
                    event = orjson.loads(record.value)
                    seq = (event.get("after") or {}).get("seq")
                    if seq:
                        stamps[seq] = (event["ts_ms"] / 1e3, record.timestamp / 1e3)
        return stamps
    finally:
        await consumer.stop()


def _window_mark(appliers: dict[str, Applier]) -> dict[str, Any]:
    """Now: the time, the machine's CPU pressure, the binlog size, each applier's CPU ticks."""
    mark: dict[str, Any] = {label: cpu_ticks(a.proc.pid) for label, a in appliers.items()}
    mark.update({"at": time.monotonic(), "psi": cpu_pressure(), "binlog": binlog_bytes()})
    return mark


# -- the run ----------------------------------------------------------------------------------


def _stack_check() -> None:
    try:
        load.master_status()
    except Exception as exc:
        raise CannotRun(f"MariaDB on 127.0.0.1:3306 does not answer ({exc}); run make up") from None

    async def topics() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=10_000)
        await admin.start()
        await admin.close()

    try:
        asyncio.run(asyncio.wait_for(topics(), 20.0))
    except Exception as exc:
        raise CannotRun(f"Kafka on {KAFKA} does not answer ({exc!r}); run make up") from None


# Name: the appliers that run at once under that phase's load. "together" (not run unless
# asked) times both under one load at once: a like-for-like ratio on a noisy machine, but
# two appliers and two pollers overload a 2-core one, and each then slows the other.
PHASES = {
    "direct": {"direct": DirectCopier},
    "aesop": {"aesop": AesopWorker},
    "together": {"direct": DirectCopier, "aesop": AesopWorker},
}


def _git_head() -> str:
    """The commit measured, ``+dirty`` when relay/, agents/ or app/ differ from it."""
    git = ["git", "-C", str(ROOT)]
    with contextlib.suppress(OSError):
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "relay", "agents", "app"],
                               capture_output=True)  # fmt: skip
        return head.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else "")
    return "unknown"


def _ratios(direct: dict[str, Any], aesop: dict[str, Any]) -> dict[str, float]:
    ratios = {}
    for measure in ("visible", "applied"):
        for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
            base = direct[measure][key]
            if base and not math.isnan(base):
                ratios[f"{measure}_{key[:-3]}"] = aesop[measure][key] / base
    if direct["cpu"]["load_share"]:
        ratios["cpu"] = aesop["cpu"]["load_share"] / direct["cpu"]["load_share"]
    return ratios


def _line(label: str, figures: dict[str, float]) -> str:
    return (
        f"    {label:26} {figures['count']:6d}  p50 {figures['p50_ms']:7.1f}"
        f"  p95 {figures['p95_ms']:7.1f}  p99 {figures['p99_ms']:7.1f}"
        f"  max {figures['max_ms']:8.1f} ms"
    )


def _report_applier(label: str, result: dict[str, Any]) -> list[str]:
    cpu = result["cpu"]
    lines = [
        f"  {label}: CPU {cpu['load_share']:.0%} of a core under load, {cpu['idle_share']:.1%}"
        f" idle after it; destination {'ok' if result['destination']['ok'] else 'WRONG'}"
    ]
    for when in ("load", "idle"):
        threads = ", ".join(f"{n} {share:.1%}" for n, share in cpu[f"{when}_threads"])
        lines.append(f"    busiest threads, {when}: {threads}")
    lines.append(_line("visible (poll upper bound)", result["visible"]))
    lines.append(_line("applied (applied_at)", result["applied"]))
    for what, label in (("relay_built", "relay built the event"), ("produced", "producer took it")):
        if what in result.get("kafka", {}):
            lines.append(_line(label, result["kafka"][what]))
    tail = result.get("tail")
    if tail:
        lines.append(
            f"    slowest 1% ({tail['count']} changes), medians: commit to the relay's producer"
            f" {tail['relay_ms']:.1f} ms, from there to visible {tail['consumer_ms']:.1f} ms"
        )
    if result["not_visible"]:
        lines.append(f"    NOT VISIBLE after the drain: {result['not_visible']} changes")
    slow = result["slow_seconds"]
    if slow:
        shown = ", ".join(f"{s}s {m:.0f} ms ({n})" for s, m, n in slow[:6])
        lines.append(
            f"    {len(slow)} seconds had a change at {TARGET_P99_MS:.0f} ms or more; worst"
            f" (second of the window, max, changes): {shown}"
        )
    return lines


def _report(results: dict[str, Any]) -> None:
    lines = [
        f"aesop commit-to-destination latency  ({results['rate']:.0f} changes/s,"
        f" {1 - UPDATE_SHARE:.0%} inserts / {UPDATE_SHARE:.0%} updates, {results['seconds']:.0f}s"
        f" after {results['warmup']:.0f}s warm-up, run {results['run']}, {results['git']})"
    ]
    for name in PHASES:
        phase_results = results.get(name)
        if not phase_results:
            continue
        first = next(iter(phase_results.values()))
        load_ = first["load"]
        lines.append(
            f" phase {name}: writer {load_['achieved_rate']:.0f}/s (at most"
            f" {load_['max_late_ms']:.0f} ms late); machine: tasks waiting for a CPU"
            f" {first['machine_cpu_wait_share']:.0%} of the time, binlog growing"
            f" {first['binlog_mb_per_s']:.2f} MB/s"
        )
        for label, result in phase_results.items():
            lines += _report_applier(label, result)
        poll = first["poll"]
        if poll["mean_poll_ms"]:
            lines.append(
                f"    (visibility polled every {poll['every_ms']:.0f} ms or more, a poll taking"
                f" {poll['mean_poll_ms']:.2f} ms on average)"
            )
    for name, r in results.get("ratios", {}).items():
        lines.append(
            "  aesop / direct, {}: visible p50 {:.1f}x p95 {:.1f}x p99 {:.1f}x max {:.1f}x;"
            " applied p50 {:.1f}x p99 {:.1f}x; CPU {:.1f}x".format(
                name, r.get("visible_p50", math.nan), r.get("visible_p95", math.nan),
                r.get("visible_p99", math.nan), r.get("visible_max", math.nan),
                r.get("applied_p50", math.nan), r.get("applied_p99", math.nan),
                r.get("cpu", math.nan),
            )
        )  # fmt: skip
    for name, ok in results["checks"].items():
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_bench", description=__doc__)
    parser.add_argument("--seconds", type=float, help="measured duration (60)")
    parser.add_argument("--warmup", type=float, help="warm-up before it (10)")
    parser.add_argument("--rate", type=float, default=RATE, help="changes/s (1000)")
    parser.add_argument("--quick", action="store_true", help="10 s measured, 5 s warm-up")
    parser.add_argument(
        "--only", default="direct,aesop", help="phases to run: direct, aesop, together"
    )
    parser.add_argument("--keep", action="store_true", help="keep databases, topics and logs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    warmup = args.warmup or (5.0 if args.quick else 10.0)
    phases = [name for name in PHASES if name in args.only.split(",")]
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git_head(),
        "rate": args.rate,
        "seconds": seconds,
        "warmup": warmup,
        "update_share": UPDATE_SHARE,
        "target_p99_ms": TARGET_P99_MS,
    }
    try:
        _stack_check()
    except CannotRun as exc:
        print(f"latency bench: cannot run: {exc}", file=sys.stderr)
        return 1
    run = Run(args.keep)
    results["run"] = run.id
    sys.setswitchinterval(0.0005)  # the writer's commit stamps must not wait for the pollers
    try:
        for name in phases:
            results[name] = phase(run, name, PHASES[name], warmup, seconds, args.rate)
            for label, result in results[name].items():
                p99 = result["visible"]["p99_ms"]
                print(f"{name}: {label} visible p99 {p99:.1f} ms", flush=True)
    except CannotRun as exc:
        print(f"latency bench: cannot run: {exc}", file=sys.stderr)
        return 1
    finally:
        run.cleanup()
    results["ratios"] = {}
    if "direct" in results and "aesop" in results:
        pair = results["direct"]["direct"], results["aesop"]["aesop"]
        results["ratios"]["one after the other"] = _ratios(*pair)
    if "together" in results:
        pair = results["together"]["direct"], results["together"]["aesop"]
        results["ratios"]["at once"] = _ratios(*pair)
    results["checks"] = {}
    aesop = results.get("aesop", results.get("together", {})).get("aesop")
    if aesop:
        p99 = aesop["visible"]["p99_ms"]
        name = f"aesop p99 < {TARGET_P99_MS:.0f} ms at {args.rate:.0f} changes/s ({p99:.1f} ms)"
        results["checks"][name] = p99 < TARGET_P99_MS and not aesop["not_visible"]
    everything = orjson.loads(args.output.read_bytes()) if args.output.exists() else {}
    everything[RESULTS_KEY] = results
    args.output.write_bytes(dumps(everything) + b"\n")
    _report(results)
    print(f"results: {args.output} (key {RESULTS_KEY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
