"""The soak's faults: a seeded schedule, the two workers, and the threads that break things.

Each fault runs in a thread of its own, so faults overlap as the schedule has them; a fault
waits for its resource (a service, a worker) if an earlier fault still holds it. Kafka is only
stopped and started while ZooKeeper is up (a broker cannot start without it). Whatever happens,
a fault puts back what it took away: a service is started again, a worker restarted.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.stack import Stack
from tests.support.workers import Worker

KINDS = ("kill9", "sigterm", "mariadb", "kafka", "zookeeper", "kill9_in_kafka")
CRASHES = frozenset({"kill9", "kill9_in_kafka"})
SLOTS = ("a", "b")
WARMUP_S = 30.0  # before the first fault: the workers join and the load settles
TERM_TIMEOUT_S = 60.0
BROKER_STARTS = 3  # a broker start that ZooKeeper stopping under it failed is tried again


@dataclass(frozen=True)
class PlannedFault:
    kind: str
    at: float  # seconds after the soak's start
    down: float = 0.0  # how long a service stays stopped
    slot: str | None = None  # the worker it kills or stops
    restart_after: float = 0.0  # seconds from a worker's end to its restart
    kill_at: float = 0.0  # kill9_in_kafka: seconds into the Kafka outage

    def describe(self) -> str:
        if self.kind in ("kill9", "sigterm"):
            return f"{self.kind} worker {self.slot}, restart after {self.restart_after:.1f}s"
        if self.kind == "kill9_in_kafka":
            return (
                f"kafka down {self.down:.1f}s, worker {self.slot} killed at +{self.kill_at:.1f}s,"
                f" restarted {self.restart_after:.1f}s later"
            )
        return f"{self.kind} down {self.down:.1f}s"


def schedule(rng: random.Random, minutes: float) -> list[PlannedFault]:
    """About ten faults per six minutes; each kind at least once when there is room."""
    count = max(1, round(minutes * 10 / 6))
    kinds = list(KINDS)
    rng.shuffle(kinds)
    kinds = kinds[:count] + [rng.choice(KINDS) for _ in range(count - len(kinds))]
    rng.shuffle(kinds)
    end = max(WARMUP_S + 15, minutes * 60 - 40)
    times = sorted(rng.uniform(WARMUP_S, end) for _ in kinds)
    faults = []
    for kind, at in zip(kinds, times, strict=True):
        slot = rng.choice(SLOTS)
        restart = rng.uniform(2, 6)
        if kind in ("kill9", "sigterm"):
            faults.append(PlannedFault(kind, at, slot=slot, restart_after=restart))
        elif kind == "mariadb":
            faults.append(PlannedFault(kind, at, down=rng.uniform(3, 10)))
        elif kind in ("kafka", "zookeeper"):
            faults.append(PlannedFault(kind, at, down=rng.uniform(20, 30)))
        else:
            down = rng.uniform(20, 30)
            faults.append(
                PlannedFault(
                    kind, at, down=down, slot=slot, restart_after=restart,
                    kill_at=rng.uniform(3, down - 10),
                )
            )  # fmt: skip
    return faults


@dataclass
class FaultRecord:
    """What a fault did, in wall-clock seconds."""

    plan: PlannedFault
    started: float | None = None  # service stopped / signal sent
    back: float | None = None  # service answering again / worker killed
    ended: float | None = None  # everything restored
    relay_owner: bool | None = None  # did the worker run the relay when it went
    crashed_at: float | None = None  # a worker was killed -9 (also a SIGTERM that timed out)
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.plan.kind


class Workers:
    """The two workers, each restartable; every process is signalled by its pid only."""

    def __init__(self, config: Path, logs: Path, env: Callable[[str], dict[str, str]]) -> None:
        self.config = config
        self.logs = logs
        self.env = env
        self.current: dict[str, Worker] = {}
        self.all: list[Worker] = []
        self.locks = {slot: threading.Lock() for slot in SLOTS}
        self._starts = dict.fromkeys(SLOTS, 0)

    def start(self, slot: str) -> Worker:
        self._starts[slot] += 1
        log = self.logs / f"worker-{slot}{self._starts[slot]}.log"
        worker = Worker(self.config, log, self.env(slot))
        self.current[slot] = worker
        self.all.append(worker)
        return worker

    def kill(self, slot: str) -> None:
        worker = self.current[slot]
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)

    def terminate(self, slot: str, stop: threading.Event) -> float | None:
        """SIGTERM, and the seconds until exit; None if it had to be killed."""
        worker = self.current[slot]
        sent = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        deadline = sent + TERM_TIMEOUT_S
        while worker.proc.poll() is None and time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.1)
        if worker.proc.poll() is None:
            self.kill(slot)
            return None
        return time.monotonic() - sent

    def owns_relay(self, slot: str, source: str) -> bool:
        """Whether the worker's log says it runs the relay of ``source`` right now."""
        log = self.current[slot].log()
        started = log.rfind(f"relay {source}: reading mysql")
        stopped = max(
            log.rfind(f"relay {source}: partition"),  # revoked, or no longer active here
            log.rfind(f"relay {source}: stopped"),  # drained after its lease lapsed
        )
        return started > stopped

    def close(self) -> None:
        """SIGTERM every worker still running, SIGKILL those that do not go in 20 s."""
        running = [w for w in self.all if w.proc.poll() is None]
        for worker in running:
            worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for worker in running:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(10)
        for worker in self.all:
            worker._log.close()


class FaultRunner:
    """Runs planned faults in threads, from ``t0`` on; ``stop`` cuts every wait short."""

    def __init__(self, stack: Stack, workers: Workers, source: str, t0: float) -> None:
        self.stack = stack
        self.workers = workers
        self.source = source
        self.t0 = t0
        self.records: list[FaultRecord] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.down: set[str] = set()  # services this soak stopped and not yet started
        self.service_locks = {s: threading.Lock() for s in ("mariadb", "kafka", "zookeeper")}
        self.zookeeper_up = threading.Event()
        self.zookeeper_up.set()
        self._threads: list[threading.Thread] = []

    def start(self, plan: list[PlannedFault]) -> None:
        for fault in plan:
            record = FaultRecord(fault)
            self.records.append(record)
            thread = threading.Thread(
                target=self._run, args=(record,), name=f"fault-{fault.kind}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def done(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def restore(self) -> None:
        """Start every service a fault left stopped (after an interrupted run)."""
        for service in ("zookeeper", "kafka", "mariadb"):
            if service in self.down:
                try:
                    self.stack.run("start", service)
                    self.down.discard(service)
                except AssertionError as exc:
                    self.errors.append(f"could not start {service} again: {first_line(exc)}")

    # -- in the fault threads -------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, seconds))

    def _run(self, record: FaultRecord) -> None:
        self._sleep(self.t0 + record.plan.at - time.time())
        if self.stop.is_set():
            record.notes.append("not run: the soak was stopping")
            return
        try:
            getattr(self, f"_{record.kind}")(record)
        except Exception as exc:
            message = f"{record.kind} at +{record.plan.at:.0f}s: {first_line(exc)}"
            record.notes.append(f"error: {first_line(exc)}")
            self.errors.append(message)
        record.ended = time.time()

    def _service_down(self, service: str, seconds: float, record: FaultRecord) -> None:
        self.down.add(service)
        if service == "zookeeper":
            self.zookeeper_up.clear()  # before the stop: a broker start checks it
        self.stack.run("stop", service)
        record.started = time.time()
        try:
            self._sleep(seconds)
        finally:
            if service == "kafka":
                self._start_broker()
            else:
                self.stack.run("start", service)
            self.down.discard(service)
            record.back = time.time()
            if service == "zookeeper":
                self.zookeeper_up.set()

    def _start_broker(self) -> None:
        """Start Kafka once ZooKeeper is up; again if ZooKeeper went down during the start
        (a ZooKeeper fault that began as the broker was starting)."""
        for attempt in range(1, BROKER_STARTS + 1):
            while not self.zookeeper_up.wait(1.0):
                pass  # a broker cannot start without ZooKeeper
            try:
                self.stack.run("start", "kafka")
                return
            except AssertionError:
                if attempt == BROKER_STARTS or self.zookeeper_up.is_set():
                    raise

    def _mariadb(self, record: FaultRecord) -> None:
        with self.service_locks["mariadb"]:
            self._service_down("mariadb", record.plan.down, record)

    def _zookeeper(self, record: FaultRecord) -> None:
        # stack.sh serializes its runs, so this never stops ZooKeeper in a broker's start-up.
        with self.service_locks["zookeeper"]:
            self._service_down("zookeeper", record.plan.down, record)

    def _kafka(self, record: FaultRecord) -> None:
        with self.service_locks["kafka"]:
            self.zookeeper_up.wait()
            self._service_down("kafka", record.plan.down, record)

    def _kill9_in_kafka(self, record: FaultRecord) -> None:
        plan = record.plan
        assert plan.slot is not None
        with self.service_locks["kafka"]:
            self.zookeeper_up.wait()
            killer = threading.Timer(plan.kill_at, self._kill_and_restart, (record, False))
            killer.start()
            try:
                self._service_down("kafka", plan.down, record)
            finally:
                killer.join()

    def _kill9(self, record: FaultRecord) -> None:
        self._kill_and_restart(record, True)

    def _kill_and_restart(self, record: FaultRecord, sets_back: bool) -> None:
        plan = record.plan
        assert plan.slot is not None
        if self.stop.is_set():
            return
        with self.workers.locks[plan.slot]:
            record.relay_owner = self.workers.owns_relay(plan.slot, self.source)
            self.workers.kill(plan.slot)
            record.crashed_at = time.time()
            if sets_back:
                record.started = record.back = record.crashed_at
            self._sleep(plan.restart_after)
            self.workers.start(plan.slot)

    def _sigterm(self, record: FaultRecord) -> None:
        plan = record.plan
        assert plan.slot is not None
        with self.workers.locks[plan.slot]:
            record.relay_owner = self.workers.owns_relay(plan.slot, self.source)
            record.started = record.back = time.time()
            took = self.workers.terminate(plan.slot, self.stop)
            if took is None:
                record.crashed_at = time.time()
                record.notes.append(f"did not exit within {TERM_TIMEOUT_S:.0f}s of SIGTERM: killed")
            else:
                record.notes.append(f"exited {took:.1f}s after SIGTERM")
            self._sleep(plan.restart_after)
            self.workers.start(plan.slot)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
