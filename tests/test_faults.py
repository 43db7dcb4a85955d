"""Fault tests on the real stack: MariaDB, Kafka, ZooKeeper go away under load; nothing is lost."""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from app.retry import RECONNECT
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.gate import Gate
from tests.support.kafka import count_then_settle, read_topic
from tests.support.servers import ServerDatabase, on_servers
from tests.support.stack import KAFKA, ROOT, Stack, wait_until
from tests.support.workers import Worker, WorkerFactory
from tests.support.zookeeper import zk_get

RATE = 200  # rows per second
TABLE = "steady"
RECONNECT_LINE = re.compile(r"relay src: (.+); reconnecting in (\d+\.\d)s$")
DOWN_S = 3.0  # how long the database server stays down in a restart

# The server-specific faults (a restart under load, an idle source across outages, a worker
# started while the server is down) run on every server of the matrix: each server's restart,
# reconnect and binlog position differ. Kafka and ZooKeeper outages, the producer, the stop
# deadline and the table id reuse after a restart (80 tables, two restarts) behave the same
# whatever the server reads from: on MariaDB 10.11 only, to keep the stack tier's time down.
MARIADB10_ONLY = on_servers("mariadb10")
# Fault tests of a minute or so per server: where MariaDB and MySQL differ.
MARIADB_AND_MYSQL = on_servers("mariadb10", "mysql8")
KAFKA_DATA = ROOT / ".stack" / "kafka" / "data"


class SteadyLoad:
    """Numbered single-row INSERTs in autocommit at a steady rate, from a thread.

    A row that fails (the server went away) is retried until it commits; a duplicate-key
    error on a retry means the failed attempt had committed. So ``committed`` is exactly
    the rows in the table, in order.
    """

    def __init__(self, server: ServerDatabase, rate: int = RATE) -> None:
        self.server = server
        self.rate = rate
        self.committed: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)

    def __enter__(self) -> SteadyLoad:
        self.server.sql(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, note VARCHAR(32))")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the load thread did not stop"
        return self.committed

    def wait_for(self, rows: int, timeout: float = 30.0) -> None:
        """Wait until at least ``rows`` more rows are committed than now."""
        target = len(self.committed) + rows
        deadline = time.monotonic() + timeout
        while len(self.committed) < target:
            assert time.monotonic() < deadline, f"load stuck at {len(self.committed)} rows"
            time.sleep(0.05)

    def _connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(
            **self.server.connect_args(),
            autocommit=True,
            connect_timeout=2,
            read_timeout=5,
            write_timeout=5,
        )

    def _run(self) -> None:
        conn: pymysql.connections.Connection | None = None
        row = 1
        due = time.monotonic()
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {TABLE} VALUES (%s, %s)", (row, f"row {row}"))
            except pymysql.err.IntegrityError as exc:
                if exc.args[0] != 1062:
                    raise
            except pymysql.err.MySQLError as exc:
                self.errors.append(repr(exc))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                time.sleep(0.1)
                continue
            self.committed.append(row)
            row += 1
            due = max(due + 1 / self.rate, time.monotonic() - 1)
            time.sleep(max(0.0, due - time.monotonic()))
        if conn is not None:
            conn.close()


@contextlib.contextmanager
def stopped(stack: Stack, service: str) -> Iterator[None]:
    """Stop a stack service; start it again (and wait until it answers) whatever happens."""
    try:
        stack.run("stop", service)
        yield
    finally:
        stack.run("start", service)


def start_worker(
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    server: ServerDatabase,
    env: dict[str, str] | None = None,
) -> tuple[Worker, str, str]:
    """A worker relaying the test's database from the server's current binlog position:
    (worker, app id, topic)."""
    app_id, topic = f"t{unique}", f"aesop.t{unique}"
    config = ConfigFactory(tmp_path, unique)(
        sources=[
            SourceSpec(
                name="src",
                include=[f"{server.db}.*"],
                server_id=int(unique, 16) % 1_000_000 + 100_000,
                start=server.position(),
                topic=topic,
                mysql=server.url(),
            )
        ]
    )
    worker = workers.start(config, env)
    worker.wait_for_log("relay src: reading", timeout=90)
    return worker, app_id, topic


def row_id(message: dict[str, Any]) -> int | None:
    value = message["value"]
    if value["source"]["table"] != TABLE or value["op"] != "c":
        return None
    return int(value["after"]["id"])


def ids_of(messages: list[dict[str, Any]]) -> set[int]:
    return {i for m in messages if (i := row_id(m)) is not None}


def read_rows(topic: str, expected: set[int], timeout: float) -> list[dict[str, Any]]:
    """The topic's messages, read until every expected row is there (or the timeout)."""
    return read_topic(topic, lambda messages: expected <= ids_of(messages), timeout=timeout)


def assert_every_row_once(
    messages: list[dict[str, Any]], committed: list[int], server: ServerDatabase
) -> None:
    """Every committed row is in Kafka; a row seen twice is the same (scn, row) event."""
    in_table = [r[0] for r in server.sql(f"SELECT id FROM {TABLE} ORDER BY id")]
    assert in_table == committed, "the load's idea of what committed differs from the table"
    seen: dict[int, set[tuple[int, int]]] = {}
    for message in messages:
        if (i := row_id(message)) is not None:
            seen.setdefault(i, set()).add((message["value"]["scn"], message["value"]["row"]))
    missing = sorted(set(committed) - seen.keys())
    assert not missing, f"{len(missing)} committed rows never reached Kafka, e.g. {missing[:10]}"
    assert seen.keys() == set(committed), "Kafka has rows that never committed"
    changed = {i: ids for i, ids in seen.items() if len(ids) > 1}
    assert not changed, (
        f"rows published again under another (scn, row): {list(changed.items())[:5]}"
    )
    identities = [next(iter(ids)) for ids in seen.values()]
    assert len(set(identities)) == len(identities), "two rows share one (scn, row)"


def reconnect_delays(log: str) -> list[float]:
    lines = (line.rstrip() for line in log.splitlines())
    return [float(m.group(2)) for line in lines if (m := RECONNECT_LINE.search(line))]


def assert_backoff(delays: list[float]) -> None:
    """Each delay of one outage lies in the policy's jittered window, doubling from 0.5 s."""
    for attempt, delay in enumerate(delays):
        nominal = min(0.5 * 2**attempt, RECONNECT.maximum)
        low, high = nominal * 0.75 - 0.05, nominal * 1.25 + 0.05
        assert low <= delay <= high, f"attempt {attempt + 1}: {delay}s outside [{low}, {high}]"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def kafka_end_offsets(topic: str) -> dict[int, int]:
    """Per partition, the log end offset a cleanly stopped broker wrote at shutdown.

    Kafka flushes every log on a clean shutdown and records its recovery point, which then
    equals the log end offset: exactly what the broker held when it went away.
    """
    lines = (KAFKA_DATA / "recovery-point-offset-checkpoint").read_text().splitlines()
    offsets = {}
    for line in lines[2:]:
        name, partition, offset = line.split()
        if name == topic:
            offsets[int(partition)] = int(offset)
    assert offsets, f"Kafka's recovery points do not list {topic}; was the stop clean?"
    return offsets


def checkpoint_identity(checkpoint: dict[str, Any] | None) -> tuple[int, int]:
    assert checkpoint is not None, "no checkpoint in ZooKeeper"
    return (checkpoint["scn"], checkpoint["row"])


def test_server_restart_under_load_loses_nothing(
    stack: Stack, workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """Two restarts: each outage backs off from 0.5 s with jitter, one log line per attempt."""
    worker, _, topic = start_worker(workers, tmp_path, unique, server)
    outages: list[list[float]] = []
    with SteadyLoad(server) as load:
        for _ in range(2):
            load.wait_for(RATE)
            before = len(worker.log())
            with stopped(stack, server.service):
                time.sleep(DOWN_S)  # long enough for several attempts: 0.5 s, 1 s, 2 s
            load.wait_for(RATE)
            # The relay is reading again once a row committed after the restart is in Kafka.
            read_rows(topic, {load.committed[-1]}, timeout=60)
            outages.append(reconnect_delays(worker.log()[before:]))
        committed = load.stop()
    messages = read_rows(topic, set(committed), timeout=60)

    assert_every_row_once(messages, committed, server)
    assert load.errors, f"the load never saw {server.server.product} go away"
    log = worker.log()
    assert "Traceback" not in log
    assert "Re-request the connection" not in log, "the library reconnected on its own"
    for delays in outages:
        assert len(delays) >= 2, f"expected reconnect attempts while the server was down: {delays}"
        assert_backoff(delays)
    assert worker.proc.poll() is None


@MARIADB_AND_MYSQL
def test_idle_source_backs_off_afresh_in_each_server_outage(
    stack: Stack, workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """No row moves: once the server streams again, the next outage starts at 0.5 s again."""
    worker, _, _ = start_worker(workers, tmp_path, unique, server)
    outages: list[list[float]] = []
    for _ in range(2):
        before = len(worker.log())
        with stopped(stack, server.service):
            time.sleep(DOWN_S)
        worker.wait_for_log("relay src: reading again", timeout=90, after=before)
        outages.append(reconnect_delays(worker.log()[before:]))
    for delays in outages:
        assert len(delays) >= 2, f"expected reconnect attempts while the server was down: {delays}"
        assert_backoff(delays)
    assert "Traceback" not in worker.log()


@pytest.mark.timeout(240)
@MARIADB10_ONLY
def test_kafka_outage_holds_checkpoint_and_memory(
    stack: Stack, workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """Kafka down 30 s under load: the relay waits, its checkpoint stays within what Kafka has."""
    worker, app_id, topic = start_worker(workers, tmp_path, unique, server)
    path = f"/aesop-test/{app_id}/relays/src"
    with SteadyLoad(server) as load:
        load.wait_for(2 * RATE)
        read_rows(topic, set(load.committed[:RATE]), timeout=30)
        baseline = rss_kb(worker.proc.pid)
        peak = baseline
        with stopped(stack, "kafka"):
            held = kafka_end_offsets(topic)
            at_stop = checkpoint_identity(zk_get(path))
            rows_at_stop = len(load.committed)
            log_at_stop = len(worker.log())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert worker.proc.poll() is None, "the worker died while Kafka was down"
                peak = max(peak, rss_kb(worker.proc.pid))
                time.sleep(0.5)
            before_start = checkpoint_identity(zk_get(path))
            outage_lines = worker.log()[log_at_stop:].splitlines()
            rows_in_outage = len(load.committed) - rows_at_stop
        load.wait_for(2 * RATE, timeout=60)
        committed = load.stop()
    messages = read_rows(topic, set(committed), timeout=90)

    assert rows_in_outage >= 10 * RATE, "the load did not go on while Kafka was down"
    assert_every_row_once(messages, committed, server)
    # What Kafka held when it stopped: every message below the end offsets it recorded.
    in_kafka = {
        (m["value"]["scn"], m["value"]["row"])
        for m in messages
        if m["offset"] < held.get(m["partition"], 0)
    }
    events = {(m["value"]["scn"], m["value"]["row"]) for m in messages if row_id(m)}
    for checkpoint in (at_stop, before_start):
        not_held = sorted(e for e in events if e <= checkpoint and e not in in_kafka)
        assert not not_held, f"checkpoint {checkpoint} is past events Kafka lacked: {not_held[:5]}"
    assert before_start == at_stop, "the checkpoint moved while Kafka was down"
    # Unfiltered, aiokafka repeats its connection errors about 130 times a second.
    logged = [line for line in outage_lines if line.strip()]
    assert len(logged) < 120, f"{len(logged)} log lines in 30 s of outage:\n" + "\n".join(
        logged[:40]
    )
    assert any("more like this in the last" in line for line in logged), "no count of those held"
    assert (peak - baseline) < 200 * 1024, f"RSS grew {(peak - baseline) // 1024} MB in the outage"
    assert worker.proc.poll() is None, "the worker did not survive the outage"
    assert "Traceback" not in worker.log()


def test_repeated_log_lines_pass_once_per_interval_with_the_count_held_back() -> None:
    from app.logfilter import RepeatFilter

    now = [0.0]
    quiet = RepeatFilter(interval=10.0, clock=lambda: now[0])

    def passed(template: str, *args: object, level: int = logging.ERROR) -> str | None:
        record = logging.LogRecord("aiokafka.conn", level, __file__, 1, template, args, None)
        return record.getMessage() if quiet.filter(record) else None

    unreachable = "Unable connect to node with id %s: %s"
    shown = [passed(unreachable, n % 2, "refused") for n in range(130)]
    assert shown[0] == "Unable connect to node with id 0: refused"
    assert shown[1:] == [None] * 129
    assert passed("Unable to update metadata from %s", [0]) is not None, "another kind passes"
    assert passed("connected to %s", 1, level=logging.INFO) is not None, "INFO is not limited"
    now[0] = 9.9
    assert passed(unreachable, 1, "refused") is None
    now[0] = 10.0
    assert passed(unreachable, 1, "refused") == (
        "Unable connect to node with id 1: refused [130 more like this in the last 10s not shown]"
    )
    now[0] = 25.0
    assert passed(unreachable, 0, "reset") == "Unable connect to node with id 0: reset"


@MARIADB10_ONLY
def test_zookeeper_outage_keeps_relaying_and_mirror_catches_up(
    stack: Stack, workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """ZooKeeper down 15 s under load: events keep flowing; the mirror catches up after."""
    worker, app_id, topic = start_worker(workers, tmp_path, unique, server)
    path = f"/aesop-test/{app_id}/relays/src"
    with SteadyLoad(server) as load:
        load.wait_for(RATE)
        with stopped(stack, "zookeeper"):
            outage_ends = time.monotonic() + 15
            load.wait_for(RATE)
            time.sleep(max(0.0, outage_ends - 7 - time.monotonic()))
            # A row committed well into the outage reaches Kafka while ZooKeeper is down.
            late = load.committed[-1]
            read_rows(topic, {late}, timeout=max(1.0, outage_ends - time.monotonic()))
            delivered_while_down = time.monotonic() < outage_ends
            time.sleep(max(0.0, outage_ends - time.monotonic()))
        back = time.monotonic()
        load.wait_for(RATE // 2)
        committed = load.stop()
    messages = read_rows(topic, set(committed), timeout=30)
    latest = max((m["value"]["scn"], m["value"]["row"]) for m in messages)
    mirrored = None
    while time.monotonic() - back < 20:
        mirrored = zk_get(path)
        if mirrored is not None and checkpoint_identity(mirrored) == latest:
            break
        time.sleep(0.25)
    caught_up_after = time.monotonic() - back

    assert delivered_while_down, "events stopped reaching Kafka while ZooKeeper was down"
    assert_every_row_once(messages, committed, server)
    assert mirrored is not None and checkpoint_identity(mirrored) == latest, (
        f"ZooKeeper mirror {mirrored} never caught up to {latest}"
    )
    assert caught_up_after < 15, f"mirror caught up only {caught_up_after:.1f}s after ZooKeeper"
    assert "mirror caught up" in worker.log()
    assert worker.proc.poll() is None
    assert "Traceback" not in worker.log()


def table_ids(file: str, server: ServerDatabase) -> dict[str, list[int]]:
    """Per table of the test's database, the table ids its Table_map events in ``file`` carry."""
    ids: dict[str, list[int]] = {}
    for row in server.sql(f"SHOW BINLOG EVENTS IN '{file}'"):
        kind, info = row[2], str(row[5])
        match = re.match(r"table_id: (\d+) \(([^.]+)\.([^)]+)\)", info)
        if kind == "Table_map" and match and match.group(2) == server.db:
            ids.setdefault(match.group(3), []).append(int(match.group(1)))
    return ids


def restart_server(stack: Stack, server: ServerDatabase) -> str:
    """Restart the server (its table id counter starts again); the binlog file it writes now."""
    with stopped(stack, server.service):
        pass
    return server.position().split(":")[0]


@MARIADB10_ONLY
def test_a_restarted_server_reusing_a_table_id_never_decodes_rows_as_another_table(
    stack: Stack,
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    server: ServerDatabase,
    make_config: ConfigFactory,
) -> None:
    """MariaDB numbers tables afresh after a restart. A relay resuming in the file before
    the restart reads ``pair``'s table map there, then rows of an excluded table that got
    the same id after it: they must be decoded by their own map (and dropped as excluded)."""
    first_file = restart_server(stack, server)
    server.sql(
        f"CREATE TABLE {server.db}.pair (id INT PRIMARY KEY, a INT NOT NULL, b VARCHAR(20))",
        *(f"CREATE TABLE {server.db}.x{i} (k BIGINT PRIMARY KEY, note TEXT, n DOUBLE)"
          for i in range(80)),
    )  # fmt: skip
    topic = f"aesop.t{unique}"
    spec = SourceSpec("src", [f"{server.db}.*"], int(unique, 16) % 1_000_000 + 100_000,
                      server.position(), topic, exclude=[f"{server.db}.x*"],
                      mysql=server.url())  # fmt: skip
    config = make_config(sources=[spec])
    worker = workers.start(config)
    worker.wait_for_log("relay src: reading", timeout=90)
    server.sql("INSERT INTO pair VALUES (1, 1, 'one')")
    read_topic(topic, count_then_settle(1, 1.0), timeout=60)
    assert worker.stop() == 0
    # Read after the resume point: pair's table map, with the id it has in this file.
    server.sql("INSERT INTO pair VALUES (2, 2, 'two')")
    [pair_id] = set(table_ids(first_file, server)["pair"])

    second_file = restart_server(stack, server)
    reused = None
    for i in range(80):
        server.sql(f"INSERT INTO x{i} VALUES ({i}, 'excluded {i}', {i}.5)")
        [got] = table_ids(second_file, server)[f"x{i}"]
        if got == pair_id:
            reused = f"x{i}"
            break
        assert got < pair_id, f"x{i} got table id {got}, past pair's {pair_id}: cannot collide"
    assert reused is not None, f"no excluded table got pair's table id {pair_id}"
    server.sql(f"INSERT INTO {reused} VALUES (1000, 'after the collision', 0.25)")
    server.sql("INSERT INTO pair VALUES (3, 3, 'three')")

    worker = workers.start(config)
    worker.wait_for_log("relay src: reading", timeout=90)
    messages = read_topic(topic, count_then_settle(3, 3.0), timeout=60)
    tables = {m["value"]["source"]["table"] for m in messages}
    assert tables == {"pair"}, f"events under {tables}"
    afters = sorted((m["value"]["after"] for m in messages), key=lambda a: a["id"])
    assert afters == [
        {"id": 1, "a": 1, "b": "one"},
        {"id": 2, "a": 2, "b": "two"},
        {"id": 3, "a": 3, "b": "three"},
    ], f"rows of {reused} (table id {pair_id}) were decoded as pair: {afters}"
    log = worker.log()
    assert "Traceback" not in log and "relay src: reading again" not in log
    assert worker.stop() == 0


# What a worker logs at each attempt while a service it needs at start-up is down. ZooKeeper:
# Kafka (in ZooKeeper mode) creates no topic without it, so a worker starting afresh waits
# inside Kafka; a worker whose topics exist starts from its tables, and only the ZooKeeper
# mirror waits, with one line when it falls behind.
WAITING_LINE = {
    "kafka": re.compile(r"kafka 127\.0\.0\.1:9092: .*; waiting for it, next attempt in"),
    "zookeeper": re.compile(r"zookeeper 127\.0\.0\.1:2181: mirror behind"),
    "server": re.compile(r"relay src: .*; retrying in \d"),
}


@pytest.mark.parametrize(
    ("service", "matrix_server"),
    [("kafka", "mariadb10"), ("zookeeper", "mariadb10"),
     ("server", "mariadb10"), ("server", "mysql8")],
    indirect=["matrix_server"],
)  # fmt: skip
def test_a_worker_started_while_a_service_is_down_waits_and_then_relays(
    stack: Stack,
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    server: ServerDatabase,
    service: str,
) -> None:
    """A worker restarted during an outage (its topics and checkpoint exist) does not exit:
    it logs what it waits for, once per attempt, and relays once the service is back."""
    server.sql(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, note VARCHAR(32))")
    first, _, topic = start_worker(workers, tmp_path, unique, server)
    assert first.stop() == 0
    config = first.config
    with stopped(stack, server.service if service == "server" else service):
        if service != "server":
            server.sql(f"INSERT INTO {TABLE} VALUES (1, 'while down')")
        worker = workers.start(config)
        time.sleep(8)
        assert worker.proc.poll() is None, f"the worker exited while {service} was down"
        waiting = [line for line in worker.log().splitlines() if WAITING_LINE[service].search(line)]
        # One line per attempt, backing off: 0.5, 1, 2, 4... seconds (the mirror: one line).
        low, high = (1, 1) if service == "zookeeper" else (2, 8)
        assert low <= len(waiting) <= high, f"{len(waiting)} waiting lines: {waiting[:3]}"
    back = time.monotonic()
    if service == "server":
        server.sql(f"INSERT INTO {TABLE} VALUES (1, 'once back')")
    worker.wait_for_log("relay src: reading", timeout=60)
    read_rows(topic, {1}, timeout=60)
    flowing_after = time.monotonic() - back
    server.sql(f"INSERT INTO {TABLE} VALUES (2, 'after')")
    read_rows(topic, {1, 2}, timeout=30)
    print(f"{service}: changes flow {flowing_after:.1f}s after it is back")
    assert flowing_after <= 10, f"changes flowed {flowing_after:.1f}s after {service} was back"
    assert "Traceback" not in worker.log()
    assert worker.stop() == 0


@MARIADB10_ONLY
def test_kafka_gone_between_the_producer_and_the_consumer_start_is_waited_for(
    workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """Kafka refuses every connection after the producer's bootstrap: the consumer thread's
    bootstrap waits (one line per attempt) instead of crashing the worker, and changes flow once
    Kafka answers again."""
    server.sql(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, note VARCHAR(32))")
    first, app_id, topic = start_worker(workers, tmp_path, unique, server)
    assert first.stop() == 0
    kafka_port = int(KAFKA.rsplit(":", 1)[1])
    with Gate(kafka_port) as gate:
        config = first.config.with_name("gated.toml")
        config.write_text(first.config.read_text().replace(KAFKA, f"127.0.0.1:{gate.port}"))
        server.sql(f"INSERT INTO {TABLE} VALUES (1, 'while refused')")
        gate.refuse_after(1)  # the producer's bootstrap, and no other
        worker = workers.start(config)
        waiting = re.compile(
            rf"kafka 127\.0\.0\.1:{gate.port}: consumer of {app_id}: .*; waiting for it"
        )
        wait_until(lambda: len(waiting.findall(worker.log())) >= 2, timeout=60,
                   what="two waiting lines from the consumer")  # fmt: skip
        assert worker.proc.poll() is None, "the worker exited while Kafka refused it"
        assert gate.refused >= 2
        gate.open()
        back = time.monotonic()
        worker.wait_for_log("relay src: reading", timeout=60)
        read_rows(topic, {1}, timeout=60)
        print(f"changes flow {time.monotonic() - back:.1f}s after Kafka answers again")
        assert "Traceback" not in worker.log()
        assert worker.stop() == 0


BATCH_LINE = re.compile(
    r"baseOffset: (\d+) lastOffset: (\d+) count: (\d+) baseSequence: (-?\d+) "
    r"lastSequence: (-?\d+) producerId: (-?\d+) producerEpoch: (-?\d+)"
)


def record_batches(topic: str) -> dict[int, list[tuple[int, ...]]]:
    """Per partition, the record batches of its first segment as the broker stored them:
    (base offset, last offset, count, base sequence, last sequence, producer id, epoch)."""
    batches: dict[int, list[tuple[int, ...]]] = {}
    for folder in sorted(KAFKA_DATA.glob(f"{topic}-*")):
        partition = int(folder.name.rsplit("-", 1)[1])
        done = subprocess.run(
            ["java", "-cp", str(ROOT / ".stack" / "kafka" / "libs" / "*"),
             "kafka.tools.DumpLogSegments", "--files", str(folder / f"{0:020d}.log")],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=True,
        )  # fmt: skip
        found = [tuple(map(int, m.groups())) for m in BATCH_LINE.finditer(done.stdout)]
        if found:
            batches[partition] = found
    return batches


@MARIADB10_ONLY
def test_the_relay_writes_through_an_idempotent_producer(
    workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """Each record batch carries a producer id and sequence numbers, so the broker drops a
    batch that a retry sends again (after a broker restart, say) instead of appending it twice."""
    server.sql(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, note VARCHAR(32))")
    worker, _, topic = start_worker(workers, tmp_path, unique, server)
    for low in range(0, 300, 30):
        values = ", ".join(f"({i}, 'row {i}')" for i in range(low + 1, low + 31))
        server.sql(f"INSERT INTO {TABLE} VALUES {values}")
    read_rows(topic, set(range(1, 301)), timeout=60)
    batches = record_batches(topic)
    assert sum(b[2] for found in batches.values() for b in found) == 300, batches
    for partition, found in batches.items():
        producers = {(b[5], b[6]) for b in found}
        assert len(producers) == 1 and next(iter(producers))[0] >= 0, (partition, producers)
        # Sequence numbers run on without a gap from 0, batch after batch.
        expected = 0
        for batch in found:
            count, base_seq, last_seq = batch[2:5]
            assert (base_seq, last_seq) == (expected, expected + count - 1), (partition, found)
            expected += count
    assert worker.stop() == 0


@MARIADB10_ONLY
@pytest.mark.parametrize(("service", "down_s"), [("mariadb", 5), ("kafka", 15), ("zookeeper", 15)])
def test_changes_flow_again_within_10s_of_an_outage_at_relay_and_consumer(
    stack: Stack,
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    server: ServerDatabase,
    service: str,
    down_s: int,
    make_config,
) -> None:
    """Under a steady load, with a ``mysql`` consumer: the first row committed once the service
    is back reaches Kafka, then the replica, within 10 s; in the end the replica is complete."""
    replica = f"{server.db}_replica"
    table = f"{TABLE} (id INT PRIMARY KEY, note VARCHAR(32))"
    server.sql(
        f"CREATE DATABASE {replica}", f"CREATE TABLE {replica}.{table}"
    )  # the load makes its own
    app_id, topic = f"t{unique}", f"aesop.t{unique}"
    spec = SourceSpec("src", [f"{server.db}.*"], int(unique, 16) % 1_000_000 + 100_000,
                      server.position(), topic)  # fmt: skip
    extra = (f'\n[[consumer]]\nname = "{app_id}-replica"\ntopics = ["{topic}"]\n'
             f'handler = "mysql"\nmysql = "mysql://root@127.0.0.1:3306/{replica}"\n')  # fmt: skip
    config = make_config(sources=[spec], extra=extra)
    worker = workers.start(config)
    worker.wait_for_log("relay src: reading", timeout=90)

    def in_replica(row: int) -> bool:
        with contextlib.suppress(pymysql.MySQLError):
            return bool(server.sql(f"SELECT 1 FROM {TABLE} WHERE id = {row}", database=replica))
        return False

    try:
        with SteadyLoad(server) as load:
            load.wait_for(RATE)
            first = load.committed[-1]
            wait_until(lambda: in_replica(first), 60, "the consumer to apply the load")
            with stopped(stack, service):
                time.sleep(down_s)
            back = time.monotonic()
            seen = len(load.committed)
            load.wait_for(1, timeout=30)
            row = load.committed[seen]  # the first row committed once the service was back
            read_rows(topic, {row}, timeout=60)
            to_kafka = time.monotonic() - back
            wait_until(lambda: in_replica(row), 60, f"row {row} in the replica", every=0.05)
            to_replica = time.monotonic() - back
            load.wait_for(RATE)
            committed = load.stop()
        wait_until(
            lambda: server.sql(f"SELECT COUNT(*) FROM {TABLE}", database=replica)[0][0]
            == len(committed),
            90, "the replica to hold every committed row",
        )  # fmt: skip
        print(f"{service} back: in Kafka after {to_kafka:.1f}s, replica {to_replica:.1f}s")
        assert to_kafka <= 10, f"{service}: the relay took {to_kafka:.1f}s to publish again"
        assert to_replica <= 10, f"{service}: the consumer took {to_replica:.1f}s to apply again"
        assert worker.stop() == 0
    finally:
        server.sql(f"DROP DATABASE IF EXISTS {replica}")


@MARIADB10_ONLY
def test_a_sigterm_while_kafka_is_down_exits_within_the_stop_deadline(
    stack: Stack, workers: WorkerFactory, tmp_path: Path, unique: str, server: ServerDatabase
) -> None:
    """The relay and the consumer group cannot finish their stop without Kafka: the worker
    gives up at the deadline with one line, and the next start resumes and relays."""
    from app.factory import STOP_DEADLINE_S, STOP_GAVE_UP_EXIT

    server.sql(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, note VARCHAR(32))")
    # The next start waits for this worker's session to time out: keep it short.
    short_session = {"AESOP_SESSION_TIMEOUT": "10"}
    worker, _, topic = start_worker(workers, tmp_path, unique, server, short_session)
    server.sql(f"INSERT INTO {TABLE} VALUES (1, 'before')")
    read_rows(topic, {1}, timeout=30)
    with stopped(stack, "kafka"):
        server.sql(f"INSERT INTO {TABLE} VALUES (2, 'while down')")
        time.sleep(2)
        asked = time.monotonic()
        rc = worker.stop(timeout=STOP_DEADLINE_S + 20)
        took = time.monotonic() - asked
    assert took <= STOP_DEADLINE_S + 2, f"the worker took {took:.1f}s to stop"
    log = worker.log()
    assert rc == STOP_GAVE_UP_EXIT, f"exit {rc}"
    gave_up = [line for line in log.splitlines() if "still stopping" in line]
    assert len(gave_up) == 1 and "as after a crash" in gave_up[0], gave_up
    assert "Traceback" not in log
    again = workers.start(worker.config, short_session)
    again.wait_for_log("relay src: reading", timeout=90)
    read_rows(topic, {1, 2}, timeout=60)
    assert again.stop() == 0
