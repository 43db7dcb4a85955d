"""`make bench`, consumers: events/s through a ``[[consumer]]`` against the raw consume rate.

Run it under the stack lock, since it loads the shared 2-core machine:
``flock /tmp/aesop-stack.lock .venv/bin/python -m bench.consumer_bench [--events N] [--quick]``.

One topic of 8 partitions is filled once with N change events of the relay's exact shape:
they are built here (no binlog) from the same row changes ``bench.load.load_mixed`` commits,
keyed and published as the relay does (``relay.publish.Publisher``, murmur2 partitioner).
Then, each in its own processes and from the beginning of that topic:

(a) raw: an AIOKafkaConsumer reads the topic to its end with getmany, no processing
    (before and after the rest; the faster run is the baseline, the machine is noisy);
(b) noop: a consumer whose handler is ``bench.handlers:Noop`` (a Handler that takes each
    batch and does nothing: the consumer's own cost), on one worker, then two; and
    ``bench.handlers:noop``, a function that gets each event decoded as a dict, on one;
(c) mysql: a consumer with ``handler = "mysql"`` into a fresh MariaDB database, one worker
    and two (checked afterwards: the destination holds exactly the rows the events leave).

A consumer's progress is its own: the worker's ``<name>-applied-changelog`` records
``{scn, row, offset, ts_ms}`` per partition and batch. A consumer's rate runs from its first
applied batch to the batch that reached the end of the last partition (worker start-up and
group join excluded; the start-up is reported beside it); with two workers also from the
moment both had applied a batch (the second one's join rebalances the first). Per worker,
``bench.consumer_worker`` counts the events each worker was handed. Figures are ratios to
the raw consume rate of the same run; the process exits 0 whatever they are (not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import decimal
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.partitioner import partition_for_key
from bench import load
from bench.probes import clean_up_run, dumps, worker_log_tail
from relay.handoff import Batch, SerializedChange
from relay.publish import Publisher
from tests.support.config import write_config
from tests.support.stack import KAFKA, ROOT
from tests.support.workers import Worker

RESULTS = ROOT / "bench" / "results.json"  # shared with bench.relay_bench: key "consumers"
PARTITIONS = 8  # the product default ([aesop].partitions)
TABLE = "changes"
FILE = "mysql-bin.000004"
TARGETS = {"noop_ratio_min": 0.5}
PHASES = ("raw", "noop1", "noop2", "fn1", "mysql1", "mysql2")


# -- the events ---------------------------------------------------------------------------


def _image(values: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(load.COLUMNS.split(", "), values, strict=True))


def _now6() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"


def change_events(db: str, count: int, txn_rows: int = 100) -> Iterator[list[SerializedChange]]:
    """The relay's events, a transaction at a time, for the row changes ``load_mixed`` makes:
    per transaction one DELETE, one UPDATE and one multi-row INSERT rows event, in that order,
    with the same random choices (seed 7), ids, values and counts."""
    rng = random.Random(7)
    rows: dict[int, dict[str, Any]] = {}
    live: list[int] = []
    dead = 0
    next_id = 1
    done = 0
    pos = 4
    gtid = 0
    cent = decimal.Decimal("0.01")
    while done < count:
        size = min(txn_rows, count - done)
        pool = len(live) - dead
        deletes = min(int(size * load.MIX[2]), pool // 2)
        updates = min(int(size * load.MIX[1]), pool - deletes)
        inserts = size - updates - deletes
        images: list[tuple[str, list[tuple[Any, Any]]]] = []
        if deletes:
            doomed = live[dead : dead + deletes]
            dead += deletes
            images.append(("d", [(rows.pop(i), None) for i in doomed]))
        if updates:
            picked = {live[rng.randrange(dead, len(live))] for _ in range(updates)}
            while len(picked) < updates:
                picked.add(live[rng.randrange(dead, len(live))])
            pairs = []
            at = _now6()
            for i in sorted(picked):  # the server updates in primary key order
                before = rows[i]
                amount = decimal.Decimal(before["amount"]) + cent
                after = {**before, "n": before["n"] + 1, "amount": str(amount),
                         "name": f"updated-{done}", "at": at}  # fmt: skip
                rows[i] = after
                pairs.append((before, after))
            images.append(("u", pairs))
        fresh = list(range(next_id, next_id + inserts))
        next_id += inserts
        created = [_image(load._row(rng, i)) for i in fresh]
        rows.update(zip(fresh, created, strict=True))
        live.extend(fresh)
        images.append(("c", [(None, after) for after in created]))
        done += size

        gtid += 1
        pos += 120  # GTID, BEGIN, table map
        commit_ms = int(time.time()) * 1000
        seq = 0
        changes: list[SerializedChange] = []
        for op, pairs in images:
            scn = 4 << 32 | pos
            source = {"name": "bench", "server_id": 1, "db": db, "table": TABLE, "file": FILE,
                      "pos": pos, "gtid": f"0-1-{gtid}", "ts_ms": commit_ms}  # fmt: skip
            now_ms = int(time.time() * 1000)
            for row, (before, after) in enumerate(pairs):
                image = before if after is None else after
                changed = [k for k in after if before[k] != after[k]] if op == "u" else []
                txn = {"seq": seq, "last": seq == size - 1}
                event = {"op": op, "source": source, "scn": scn, "row": row, "txn": txn,
                         "key": {"id": image["id"]}, "before": before, "after": after,
                         "changed": changed, "ts_ms": now_ms}  # fmt: skip
                seq += 1
                key = orjson.dumps({"db": db, "table": TABLE, "pk": {"id": image["id"]}})
                changes.append(SerializedChange(key, orjson.dumps(event), scn, row))
            pos += 60 + 90 * len(pairs) * (2 if op == "u" else 1)
        pos += 31  # XID
        yield changes
    expected = {"rows": len(rows), "sum_n": sum(r["n"] for r in rows.values())}
    change_events.expected = expected  # type: ignore[attr-defined]


class _Producer:
    """What ``relay.publish.Publisher`` needs of faust's producer, on a plain aiokafka one."""

    partitioner = staticmethod(partition_for_key)

    def __init__(self, aio: AIOKafkaProducer) -> None:
        self.aio = aio

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self.aio


async def fill(topic: str, db: str, count: int) -> dict[str, Any]:
    """Create ``topic`` and publish ``count`` events to it as the relay does."""
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    aio = AIOKafkaProducer(bootstrap_servers=KAFKA, acks=-1, linger_ms=5, max_batch_size=256 * 1024)
    await aio.start()
    began = time.perf_counter()
    size = 0
    try:
        publisher = Publisher(_Producer(aio), topic)
        pending: list[Batch] = []
        for changes in change_events(db, count):
            size += sum(len(c.value) for c in changes)
            pending.append(Batch(changes))
            if len(pending) == 64:
                for futures in await publisher.publish(pending):
                    await asyncio.gather(*futures)
                pending = []
        if pending:
            for futures in await publisher.publish(pending):
                await asyncio.gather(*futures)
    finally:
        await aio.stop()
    return {
        "events": count,
        "seconds": time.perf_counter() - began,
        "mean_value_bytes": size / count,
        "expected": change_events.expected,  # type: ignore[attr-defined]
    }


async def end_offsets(topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


# -- (a) raw consume, in a process of its own ----------------------------------------------


async def raw_consume(topic: str) -> dict[str, Any]:
    """Read ``topic`` from its beginning to its end offsets; no processing."""
    launched = time.time()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=KAFKA, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        count = 0
        first: float | None = None
        first_count = 0
        while count < total:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                count += len(records)
            if first is None and count:
                first, first_count = time.time(), count
        ended = time.time()
    finally:
        await consumer.stop()
    assert first is not None
    return {
        "events": count,
        "startup_seconds": first - launched,
        "seconds": ended - first,
        "events_per_s": (count - first_count) / (ended - first),
    }


def raw_run(topic: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.consumer_bench", "--raw-consume", topic],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
        timeout=600,
    )
    return orjson.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- (b), (c) consumers in workers ---------------------------------------------------------


class BenchWorker(Worker):
    """A worker run by ``bench.consumer_worker`` (progress file; optional profile)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str]) -> None:
        self.config = config
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.launched = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.consumer_worker"],
            cwd=ROOT,
            env={**os.environ, "AESOP_CONFIG": str(config), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


class ChangelogWatch:
    """Reads a consumer's applied-position changelog until every partition reached its end."""

    def __init__(self, topic: str, ends: dict[int, int]) -> None:
        self.topic = topic
        self.ends = ends
        self.records: list[tuple[float, int, int]] = []  # (applied at, partition, offset)
        self.reached: dict[int, float] = {}

    async def run(self, timeout: float, workers: list[BenchWorker]) -> bool:
        consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
        await consumer.start()
        deadline = time.monotonic() + timeout
        try:
            while not consumer.partitions_for_topic(self.topic):
                if time.monotonic() > deadline or any(w.proc.poll() is not None for w in workers):
                    return False
                await consumer._client.force_metadata_update()  # no public way
                await asyncio.sleep(0.3)
            consumer.assign([TopicPartition(self.topic, p) for p in range(PARTITIONS)])
            await consumer.seek_to_beginning()
            wanted = {p for p, end in self.ends.items() if end}
            while set(self.reached) < wanted:
                if time.monotonic() > deadline or any(w.proc.poll() is not None for w in workers):
                    return False
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        self._add(record.partition, record.value)
            return True
        finally:
            await consumer.stop()

    def _add(self, partition: int, value: bytes | None) -> None:
        """One applied batch of a partition (the changelog partition is the topic's)."""
        document = orjson.loads(value) if value else None
        if not isinstance(document, dict) or "offset" not in document:
            return
        applied = document["ts_ms"] / 1000
        self.records.append((applied, partition, document["offset"]))
        if document["offset"] >= self.ends[partition] - 1:
            self.reached.setdefault(partition, applied)

    def done(self, at: float) -> int:
        """Events applied by wall time ``at``: per partition, its last applied offset + 1."""
        last: dict[int, int] = {}
        for applied, partition, offset in self.records:
            if applied <= at:
                last[partition] = max(last.get(partition, -1), offset)
        return sum(offset + 1 for offset in last.values())


async def consumer_run(
    run: Run, phase: str, handler: str, workers: int, events: int, profile: str | None
) -> dict[str, Any]:
    name = f"{run.prefix}-{phase}"
    app_id = f"{name}-w"
    run.app_ids.append(app_id)
    run.groups += [name, app_id]
    extra = f'\n[[consumer]]\nname = "{name}"\ntopics = ["{run.topic}"]\nhandler = "{handler}"\n'
    if handler == "mysql":
        extra += f'mysql = "mysql://root@127.0.0.1:3306/{run.destination}"\n'
    started: list[BenchWorker] = []
    progress = [run.tmp / f"{phase}-{i}.progress" for i in range(workers)]
    watch = ChangelogWatch(f"{name}-applied-changelog", run.ends)
    try:
        for i in range(workers):
            config = write_config(
                run.tmp / f"{phase}-{i}.toml", app_id, [], extra, partitions=PARTITIONS
            )
            env = {"AESOP_BENCH_PROGRESS": str(progress[i])}
            if profile and i == 0:
                env["AESOP_BENCH_PROFILE"] = profile
            started.append(BenchWorker(config, run.tmp / f"{phase}-{i}.log", env))
        complete = await watch.run(120.0 + events / 500, started)
    finally:
        for worker in started:
            try:
                worker.stop(60.0)
            except AssertionError as exc:
                print(f"warning: {exc}", file=sys.stderr)
    if not complete:
        for worker in started:
            print(worker_log_tail(worker.log_path), file=sys.stderr)
    per_worker = []
    for worker, path in zip(started, progress, strict=True):
        seen = orjson.loads(path.read_bytes()) if path.exists() else {}
        first, last = seen.get("first"), seen.get("last")
        per_worker.append({
            "events_handed": seen.get("events", 0),
            "batches": seen.get("batches", 0),
            "partitions": sorted(seen.get("partitions", {})),
            "startup_seconds": first - worker.launched if first else None,
            "events_per_s": seen["events"] / (last - first) if first and last > first else None,
            "cpu_share": seen["cpu_seconds"] / (last - first) if first and last > first else None,
        })  # fmt: skip
    result: dict[str, Any] = {"workers": workers, "complete": complete, "per_worker": per_worker}
    if not watch.records:
        return result
    first = min(applied for applied, _, _ in watch.records)
    ended = max(watch.reached.values(), default=first)
    at_first = watch.done(first)
    result.update({
        "startup_seconds": first - min(w.launched for w in started),
        "seconds": ended - first,
        "events_per_s": (events - at_first) / (ended - first) if ended > first else None,
        "events_handed": sum(w["events_handed"] for w in per_worker),
    })  # fmt: skip
    if workers > 1 and all(w["startup_seconds"] is not None for w in per_worker):
        both = max(
            w.launched + s["startup_seconds"] for w, s in zip(started, per_worker, strict=True)
        )
        at_both = watch.done(both)
        result["both_working_seconds"] = ended - both
        result["both_working_events_per_s"] = (events - at_both) / (ended - both)
    return result


# -- the run -------------------------------------------------------------------------------


class Run:
    """One benchmark run: its names, its scratch directory, and what to clean up."""

    def __init__(self, keep: bool) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"bench-{self.id}"
        self.topic = f"{self.prefix}-events"
        self.db = f"bench_{self.id}"  # named by the events only; never created
        self.destination = f"bench_{self.id}_dst"
        self.keep = keep
        self.tmp = Path(tempfile.mkdtemp(prefix="aesop-consumer-bench-"))
        self.app_ids: list[str] = []
        self.groups: list[str] = []
        self.ends: dict[int, int] = {}

    def cleanup(self) -> None:
        if self.keep:
            print(f"kept: topics {self.prefix}-*, database {self.destination}, logs {self.tmp}")
            return
        load.drop_database(self.destination)
        clean_up_run(self.prefix, self.groups, self.app_ids, self.tmp)


def _destination_check(run: Run, expected: dict[str, int]) -> dict[str, Any]:
    """What the mysql handler left in the destination, against what the events leave."""
    with load.connect(run.destination) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*), COALESCE(SUM(n), 0) FROM {TABLE}")
        count, sum_n = cur.fetchone()
    found = {"rows": int(count), "sum_n": int(sum_n)}
    return {"expected": expected, "found": found, "ok": found == expected}


LAYERS = (  # (layer, a part of the file name or of the function name), first match wins
    ("Kafka fetch (aiokafka)", "aiokafka/"),
    ("faust consumer and conductor", "faust/transport/"),
    ("faust streams and events", "faust/streams"),
    ("faust streams and events", "faust/channels"),
    ("faust streams and events", "faust/events"),
    ("faust streams and events", "faust/types"),
    ("faust key/value decoding", "faust/serializers"),
    ("faust sensors", "faust/sensors"),
    ("faust, other", "faust/"),
    ("asyncio loop and tasks (mode wait_first)", "asyncio/"),
    ("asyncio loop and tasks (mode wait_first)", "mode/"),
    ("asyncio loop and tasks (mode wait_first)", "_contextvars"),
    ("asyncio loop and tasks (mode wait_first)", "_asyncio"),
    ("asyncio loop and tasks (mode wait_first)", "selectors"),
    ("asyncio loop and tasks (mode wait_first)", "_weakrefset"),
    ("aesop consumer (agents/)", "agents/"),
    ("orjson", "orjson"),
)


def profile_layers(path: str) -> dict[str, float]:
    """Share of the worker's busy loop-thread time (epoll waits left out) per layer."""
    import pstats

    shares: Counter[str] = Counter()
    for (file, _, function), (_, _, own, _, _) in pstats.Stats(path).stats.items():  # type: ignore[attr-defined]
        if "epoll" in function:
            continue
        where = f"{file} {function}"
        shares[
            next((name for name, part in LAYERS if part in where), "builtins, start-up, other")
        ] += own
    busy = sum(shares.values())
    return {name: own / busy for name, own in shares.most_common()}


def _mysql_landed() -> bool:
    return (ROOT / "agents" / "mysql.py").exists()


def measure(run: Run, events: int, phases: set[str], profile: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    began = time.perf_counter()
    results["fill"] = asyncio.run(fill(run.topic, run.db, events))
    run.ends = asyncio.run(end_offsets(run.topic))
    results["fill"]["per_partition"] = [run.ends[p] for p in range(PARTITIONS)]
    print(f"filled {run.topic}: {events} events in {time.perf_counter() - began:.1f}s", flush=True)
    raw_runs = [raw_run(run.topic)]
    print(f"raw consume: {raw_runs[0]['events_per_s']:.0f} events/s", flush=True)
    for phase, handler, workers in (
        ("noop1", "bench.handlers:Noop", 1),
        ("noop2", "bench.handlers:Noop", 2),
        ("fn1", "bench.handlers:noop", 1),
        ("mysql1", "mysql", 1),
        ("mysql2", "mysql", 2),
    ):
        if phase not in phases:
            continue
        if handler == "mysql":
            if not _mysql_landed():
                results[phase] = {"not_run": "agents/mysql.py is not there yet"}
                continue
            load.drop_database(run.destination)
            load.create_database(run.destination, (TABLE,))
        results[phase] = asyncio.run(
            consumer_run(
                run, phase, handler, workers, events, profile if phase == "noop1" else None
            )
        )
        if handler == "mysql":
            results[phase]["destination"] = _destination_check(run, results["fill"]["expected"])
        if profile and phase == "noop1":
            results[phase]["profile"] = {"file": profile, "busy_share": profile_layers(profile)}
        rate = results[phase].get("events_per_s")
        cpu = results[phase]["per_worker"][0].get("cpu_share") or 0
        print(f"{phase}: {rate or 0:.0f} events/s (first worker {cpu:.0%} CPU),"
              f" {time.perf_counter() - began:.0f}s into the run", flush=True)  # fmt: skip
    raw_runs.append(raw_run(run.topic))  # twice, around the consumers; the faster is the baseline
    results["raw_runs"] = raw_runs
    results["raw"] = max(raw_runs, key=lambda r: r["events_per_s"])
    raw_rate = results["raw"]["events_per_s"]
    for phase in PHASES[1:]:
        for key in ("events_per_s", "both_working_events_per_s"):
            rate = results.get(phase, {}).get(key)
            if rate:
                results[phase][key.replace("events_per_s", "ratio")] = rate / raw_rate
    return results


def _report(results: dict[str, Any]) -> None:
    raw_rate = results["raw"]["events_per_s"]
    lines = [
        f"aesop consumer benchmark  ({results['events']} change events, {PARTITIONS} partitions,"
        f" run {results['run']})",
        f"  (a) raw consume (aiokafka getmany)  {raw_rate:10.0f} events/s   1.00x"
        "   (runs: " + ", ".join(f"{r['events_per_s']:.0f}" for r in results["raw_runs"]) + ")",
    ]
    for phase, label in (
        ("noop1", "(b) no-op handler, 1 worker"),
        ("noop2", "(b) no-op handler, 2 workers"),
        ("fn1", "(b) no-op function (gets each event as a dict), 1 worker"),
        ("mysql1", "(c) mysql handler, 1 worker"),
        ("mysql2", "(c) mysql handler, 2 workers"),
    ):
        result = results.get(phase)
        if result is None:
            continue
        if "not_run" in result:
            lines.append(f"  {label:35} not run: {result['not_run']}")
            continue
        if not result.get("events_per_s"):
            lines.append(f"  {label:35} incomplete (see the worker log tail above)")
            continue
        line = (
            f"  {label:35} {result['events_per_s']:10.0f} events/s  {result['ratio']:5.2f}x"
            f"   start-up {result['startup_seconds']:.1f}s"
        )
        if "both_working_ratio" in result:
            line += f"; once both work {result['both_working_events_per_s']:.0f}/s"
            line += f" {result['both_working_ratio']:.2f}x"
        if len(result["per_worker"]) > 1:
            line += "; per worker " + ", ".join(
                f"{w['events_per_s'] or 0:.0f}/s ({len(w['partitions'])} partitions seen,"
                f" {w['events_handed']} events, {w['cpu_share'] or 0:.0%} CPU)"
                for w in result["per_worker"]
            )
        if "destination" in result:
            line += "; destination " + ("ok" if result["destination"]["ok"] else "WRONG")
        lines.append(line)
    if "profile" in results.get("noop1", {}):
        lines.append("  no-op worker's busy time (cProfile, start-up included):")
        for name, share in results["noop1"]["profile"]["busy_share"].items():
            lines.append(f"    {share:6.1%}  {name}")
    for name, ok in results["checks"].items():
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consumer_bench", description=__doc__)
    parser.add_argument("--events", type=int, help="change events in the topic (300000)")
    parser.add_argument("--quick", action="store_true", help="30000 events, a smoke check")
    parser.add_argument("--only", default=",".join(PHASES[1:]), help="consumer phases to run")
    parser.add_argument("--profile", help="cProfile the 1-worker no-op run to this file")
    parser.add_argument("--keep", action="store_true", help="keep topics, database and logs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--raw-consume", metavar="TOPIC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_consume:
        print(orjson.dumps(asyncio.run(raw_consume(args.raw_consume))).decode())
        return 0
    events = args.events or (30_000 if args.quick else 300_000)
    run = Run(args.keep)
    results: dict[str, Any] = {
        "run": run.id,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "events": events,
        "partitions": PARTITIONS,
        "targets": TARGETS,
    }
    try:
        results.update(measure(run, events, set(args.only.split(",")), args.profile))
    finally:
        noop = results.get("noop1", {}).get("ratio")
        results["checks"] = (
            {"no-op >= 0.5 x raw consume": noop >= TARGETS["noop_ratio_min"]} if noop else {}
        )
        everything = orjson.loads(args.output.read_bytes()) if args.output.exists() else {}
        everything["consumers"] = results
        args.output.write_bytes(dumps(everything) + b"\n")
        run.cleanup()
    _report(results)
    print(f"results: {args.output} (key consumers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
