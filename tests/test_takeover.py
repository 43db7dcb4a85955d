"""Who runs a source's relay, on the real stack: always one live worker, and when none does,
every worker says so; the start position is saved at once; a stop at any moment is clean."""

from __future__ import annotations

import os
import random
import signal
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import get, lag_json
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.kafka import count_then_settle, read_topic
from tests.support.load import Writer, assert_exactly_once, create_numbers
from tests.support.mysql import master_position, sql
from tests.support.stack import free_port, wait_until
from tests.support.workers import Worker, WorkerFactory
from tests.support.zookeeper import zk_get

pytestmark = pytest.mark.usefixtures("drop_test_resources")

SOURCE = "s"
SESSION_TIMEOUT_S = 20
UNREAD_S = 5


def config_for(tmp_path: Path, unique: str, database: str, start: str) -> tuple[Path, str]:
    spec = SourceSpec(SOURCE, [f"{database}.*"], 8000 + random.randrange(10**8), start,
                      f"aesop.t{unique}")  # fmt: skip
    extra = f"\n[lag]\nunread_seconds = {UNREAD_S}\n"
    return ConfigFactory(tmp_path, unique)([spec], extra=extra), spec.topic


def start_worker(workers: WorkerFactory, config: Path) -> tuple[Worker, int]:
    port = free_port()
    env = {"AESOP_WEB_PORT": str(port), "AESOP_SESSION_TIMEOUT": str(SESSION_TIMEOUT_S)}
    return workers.start(config, env), port


def heartbeat(unique: str) -> dict[str, Any] | None:
    return zk_get(f"/aesop-test/t{unique}/heartbeats/{SOURCE}")


def runs_it(worker: Worker, unique: str) -> bool:
    """The source's heartbeat comes from ``worker``, and is fresh."""
    beat = heartbeat(unique)
    return (
        beat is not None
        and f"(pid {worker.proc.pid})" in beat["worker"]
        and time.time() * 1000 - beat["ts_ms"] < 4000
    )


def health(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        return get(port, "/health")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_the_resolved_start_position_is_saved_before_anything_is_read(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str
) -> None:
    sql(f"CREATE TABLE {database}.items (id INT PRIMARY KEY)")
    config, topic = config_for(tmp_path, unique, database, "latest")
    at_start = master_position()
    worker, _ = start_worker(workers, config)
    worker.wait_for_log(f"relay {SOURCE}: reading", 90)
    # Nothing was written: the checkpoint is there all the same, at the resolved "latest".
    checkpoint = wait_until(lambda: zk_get(f"/aesop-test/t{unique}/relays/{SOURCE}"), 10,
                            "the start checkpoint in ZooKeeper")  # fmt: skip
    assert f"{checkpoint['file']}:{checkpoint['pos']}" == at_start
    worker.kill()
    # Committed while no worker runs: the next one resumes from the saved start, so it is
    # published (resolving "latest" again would skip it).
    sql("INSERT INTO items VALUES (1)", database=database)
    second, _ = start_worker(workers, config)
    second.wait_for_log(f"relay {SOURCE}: reading", 90)
    assert f"relay {SOURCE}: checkpoint from table" in second.log()
    [message] = read_topic(topic, count_then_settle(1, 2.0), timeout=60)
    assert message["value"]["op"] == "c" and message["value"]["after"] == {"id": 1}
    assert second.stop() == 0


@pytest.mark.parametrize("how", ["frozen", "killed"])
def test_a_source_no_live_worker_reads_is_reported_everywhere_then_taken_over(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, how: str
) -> None:
    create_numbers(database)
    config, topic = config_for(tmp_path, unique, database, master_position())
    first, first_port = start_worker(workers, config)
    first.wait_for_log(f"relay {SOURCE}: reading", 90)
    second, second_port = start_worker(workers, config)
    # Joined, not only answering: a worker still in its first join runs no relay manager yet,
    # and a kill then would leave it waiting out the killed one's session before anything.
    second.wait_for_log("Worker ready", 90)
    ports = {first.proc.pid: first_port, second.proc.pid: second_port}
    writer = Writer(database)
    writer.start()

    # Settled: one worker runs the relay, and says so by its heartbeat; both are healthy.
    def settled() -> Worker | None:
        owner = next((w for w in (first, second) if runs_it(w, unique)), None)
        answers = [health(port) for port in ports.values()]
        healthy = all(a is not None and a[0] == 200 for a in answers)
        return owner if healthy else None

    owner = wait_until(settled, 90, "one worker to run the relay and both to be healthy", every=1)
    other = second if owner is first else first
    other_port = ports[other.proc.pid]
    time.sleep(3)
    assert runs_it(owner, unique), "the relay moved while nothing happened"

    written = 0
    if how == "frozen":
        # Quiet, and all of it acknowledged and saved, so that a change published twice can
        # only come from two relays at once.
        written = writer.finish()
        wait_until(lambda: saved_position(unique) == master_position(), 30,
                   "the checkpoint at the server's position")  # fmt: skip

    # The owner freezes or is killed -9 (either way it stays in the group until its session
    # times out): within seconds the other worker reports the source unread, in /health,
    # /lag, /metrics and aesop lag.
    os.kill(owner.proc.pid, signal.SIGSTOP if how == "frozen" else signal.SIGKILL)
    frozen_at = time.monotonic()
    if how == "frozen":
        # Committed while it is frozen: its binlog connection holds them, unread.
        for first in range(written + 1, written + 50, 10):
            numbers = ", ".join(f"({n}, 'row {n}')" for n in range(first, first + 10))
            sql(f"INSERT INTO numbers (n, pad) VALUES {numbers}", database=database)
        written += 50
    try:

        def reported() -> tuple[int, dict[str, Any]] | None:
            answer = health(other_port)
            down = [] if answer is None else answer[1]["down"]
            return answer if any(line.startswith(f"source {SOURCE}: ") for line in down) else None

        status, body = wait_until(reported, UNREAD_S + 10, "/health to report the unread source")
        reported_after = time.monotonic() - frozen_at
        assert status == 503 and body["ok"] is False, body
        # /lag is rebuilt every 2 s: its next report says so too.
        [entry] = wait_until(
            lambda: [s for s in get(other_port, "/lag")[1]["sources"] if s["unread"]],
            5,
            "/lag to report the unread source",
        )
        assert entry["unread"] is True and entry["status"] == "critical", entry
        assert entry["reader"]["worker"].endswith(f"(pid {owner.proc.pid})"), entry
        assert "no worker runs its relay" in entry["error"]
        report, done = lag_json(config)
        assert done.returncode == 3, done.stderr
        assert (
            f"aesop: source {SOURCE}: " in done.stderr and "no worker runs its relay" in done.stderr
        )
        assert report["sources"][0]["unread"] is True
        metrics = get_text(other_port, "/metrics")
        series = f'aesop_source_unread_seconds{{source="{SOURCE}"}}'
        [sample] = [line for line in metrics.splitlines() if line.startswith(series)]
        assert float(sample.rsplit(" ", 1)[1]) >= UNREAD_S, sample

        # Once the session times out, the other worker runs the relay, and is healthy again.
        wait_until(lambda: runs_it(other, unique), SESSION_TIMEOUT_S + 15,
                   "the other worker to take the relay over", every=0.5)  # fmt: skip
        taken_over_after = time.monotonic() - frozen_at
        wait_until(lambda: (health(other_port) or (0,))[0] == 200, 30, "/health 200 again")
        if how == "frozen":
            # It wakes up still holding the partition, and changes its reader had not passed
            # on: the other worker published them already, so it must publish nothing.
            before_waking = len(owner.log())
            os.kill(owner.proc.pid, signal.SIGCONT)
            time.sleep(8)
            woken = owner.log()[before_waking:]
    finally:
        owner.kill()  # SIGKILL ends a stopped process too
    if how == "frozen":
        messages = read_topic(topic, count_then_settle(written, 3.0), timeout=120)
        assert_exactly_once(messages, written)
        # Whichever it learns first: its lease lapsed, or the group no longer has it.
        assert (
            f"relay {SOURCE}: no answer from the Kafka group for" in woken
            or f"relay {SOURCE}: partition revoked" in woken
        ), woken[-3000:]
    else:
        written = writer.finish()
        messages = read_topic(topic, count_then_settle(written, 3.0), timeout=120)
        numbers = {m["value"]["after"]["n"] for m in messages}
        assert numbers == set(range(1, written + 1)), f"{written - len(numbers)} rows missing"
    print(f"{how}: unread reported after {reported_after:.1f}s, "
          f"taken over after {taken_over_after:.1f}s")  # fmt: skip
    assert other.stop() == 0


def saved_position(unique: str) -> str | None:
    checkpoint = zk_get(f"/aesop-test/t{unique}/relays/{SOURCE}")
    return None if checkpoint is None else f"{checkpoint['file']}:{checkpoint['pos']}"


def get_text(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
        return str(answer.read().decode())


@pytest.mark.parametrize("moment", ["1s", "3s", "6s", "reading"])
def test_a_sigterm_at_any_moment_of_start_up_stops_cleanly_and_duplicates_nothing(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, moment: str
) -> None:
    create_numbers(database)
    config, topic = config_for(tmp_path, unique, database, master_position())
    writer = Writer(database)
    writer.start()
    worker, _ = start_worker(workers, config)
    if moment == "reading":
        worker.wait_for_log(f"relay {SOURCE}: reading", 90)
    else:
        time.sleep(float(moment.rstrip("s")))
    worker.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    rc = worker.proc.wait(30)
    took = time.monotonic() - signalled
    assert took <= 10, f"the worker took {took:.1f}s to stop after SIGTERM ({moment})"
    # Killed by the signal itself only while Python was still importing, before any handler
    # (and so any relay) existed; from then on, a clean exit.
    started = "relay " in worker.log() or "Starting" in worker.log()
    assert rc == 0 or (rc == -signal.SIGTERM and not started), f"exit {rc} after SIGTERM ({moment})"
    # The next start resumes where the stopped one left off: nothing twice, nothing missing.
    last, _ = start_worker(workers, config)
    last.wait_for_log(f"relay {SOURCE}: reading", 90)
    writer.write_more(300)
    written = writer.finish()
    assert_exactly_once(read_topic(topic, count_then_settle(written, 3.0), timeout=120), written)
    assert last.stop() == 0
