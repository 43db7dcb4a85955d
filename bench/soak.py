"""A seeded chaos soak: two workers, a mixed load, faults, then a check that nothing was lost.

    python -m bench.soak --minutes 6 --seed 1     (make soak ARGS="--minutes 6 --seed 1")

One source on a fresh database, read from the current binlog position, relayed by two workers
of one config, and a ``mysql`` consumer applying it into a replica database on the same
server. A thread commits about 350 changes/s; seeded faults kill, stop and restart workers
and services of the local stack (``docker/stack.sh`` of this checkout). After the last fault
the load stops, the soak waits (bounded) for Kafka and the replica to catch up, then checks:
every committed change in Kafka, per-key order, the replica equal to the source, duplicates
only after a kill -9, no event under the wrong table; and prints recovery times per fault kind.
The fault schedule and the load come from ``random.Random(seed)``. Exit 0 when all holds,
1 when something does not, 2 when the soak could not run (stack not up).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.soak_check import (
    Recovery,
    Verdict,
    check_kafka,
    differences,
    differing_rows_in_kafka,
    ledger_counts,
    missing_in_replica,
    read_tables,
    recovery_times,
)
from bench.soak_faults import (
    SLOTS,
    FaultRecord,
    FaultRunner,
    PlannedFault,
    Workers,
    first_line,
    schedule,
)
from bench.soak_kafka import TopicTail, group_offsets, quiet_aiokafka
from bench.soak_load import Load, create_databases, drop_databases
from tests.support.config import SourceSpec
from tests.support.kafka import delete_topics_starting_with
from tests.support.mysql import master_position
from tests.support.stack import KAFKA, ROOT, Stack, free_port
from tests.support.zookeeper import zk_delete

SERVICES = {"MariaDB": 3306, "ZooKeeper": 2181, "Kafka": 9092}
SOURCE = "soak"
SESSION_TIMEOUT_S = 20
OUTAGE_TARGET_S = 10.0  # changes flow again after MySQL, Kafka or ZooKeeper is back
CRASH_TARGET_S = SESSION_TIMEOUT_S + 15.0  # after a worker is killed or stopped
WORKER_FAULTS = frozenset({"kill9", "sigterm", "kill9_in_kafka"})
PARTITIONS = 4
PROGRESS_EVERY_S = 30.0
OVERRUN_S = 300.0  # past the planned end: faults stuck in stack.sh stop the soak


class SoakError(Exception):
    """The soak cannot go on (an expected failure: one line, no traceback)."""


@dataclass(frozen=True)
class Names:
    app_id: str
    database: str
    replica: str
    topic: str
    consumer: str
    logs: Path

    @classmethod
    def fresh(cls, seed: int) -> Names:
        tag = uuid.uuid4().hex[:6]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        app_id = f"soak{tag}"
        return cls(
            app_id=app_id,
            database=f"soak_{tag}",
            replica=f"soak_{tag}_replica",
            topic=f"aesop.{app_id}",
            consumer=f"{app_id}-replica",
            logs=ROOT / "soak-runs" / f"{stamp}-seed{seed}-{tag}",
        )


def say(message: str) -> None:
    print(message, flush=True)


def check_stack() -> None:
    down = []
    for name, port in SERVICES.items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            down.append(f"{name} on 127.0.0.1:{port}")
    if down:
        raise SoakError(f"local stack not running ({', '.join(down)}); run `make up`")


def write_config(names: Names, start: str) -> Path:
    source = SourceSpec(
        name=SOURCE,
        include=[f"{names.database}.*"],
        server_id=random.SystemRandom().randrange(200_000, 4_000_000),
        start=start,
        topic=names.topic,
    )
    text = (
        f'[aesop]\nid = "{names.app_id}"\nkafka = "kafka://{KAFKA}"\n'
        f'zookeeper = "127.0.0.1:2181"\nzk_root = "/aesop-soak/{names.app_id}"\n'
        f"partitions = {PARTITIONS}\nsession_timeout = {SESSION_TIMEOUT_S}\n\n"
        f"{source.toml()}\n"
        f'[[consumer]]\nname = "{names.consumer}"\ntopics = ["{names.topic}"]\n'
        f'handler = "mysql"\nmysql = "mysql://root@127.0.0.1:3306/{names.replica}"\n'
    )
    path = names.logs / "aesop.toml"
    path.write_text(text)
    return path


class Soak:
    def __init__(
        self, minutes: float, seed: int, rate: float, converge_s: float, keep: bool = False
    ) -> None:
        self.minutes = minutes
        self.keep = keep
        self.seed = seed
        self.rate = rate
        self.converge_s = converge_s
        rng = random.Random(seed)
        self.plan: list[PlannedFault] = schedule(random.Random(rng.getrandbits(64)), minutes)
        self.load_seed = rng.getrandbits(64)
        self.names = Names.fresh(seed)
        self.stack = Stack(ROOT)
        self.load: Load | None = None
        self.tail: TopicTail | None = None
        self.workers: Workers | None = None
        self.faults: FaultRunner | None = None
        self.created = False
        self.extra_faults: list[FaultRecord] = []  # workers that exited by themselves

    # -- the run --------------------------------------------------------------------

    def run(self) -> int:
        names = self.names
        names.logs.mkdir(parents=True)
        say(f"soak: seed {self.seed}, {self.minutes:g} min, logs in {names.logs}")
        for fault in self.plan:
            say(f"  planned +{fault.at:5.1f}s  {fault.describe()}")
        create_databases(names.database, names.replica)
        self.created = True
        start = master_position()
        config = write_config(names, start)
        ports = {slot: free_port() for slot in SLOTS}
        self.workers = Workers(
            config, names.logs, lambda slot: {"AESOP_WEB_PORT": str(ports[slot])}
        )
        first = self.workers.start("a")
        first.wait_for_log(f"relay {SOURCE}: reading", timeout=120)
        self.workers.start("b")
        self.tail = TopicTail(names.topic)
        self.tail.start()
        self.load = Load(names.database, self.load_seed, self.rate)
        t0 = time.time()
        self.load.start()
        self.faults = FaultRunner(self.stack, self.workers, SOURCE, t0)
        self.faults.start(self.plan)
        self._watch(t0)
        self.load.stop()
        stopped = time.time()
        say(
            f"soak: load stopped at +{stopped - t0:.0f}s: {len(self.load.committed)} transactions,"
            f" {self.load.changes} changes, {self.load.errors} errors"
            f" ({self.load.in_doubt} at COMMIT, {self.load.retried} retried)"
        )
        verdict = Verdict()
        converged_s = self._converge(verdict)
        self.tail.stop()
        return self._report(verdict, start, converged_s, stopped - t0)

    def _watch(self, t0: float) -> None:
        """Until the plan is done and its minutes are up; restarts workers that exit by
        themselves (a finding), and stops early if the load or the tail fails."""
        assert self.load and self.tail and self.faults and self.workers
        end = t0 + self.minutes * 60
        hard_end = end + OVERRUN_S
        next_progress = t0 + PROGRESS_EVERY_S
        while not (self.faults.done() and time.time() >= end):
            if self.load.failure is not None:
                raise SoakError(f"the load failed: {first_line(self.load.failure)}")
            if self.tail.failure is not None:
                raise SoakError(f"the Kafka tail failed: {first_line(self.tail.failure)}")
            if time.time() > hard_end:
                raise SoakError(f"faults still running {OVERRUN_S:.0f}s after the planned end")
            self._restart_exited()
            if time.time() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                done = sum(r.ended is not None for r in self.faults.records)
                say(
                    f"  +{time.time() - t0:4.0f}s  committed {self.load.changes} changes,"
                    f" Kafka {len(self.tail.records)} messages, faults {done}/{len(self.plan)}"
                    f", stopped: {', '.join(sorted(self.faults.down)) or 'none'}"
                )
            time.sleep(1.0)

    def _restart_exited(self) -> None:
        assert self.workers is not None
        for slot in SLOTS:
            lock = self.workers.locks[slot]
            if not lock.acquire(blocking=False):
                continue  # a fault has it
            try:
                worker = self.workers.current[slot]
                code = worker.proc.poll()
                if code is None:
                    continue
                now = time.time()
                record = FaultRecord(PlannedFault("exited", 0.0, slot=slot))
                record.started = record.back = record.crashed_at = now
                record.notes.append(
                    f"worker {slot} exited by itself (code {code}): {worker.log_path}"
                )
                self.extra_faults.append(record)
                say(f"  worker {slot} exited by itself (code {code}); restarting it")
                self.workers.start(slot)
            finally:
                lock.release()

    def _converge(self, verdict: Verdict) -> float | None:
        """Wait until Kafka has every committed transaction and the replica equals the
        source; the seconds it took, or None (a stall, with what stood still)."""
        assert self.tail is not None
        names = self.names
        began = time.monotonic()
        deadline = began + self.converge_s
        seen: set[int] = set()
        scanned = 0
        kafka_ok = replica_ok = False
        count = 0
        why = "not checked yet"
        while time.monotonic() < deadline:
            self._restart_exited()
            fresh = self.tail.records[scanned:]  # the tail appends meanwhile
            scanned += len(fresh)
            for record in fresh:
                if record.key and b'"table":"ledger"' in record.key and record.value:
                    after = orjson.loads(record.value)["after"]
                    if after:
                        seen.add(after["txn"])
            try:
                count, _ = ledger_counts(names.database)
                kafka_ok = len(seen) >= count and self.tail.behind() == 0
                replica_count, _ = ledger_counts(names.replica)
                if not kafka_ok:
                    why = f"Kafka has {len(seen)} of {count} ledger rows"
                elif replica_count != count:
                    why = f"the replica's ledger has {replica_count} of {count} rows"
                elif not consumed(names):
                    why = "the consumer group has not committed every partition to its end"
                else:
                    # Every table, the keyless one included: the mysql handler records its
                    # applied offsets in the replica, so no replay applies a change twice.
                    diff = differences(read_tables(names.database), read_tables(names.replica))
                    replica_ok = not diff
                    why = "; ".join(diff.values())[:400]
            except Exception as exc:
                why = f"could not check: {first_line(exc)}"
            if kafka_ok and replica_ok:
                took = time.monotonic() - began
                say(f"soak: converged {took:.0f}s after the load stopped")
                return took
            time.sleep(2.0)
        verdict.fail(
            f"no convergence within {self.converge_s:.0f}s: Kafka has {len(seen)} of {count}"
            f" committed transactions' ledger rows; replica equal: {replica_ok}; last: {why}"
        )
        self._stall_evidence(verdict, seen, count)
        return None

    def _stall_evidence(self, verdict: Verdict, seen: set[int], count: int) -> None:
        names = self.names
        assert self.workers is not None
        if len(seen) < count:
            verdict.notes.append(f"relay: Kafka lacks ledger txns from {min_missing(seen)} on")
        try:
            offsets = group_offsets(names.consumer, names.topic)
            behind = {p: (c, e) for p, (c, e) in offsets.items() if c is None or c < e}
            verdict.notes.append(
                f"consumer {names.consumer}: partitions (committed, end) behind: {behind or 'none'}"
            )
        except Exception as exc:
            verdict.notes.append(f"consumer offsets unreadable: {first_line(exc)}")
        for slot in SLOTS:
            worker = self.workers.current[slot]
            owner = self.workers.owns_relay(slot, SOURCE)
            lines = [ln for ln in worker.log().splitlines() if "relay" in ln or "consumer" in ln]
            verdict.notes.append(
                f"worker {slot} ({worker.log_path.name}, relay owner: {owner}), last lines:"
                + "".join(f"\n      {ln[:220]}" for ln in lines[-4:])
            )

    # -- the verdict ----------------------------------------------------------------

    def _report(self, verdict: Verdict, start: str, converged_s: float | None, ran: float) -> int:
        assert self.load and self.tail and self.faults and self.workers
        names = self.names
        faults = self.faults.records + self.extra_faults
        source = read_tables(names.database)
        replica = read_tables(names.replica)
        events = check_kafka(self.tail.records, names.database, start, source, faults, verdict)
        diff = differences(source, replica)
        verdict.replica_equal = not diff
        for line in diff.values():
            verdict.fail(f"replica differs: {line}")
        if diff:
            self._post_mortem(events, source, replica)
        verdict.dlq = len(read_dlq(names.consumer))
        if verdict.dlq:
            verdict.fail(f"{verdict.dlq} changes dead-lettered to {names.consumer}.dlq")
        for error in self.faults.errors:  # a fault not done proves nothing: the run fails
            verdict.fail(f"fault not done: {error}")
        exits: dict[str, list[FaultRecord]] = {}
        for record in self.extra_faults:
            exits.setdefault(str(record.plan.slot), []).append(record)
        for slot, records in sorted(exits.items()):
            first = records[0].started or 0.0
            last = records[-1].started or 0.0
            verdict.fail(
                f"worker {slot} exited by itself {len(records)} times, from"
                f" +{first - self.faults.t0:.0f}s to +{last - self.faults.t0:.0f}s; the first:"
                f" {records[0].notes[0]}"
            )

        say("")
        say(
            "faults (times from the soak's start; recovery from when every service was back,"
            " after the service came back or the worker was signalled):"
        )
        # Workers that exited by themselves are listed in the failures, not timed here.
        times = recovery_times(self.faults.records, self.load.committed, events, names.replica)
        t0 = self.faults.t0
        by_kind: dict[str, list[tuple[float | None, ...]]] = {}
        over: list[str] = []
        for fault, clear, kafka_s, replica_s, flow_kafka_s, flow_replica_s in times:
            at = f"+{fault.started - t0:5.1f}s" if fault.started else "   --  "
            owner = "" if fault.relay_owner is None else f" relay-owner={fault.relay_owner}"
            wait = ""
            if clear is not None and fault.back is not None and clear > fault.back + 0.05:
                wait = f" (all back {clear - fault.back:.1f}s later)"
            say(
                f"  {at} {fault.kind:<15} {fault.plan.describe():<62} to Kafka {fmt(kafka_s):>6},"
                f" to replica {fmt(replica_s):>6} (flowing {fmt(flow_kafka_s)} / "
                f"{fmt(flow_replica_s)}){wait}{owner} {'; '.join(fault.notes)}"
            )
            by_kind.setdefault(fault.kind, []).append(
                (kafka_s, replica_s, flow_kafka_s, flow_replica_s)
            )
            target = recovery_target(fault, clear, kafka_s, times)
            worst = max((v for v in (kafka_s, replica_s) if v is not None), default=None)
            if worst is not None and worst > target:
                over.append(f"{fault.kind} at {at.strip()}: {worst:.1f}s > {target:.0f}s")
        say(
            "recovery per kind (min / median / max seconds; caught up: the first change"
            " committed after the all-clear is there; flowing: any change arrives again):"
        )
        for kind, pairs in sorted(by_kind.items()):
            say(
                f"  {kind:<15} n={len(pairs)}  caught up: Kafka {spread([p[0] for p in pairs])},"
                f"  replica {spread([p[1] for p in pairs])};  flowing: Kafka"
                f" {spread([p[2] for p in pairs])},  replica {spread([p[3] for p in pairs])}"
            )
        say(
            f"recovery targets: {OUTAGE_TARGET_S:.0f}s after an outage, {CRASH_TARGET_S:.0f}s"
            " (session timeout + 15 s) after a worker is signalled; over: "
            + ("; ".join(over) if over else "none")
        )
        if verdict.duplicates:
            say(f"duplicates by the last fault before them: {dict(verdict.duplicates_by_fault)}")
        say(worker_log_summary(self.workers))
        say(f"worker logs: {names.logs}")
        for note in verdict.notes:
            say(f"note: {note}")
        for failure in verdict.failures:
            say(f"FAIL: {failure}")
        ok = not verdict.failures
        say(
            f"SOAK seed={self.seed} minutes={self.minutes:g} ran={ran:.0f}s faults={len(faults)}"
            f" txns={verdict.committed_txns} changes={verdict.expected_events}"
            f" kafka={verdict.kafka_messages} missing={verdict.missing_events}"
            f" duplicates={verdict.duplicates} (without crash {verdict.duplicates_without_crash})"
            f" wrong_table={verdict.wrong_table} order_violations={verdict.order_violations}"
            f" partition_order={verdict.partition_order_violations}"
            f" replica={'equal' if verdict.replica_equal else 'DIFFERS'}"
            f" converged={'NO' if converged_s is None else f'yes ({converged_s:.0f}s)'}"
            f" -> {'PASS' if ok else 'FAIL'}  logs: {names.logs}"
        )
        return 0 if ok else 1

    def _post_mortem(
        self, events: list[Any], source: dict[str, Any], replica: dict[str, Any]
    ) -> None:
        """Where the changes the replica lacks are in Kafka, the events of each row only one
        side has, and what the consumer recorded, in ``post-mortem.txt`` beside the worker
        logs."""
        names = self.names
        try:
            lines = missing_in_replica(events, source["ledger"], names.replica)
            lines += differing_rows_in_kafka(events, source, replica)
            offsets = group_offsets(names.consumer, names.topic)
            lines.append(f"consumer group (committed, end) per partition: {offsets}")
        except Exception as exc:
            lines = [f"post-mortem incomplete: {first_line(exc)}"]
        path = names.logs / "post-mortem.txt"
        path.write_text("\n".join(lines) + "\n")
        for line in lines[:12]:
            say(f"post-mortem: {line[:300]}")
        say(f"post-mortem: {path}")

    # -- clean-up -------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop everything this soak started and drop what it created, whatever happened."""
        names = self.names
        steps: list[tuple[str, Any]] = []
        if self.faults is not None:
            self.faults.stop.set()
            steps.append(("fault threads", lambda: self.faults and self.faults.join(200)))
            steps.append(("services", lambda: self.faults and self.faults.restore()))
        if self.load is not None:
            steps.append(("load", lambda: self.load and self.load.stop(30)))
        if self.tail is not None:
            steps.append(("Kafka tail", lambda: self.tail and self.tail.stop()))
        if self.workers is not None:
            steps.append(("workers", lambda: self.workers and self.workers.close()))
        if self.created and self.keep:
            say(
                f"soak: kept databases {names.database} and {names.replica}, topics"
                f" {names.topic} and {names.app_id}-*, ZooKeeper /aesop-soak/{names.app_id}"
            )
        elif self.created:
            steps.append(("databases", lambda: drop_databases(names.database, names.replica)))
            prefixes = (f"{names.app_id}-", names.topic)
            steps.append(("topics", lambda: delete_topics_starting_with(*prefixes)))
            steps.append(("ZooKeeper", lambda: zk_delete(f"/aesop-soak/{names.app_id}")))
        steps.append(("local data", lambda: remove_local_data(names.app_id)))
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                say(f"soak: clean-up of {what} failed: {first_line(exc)}")


def consumed(names: Names) -> bool:
    """Has the replica's consumer group committed every partition up to its end?"""
    offsets = group_offsets(names.consumer, names.topic)
    return bool(offsets) and all(c is not None and c >= end for c, end in offsets.values())


def remove_local_data(app_id: str) -> None:
    """Faust's data directories (``<app id>-data``, ``<consumer>-data``) in the worker's cwd."""
    for path in ROOT.glob(f"{app_id}*-data"):
        shutil.rmtree(path, ignore_errors=True)


def read_dlq(consumer: str) -> list[Any]:
    from tests.support.kafka import read_topic

    return read_topic(f"{consumer}.dlq", lambda messages: False, timeout=3)


def min_missing(seen: set[int]) -> int:
    n = 1
    while n in seen:
        n += 1
    return n


def recovery_target(
    fault: FaultRecord,
    clear: float | None,
    kafka_s: float | None,
    times: list[Recovery],
) -> float:
    """Seconds within which changes must flow again after this fault (printed, not failed:
    a shared machine's pauses would make a hard limit flaky). An outage is held to the crash
    target when a worker was killed or stopped in its chain (the faults that share its
    all-clear) or before changes flowed again: a worker stopped while Kafka is down leaves
    its member in the group until its session times out after Kafka is back."""
    if fault.kind not in ("mariadb", "kafka", "zookeeper"):
        return CRASH_TARGET_S
    if clear is None:
        return OUTAGE_TARGET_S
    chain = [f for f, c, *_ in times if c == clear and f.started is not None]
    begun = min((f.started for f in chain if f.started is not None), default=clear)
    flowed = clear + (kafka_s or 0.0)
    signalled = [f.started for f, _, *_ in times if f.kind in WORKER_FAULTS and f.started]
    return CRASH_TARGET_S if any(begun <= at <= flowed for at in signalled) else OUTAGE_TARGET_S


def fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}s"


def spread(values: list[float | None]) -> str:
    known = sorted(v for v in values if v is not None)
    if not known:
        return "n/a"
    never = len(values) - len(known)
    text = f"{known[0]:.1f} / {statistics.median(known):.1f} / {known[-1]:.1f}"
    return text + (f" ({never} never)" if never else "")


def worker_log_summary(workers: Workers) -> str:
    """ERROR and WARNING lines and Tracebacks per log; logs alike are counted as one line."""
    lines = ["worker logs (ERROR / WARNING lines, Tracebacks, exit):"]
    alike: dict[str, list[str]] = {}
    for worker in workers.all:
        text = worker.log()
        counts = [text.count(f"[{level}]") for level in ("ERROR", "WARNING")]
        summary = f"{counts[0]} / {counts[1]}, {text.count('Traceback')}, {worker.proc.returncode}"
        alike.setdefault(summary, []).append(worker.log_path.name)
    for summary, names in alike.items():
        shown = names[0] if len(names) == 1 else f"{len(names)} logs ({names[0]}, ...)"
        lines.append(f"  {shown}: {summary}")
    return "\n".join(lines)


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=6.0, help="load and faults (default 6)")
    parser.add_argument("--seed", type=int, default=1, help="fault schedule and load (default 1)")
    parser.add_argument("--rate", type=float, default=350.0, help="changes/s (default 350)")
    parser.add_argument(
        "--converge", type=float, default=180.0, help="seconds to wait for catch-up (default 180)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the databases, topics and ZooKeeper nodes for a post-mortem",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.converge <= 0:
        parser.error("--minutes, --rate and --converge must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_aiokafka()
    signal.signal(signal.SIGTERM, interrupt)  # cleans up as Ctrl-C does
    try:
        check_stack()
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    soak = Soak(args.minutes, args.seed, args.rate, args.converge, args.keep)
    try:
        return soak.run()
    except KeyboardInterrupt:
        print("soak: interrupted; cleaning up", file=sys.stderr)
        return 130
    except (SoakError, AssertionError) as exc:
        print(f"soak: {first_line(exc)}  (logs: {soak.names.logs})", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C would leave workers, databases or a stopped service behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
