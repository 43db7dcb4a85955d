"""``python -m bench.consumer_worker``: ``faust -A app worker -l info`` for the consumer
benchmark, which also records this worker's own consumer progress and can profile it.

``AESOP_BENCH_PROGRESS=<file>``: after each batch (at most every 0.25 s, and at exit) the
file gets ``{pid, first, last, cpu_seconds, events, batches, partitions}``: the wall times
this worker finished its first and last batch, the CPU time it spent in between (all
threads), the events it was handed and how many per partition.
``AESOP_BENCH_PROFILE=<file>``: cProfile of the event-loop thread, dumped there at exit
(read it with ``python -m pstats``).
"""

from __future__ import annotations

import atexit
import cProfile
import os
import sys
import time
from collections import Counter
from typing import Any

import orjson

WRITE_EVERY_S = 0.25


class Progress:
    def __init__(self, path: str) -> None:
        self.path = path
        self.first: float | None = None
        self.last: float | None = None
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.events = 0
        self.batches = 0
        self.partitions: Counter[str] = Counter()
        self.written = 0.0

    def batch(self, batch: Any) -> None:
        now = time.time()
        cpu = time.process_time()
        if self.first is None:
            self.first, self.cpu_first = now, cpu
        self.last, self.cpu_last = now, cpu
        self.batches += 1
        for tp, records in batch.records.items():  # an agents.fetch.Round
            self.events += len(records)
            self.partitions[f"{tp.topic}/{tp.partition}"] += len(records)
        if now - self.written >= WRITE_EVERY_S:
            self.write()

    def write(self) -> None:
        document = {
            "pid": os.getpid(),
            "first": self.first,
            "last": self.last,
            "cpu_seconds": self.cpu_last - self.cpu_first,
            "events": self.events,
            "batches": self.batches,
            "partitions": dict(self.partitions),
        }
        scratch = f"{self.path}.tmp"
        with open(scratch, "wb") as out:
            out.write(orjson.dumps(document))
        os.replace(scratch, self.path)
        self.written = time.time()


def _count_batches(progress: Progress) -> None:
    from agents.consumer import ConsumerRunner

    process = ConsumerRunner.process

    async def counted(self: ConsumerRunner, batch: Any) -> None:
        await process(self, batch)
        progress.batch(batch)

    ConsumerRunner.process = counted  # type: ignore[method-assign]
    atexit.register(progress.write)


def _profile(path: str) -> None:
    profiler = cProfile.Profile()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(path)

    atexit.register(dump)
    profiler.enable()


def main() -> None:
    if path := os.environ.get("AESOP_BENCH_PROGRESS"):
        _count_batches(Progress(path))
    if path := os.environ.get("AESOP_BENCH_PROFILE"):
        _profile(path)
    from faust.cli.faust import cli

    sys.argv = ["faust", "-A", "app", "worker", "-l", "info"]
    cli(prog_name="faust")


if __name__ == "__main__":
    main()
