"""Preflight and config errors through the real CLI and worker: one actionable line, never a trace.

Server settings are changed on throwaway mariadbd processes started here, never on the
shared stack, so no other test sees a STATEMENT binlog or a compressed event.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pymysql
import pytest
from kazoo.client import KazooClient

from tests.support.cli import relay_state
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.kafka import count_at_least, read_topic
from tests.support.servers import BIN, BINLOG_ON, PrivateServer, start_private_server
from tests.support.stack import ROOT, ZOOKEEPER, free_port, wait_until
from tests.support.workers import WorkerFactory

# --- throwaway servers -------------------------------------------------------------------


@pytest.fixture(scope="session")
def binlog_off_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """A server started with --skip-log-bin (log_bin is not dynamic)."""
    server = start_private_server(tmp_path_factory.mktemp("mariadb-nobinlog"), "--skip-log-bin")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def binlog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    """A server configured as aesop wants it; tests change its globals and restore them."""
    server = start_private_server(tmp_path_factory.mktemp("mariadb-binlog"), *BINLOG_ON)
    yield server
    server.stop()


@contextmanager
def global_variable(server: PrivateServer, name: str, value: str) -> Iterator[None]:
    """SET GLOBAL name = value for the block; the old value is restored whatever happens."""
    ((_, old),) = server.sql(f"SHOW GLOBAL VARIABLES LIKE '{name}'")
    server.sql(f"SET GLOBAL {name} = '{value}'")
    try:
        yield
    finally:
        server.sql(f"SET GLOBAL {name} = '{old}'")


@contextmanager
def account(
    server: PrivateServer, user: str, grants: str | None, password: str = "pw"
) -> Iterator[str]:
    """A user@'%' with only ``grants`` on *.*; yields its mysql:// URL; dropped afterwards."""
    server.sql(
        f"DROP USER IF EXISTS '{user}'@'%'", f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"
    )
    try:
        if grants:
            server.sql(f"GRANT {grants} ON *.* TO '{user}'@'%'")
        yield server.url(user, password)
    finally:
        server.sql(f"DROP USER IF EXISTS '{user}'@'%'")


# --- the CLI ---------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    kafka: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def run(argv: list[str], config: Path, env: dict[str, str] | None = None) -> Outcome:
    """Run a command as an operator would, with only AESOP_CONFIG (and ``env``) set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AESOP_")}
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env={**clean, "AESOP_CONFIG": str(config), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def aesop_check(config: Path, env: dict[str, str] | None = None) -> Outcome:
    """``aesop check``, its lines about Kafka's durability set apart in ``kafka`` (the tests of
    sources look at the rest; tests/test_durability.py at those)."""
    outcome = run([str(BIN / "aesop"), "check"], config, env)
    kept, kafka = [], []
    for line in outcome.stdout.splitlines(keepends=True):
        (kafka if line.startswith(("ok: kafka", "warning: kafka")) else kept).append(line)
    outcome.stdout, outcome.kafka = "".join(kept), kafka
    return outcome


def assert_one_error(outcome: Outcome, code: int, prefix: str, *needles: str) -> str:
    """Exit ``code``, one line on stderr starting with ``prefix``, nothing else; returns it."""
    assert "Traceback" not in outcome.text, outcome.text
    assert outcome.code == code, outcome.text
    assert outcome.stdout == "", outcome.text
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.text
    line = lines[0]
    assert line.startswith(prefix), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def config_for(
    tmp_path: Path, unique: str, *sources: tuple[str, str], zookeeper: str = ZOOKEEPER
) -> Path:
    """A config with one source per (name, mysql URL), each with its own server id."""
    specs = [
        SourceSpec(
            name=name,
            include=["*.*"],
            server_id=7000 + random.randrange(10**8),
            start="earliest",
            topic=f"aesop.t{unique}-{name}",
            mysql=url,
        )
        for name, url in sources
    ]
    return ConfigFactory(tmp_path, unique)(specs, zookeeper=zookeeper)


def source_error(name: str) -> str:
    return f"error: source {name!r}: "


# --- aesop check against servers -------------------------------------------------------------


def test_check_passes_for_root_a_replication_user_and_a_role(
    binlog_server: PrivateServer, tmp_path: Path, unique: str
) -> None:
    server = binlog_server
    server.sql(
        "DROP ROLE IF EXISTS pf_relay",
        "CREATE ROLE pf_relay",
        "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO pf_relay",
    )
    try:
        with (
            account(server, "pf_repl", "REPLICATION SLAVE, REPLICATION CLIENT") as repl,
            account(server, "pf_role", None) as role,
        ):
            server.sql(
                "GRANT pf_relay TO 'pf_role'@'%'", "SET DEFAULT ROLE pf_relay FOR 'pf_role'@'%'"
            )
            config = config_for(
                tmp_path, unique, ("root", server.url()), ("repl", repl), ("role", role)
            )
            outcome = aesop_check(config)
    finally:
        server.sql("DROP ROLE IF EXISTS pf_relay")
    assert outcome.code == 0, outcome.text
    assert outcome.stderr == ""
    lines = outcome.stdout.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "source 'root'", "source 'repl'", "source 'role'",
    ]  # fmt: skip
    for line in lines:
        assert re.match(
            r"ok: source '\w+': reads from mysql-bin\.\d+:4 \(start = earliest\); binlog "
            r"compression: log_bin_compress=OFF, log_bin_compress_min_len=256$",
            line,
        )


def test_check_refuses_a_server_without_binlog(
    binlog_off_server: PrivateServer, tmp_path: Path, unique: str
) -> None:
    config = config_for(tmp_path, unique, ("shop", binlog_off_server.url()))
    assert_one_error(
        aesop_check(config), 1, source_error("shop"), "binary logging is off", "log-bin=mysql-bin"
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("binlog_format", "STATEMENT", ["binlog_format is STATEMENT", "set binlog_format=ROW"]),
        ("binlog_format", "MIXED", ["binlog_format is MIXED", "set binlog_format=ROW"]),
        ("binlog_row_image", "MINIMAL", ["binlog_row_image is MINIMAL", "binlog_row_image=FULL"]),
        ("binlog_row_image", "NOBLOB", ["binlog_row_image is NOBLOB", "binlog_row_image=FULL"]),
        ("binlog_row_metadata", "MINIMAL", ["binlog_row_metadata is MINIMAL", "=FULL"]),
        ("binlog_row_metadata", "NO_LOG", ["binlog_row_metadata is NO_LOG", "=FULL"]),
    ],
)
def test_check_refuses_a_binlog_setting(
    binlog_server: PrivateServer,
    tmp_path: Path,
    unique: str,
    name: str,
    value: str,
    expected: list[str],
) -> None:
    config = config_for(tmp_path, unique, ("shop", binlog_server.url()))
    with global_variable(binlog_server, name, value):
        outcome = aesop_check(config)
    assert_one_error(outcome, 1, source_error("shop"), *expected)
    assert aesop_check(config).code == 0, "restoring the variable should make the check pass"


def test_check_names_every_wrong_binlog_setting_in_one_line(
    binlog_server: PrivateServer, tmp_path: Path, unique: str
) -> None:
    config = config_for(tmp_path, unique, ("shop", binlog_server.url()))
    with (
        global_variable(binlog_server, "binlog_format", "STATEMENT"),
        global_variable(binlog_server, "binlog_row_image", "MINIMAL"),
    ):
        outcome = aesop_check(config)
    assert_one_error(
        outcome, 1, source_error("shop"),
        "binlog_format is STATEMENT, binlog_row_image is MINIMAL",
        "set binlog_format=ROW, binlog_row_image=FULL",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("grants", "lacks"),
    [
        ("REPLICATION CLIENT", "lacks REPLICATION SLAVE;"),
        ("REPLICATION SLAVE", "lacks REPLICATION CLIENT;"),
        ("REPLICATION SLAVE, SLAVE MONITOR", "lacks REPLICATION CLIENT;"),
        ("REPLICATION SLAVE ADMIN, BINLOG MONITOR", "lacks REPLICATION SLAVE;"),
        (None, "lacks REPLICATION SLAVE and REPLICATION CLIENT;"),
    ],
)
def test_check_refuses_a_missing_privilege(
    binlog_server: PrivateServer, tmp_path: Path, unique: str, grants: str | None, lacks: str
) -> None:
    with account(binlog_server, "pf_user", grants) as url:
        outcome = aesop_check(config_for(tmp_path, unique, ("shop", url)))
    assert_one_error(
        outcome, 1, source_error("shop"), "user 'pf_user'", lacks,
        "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'pf_user'@'%'",
    )  # fmt: skip


def test_check_refuses_an_unreachable_server(tmp_path: Path, unique: str) -> None:
    port = free_port()  # nothing listens on it
    config = config_for(tmp_path, unique, ("shop", f"mysql://root@127.0.0.1:{port}"))
    assert_one_error(
        aesop_check(config), 1, source_error("shop"),
        f"cannot reach MySQL at 127.0.0.1:{port}", "is it running?",
    )  # fmt: skip


def test_check_refuses_a_wrong_password_without_printing_it(
    binlog_server: PrivateServer, tmp_path: Path, unique: str
) -> None:
    with account(binlog_server, "pf_pw", "REPLICATION SLAVE, REPLICATION CLIENT", "right-pw"):
        url = binlog_server.url("pf_pw", "Wr0ng-S3cret")
        outcome = aesop_check(config_for(tmp_path, unique, ("shop", url)))
    line = assert_one_error(
        outcome, 1, source_error("shop"),
        f"access denied for 'pf_pw' at 127.0.0.1:{binlog_server.port}", "check user/password",
    )  # fmt: skip
    assert "Wr0ng-S3cret" not in line


def test_check_reports_each_failing_source_on_its_own_line(
    binlog_server: PrivateServer, binlog_off_server: PrivateServer, tmp_path: Path, unique: str
) -> None:
    config = config_for(
        tmp_path, unique,
        ("down", f"mysql://root@127.0.0.1:{free_port()}"),
        ("nobinlog", binlog_off_server.url()),
        ("good", binlog_server.url()),
    )  # fmt: skip
    outcome = aesop_check(config)
    assert outcome.code == 1, outcome.text
    assert "Traceback" not in outcome.text
    errors = outcome.stderr.splitlines()
    assert len(errors) == 2, outcome.text
    assert errors[0].startswith(source_error("down")) and "cannot reach MySQL" in errors[0]
    assert errors[1].startswith(source_error("nobinlog")) and "binary logging is off" in errors[1]
    assert outcome.stdout.startswith("ok: source 'good': reads from mysql-bin.")
    assert len(outcome.stdout.splitlines()) == 1


def test_check_refuses_unreachable_zookeeper(
    binlog_server: PrivateServer, tmp_path: Path, unique: str
) -> None:
    zookeeper = f"127.0.0.1:{free_port()}"
    config = config_for(tmp_path, unique, ("shop", binlog_server.url()), zookeeper=zookeeper)
    assert_one_error(
        aesop_check(config), 1, "aesop: ", f"cannot reach ZooKeeper at {zookeeper}",
        'zookeeper = ""',
    )  # fmt: skip


# --- checkpoints -----------------------------------------------------------------------


@contextmanager
def zk_documents(root: str, documents: dict[str, bytes]) -> Iterator[None]:
    """Put raw documents under ``root`` in the stack's ZooKeeper; delete ``root`` afterwards."""
    client = KazooClient(hosts=ZOOKEEPER, timeout=10)
    client.start(timeout=15)
    try:
        for path, data in documents.items():
            client.create(root + path, data, makepath=True)
        yield
    finally:
        client.delete(root, recursive=True)
        client.stop()
        client.close()


def purged_binlog(server: PrivateServer) -> tuple[str, str]:
    """Rotate and purge so the oldest binlog so far is gone; returns (purged, oldest now)."""
    first = server.sql("SHOW BINARY LOGS")[0][0]
    server.sql("FLUSH BINARY LOGS")
    newest = server.sql("SHOW BINARY LOGS")[-1][0]

    def purged() -> bool:
        # PURGE keeps a file until its binlog checkpoint is written, a moment after FLUSH.
        server.sql(f"PURGE BINARY LOGS TO '{newest}'")
        return [row[0] for row in server.sql("SHOW BINARY LOGS")] == [newest]

    wait_until(purged, 30, f"PURGE BINARY LOGS TO '{newest}' to leave only {newest}")
    return first, newest


def checkpoint_document(file: str, pos: int = 4) -> bytes:
    seq = int(file.rsplit(".", 1)[1])
    return orjson.dumps(
        {"file": file, "pos": pos, "gtid": None, "scn": seq << 32 | pos, "row": -1, "ts_ms": 0}
    )


def test_check_refuses_a_checkpoint_in_a_purged_binlog(
    binlog_server: PrivateServer, tmp_path: Path, unique: str
) -> None:
    purged, oldest = purged_binlog(binlog_server)
    config = config_for(tmp_path, unique, ("shop", binlog_server.url()))
    root = f"/aesop-test/t{unique}"
    with zk_documents(root, {"/relays/shop": checkpoint_document(purged)}):
        outcome = aesop_check(config)
    assert_one_error(
        outcome, 1, source_error("shop"),
        f"binlog {purged} (the checkpoint) is no longer on the server (oldest is {oldest})",
        "keep binlogs longer", "delete the checkpoint",
    )  # fmt: skip
    # Without the checkpoint the same source is fine: the error was about the position.
    assert aesop_check(config).code == 0


@pytest.mark.parametrize(
    ("document", "prefix", "expected"),
    [
        (b'{"file": "mysql-bin.000001"}', source_error("shop"), "stored checkpoint"),
        (b"not json", "aesop: ZooKeeper ", "is not JSON; fix or delete that node"),
    ],
    ids=["malformed", "not-json"],
)
def test_check_refuses_a_malformed_checkpoint(
    binlog_server: PrivateServer,
    tmp_path: Path,
    unique: str,
    document: bytes,
    prefix: str,
    expected: str,
) -> None:
    config = config_for(tmp_path, unique, ("shop", binlog_server.url()))
    root = f"/aesop-test/t{unique}"
    with zk_documents(root, {"/relays/shop": document}):
        outcome = aesop_check(config)
    assert_one_error(outcome, 1, prefix, f"{root}/relays/shop", expected)


# --- the worker --------------------------------------------------------------------------


def lines_with(text: str, needle: str) -> list[str]:
    """The log lines holding ``needle``, without the trailing blank faust's logger adds."""
    return [line.rstrip() for line in text.splitlines() if needle in line]


def test_worker_stops_at_a_purged_checkpoint_with_the_checks_error(
    binlog_server: PrivateServer, workers: WorkerFactory, tmp_path: Path, unique: str
) -> None:
    purged, _ = purged_binlog(binlog_server)
    config = config_for(tmp_path, unique, ("shop", binlog_server.url()))
    root = f"/aesop-test/t{unique}"
    with zk_documents(root, {"/relays/shop": checkpoint_document(purged)}):
        check_line = assert_one_error(aesop_check(config), 1, source_error("shop"))
        worker = workers.start(config)
        worker.wait_for_log("is no longer on the server", timeout=90)
        # Failed is where the relay stays (it tries again after FAILED_RETRY_S, 60 s): had it
        # started reading from somewhere else, it would say reading.
        wait_until(lambda: relay_state(config, "shop") == "failed", 30, "the relay to fail")
        log = worker.log()
    errors = lines_with(log, "is no longer on the server")
    assert len(errors) == 1, errors
    assert errors[0].endswith(f"relay shop: {check_line.removeprefix('error: ')}"), errors[0]
    assert "[ERROR]" in errors[0]
    assert "relay shop: reading" not in log
    assert "Traceback" not in log
    assert worker.stop() == 0


async def test_a_purged_checkpoint_leaves_the_relay_failed_and_repeats_its_error(
    binlog_server: PrivateServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay's state says why it stopped, and the error line comes back at an interval."""
    import asyncio
    from types import SimpleNamespace

    from app.settings import MySQLURL, SourceSettings
    from relay import source as relay_source
    from tables.positions import Checkpoint

    purged, _ = purged_binlog(binlog_server)
    checkpoint = Checkpoint.from_json(orjson.loads(checkpoint_document(purged)))
    store = SimpleNamespace(stored=lambda name: checkpoint, zk=SimpleNamespace(enabled=False))
    url = MySQLURL("127.0.0.1", binlog_server.port, "root", "")
    settings = SourceSettings("shop", url, 5401, (), (), "earliest", "aesop.shop")
    monkeypatch.setattr(relay_source, "FAILED_RETRY_S", 0.5)
    caplog.set_level(logging.INFO, logger=relay_source.log.name)
    relay = relay_source.SourceRelay(None, settings, store)  # type: ignore[arg-type]
    assert relay.status()["state"] == "starting"
    relay.start()

    def errors() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == logging.ERROR]

    deadline = time.monotonic() + 30
    while len(errors()) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    status = relay.status()
    await relay.stop()

    lines = [r.getMessage() for r in errors()]
    assert len(lines) >= 3, lines
    assert len(set(lines)) == 1, "the same line each time"
    assert lines[0].startswith(f"relay shop: source 'shop': binlog {purged} (the checkpoint) is no")
    gaps = [b.created - a.created for a, b in itertools.pairwise(errors())]
    assert all(0.45 <= gap < 5 for gap in gaps), gaps
    assert status["state"] == "failed", status
    assert status["reason"] == lines[0].removeprefix("relay shop: ")
    assert status["checkpoint"] is None, "it never started reading"
    assert relay.status()["state"] == "stopped"
    assert not any("reading" in r.getMessage() for r in caplog.records)


def test_worker_logs_each_failed_preflight_in_one_line_and_recovers(
    binlog_server: PrivateServer, workers: WorkerFactory, tmp_path: Path, unique: str
) -> None:
    config = config_for(tmp_path, unique, ("shop", binlog_server.url()))
    with global_variable(binlog_server, "binlog_format", "STATEMENT"):
        worker = workers.start(config)
        wait_until(
            lambda: len(lines_with(worker.log(), "binlog_format is STATEMENT")) >= 2,
            90, "two failed preflight attempts in the worker log",
        )  # fmt: skip
    for line in lines_with(worker.log(), "binlog_format is STATEMENT"):
        assert re.search(
            r"relay shop: source 'shop': binlog_format is STATEMENT; set binlog_format=ROW "
            r"in the server's config and restart it; retrying in \d+\.\d+s$",
            line,
        ), line
    # Fixed on the server, the same worker starts reading without a restart.
    worker.wait_for_log("relay shop: reading", timeout=60)
    assert "Traceback" not in worker.log()
    assert "relay shop: reading" not in worker.log().split("binlog_format is STATEMENT")[0]


def test_worker_relays_as_a_user_with_only_the_checked_privileges(
    binlog_server: PrivateServer,
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    make_config: ConfigFactory,
) -> None:
    """What the check passes must also work: REPLICATION SLAVE + CLIENT are enough to relay."""
    server, db = binlog_server, f"t_{unique}"
    server.sql(f"CREATE DATABASE {db}", f"CREATE TABLE {db}.notes (id INT PRIMARY KEY)")
    file, pos = server.position()
    topic = f"aesop.t{unique}"
    with account(server, "pf_relay_user", "REPLICATION SLAVE, REPLICATION CLIENT") as url:
        spec = SourceSpec(
            "shop", [f"{db}.*"], 7000 + random.randrange(10**8), f"{file}:{pos}", topic, mysql=url
        )
        config = make_config([spec])
        assert aesop_check(config).code == 0
        worker = workers.start(config)
        worker.wait_for_log("relay shop: reading", timeout=90)
        server.sql(f"INSERT INTO {db}.notes VALUES (7)")
        messages = read_topic(topic, count_at_least(1), timeout=60)
    assert [m["value"]["after"] for m in messages] == [{"id": 7}]
    server.sql(f"DROP DATABASE {db}")


def test_check_reports_compression_and_the_worker_relays_compressed_events(
    binlog_server: PrivateServer,
    workers: WorkerFactory,
    unique: str,
    make_config: ConfigFactory,
) -> None:
    """log_bin_compress=ON is reported by `aesop check`, not refused, and a worker publishes
    the rows of compressed rows events with the others, in order."""
    server, db = binlog_server, f"t_{unique}"
    server.sql(
        f"CREATE DATABASE {db}",
        f"CREATE TABLE {db}.notes (id INT PRIMARY KEY, body TEXT)",
    )
    file, pos = server.position()
    topic = f"aesop.t{unique}"
    spec = SourceSpec(
        "shop", [f"{db}.*"], 7000 + random.randrange(10**8), f"{file}:{pos}", topic,
        mysql=server.url(),
    )  # fmt: skip
    config = make_config([spec])
    with global_variable(server, "log_bin_compress", "ON"):
        outcome = aesop_check(config)
        assert outcome.code == 0, outcome.text
        assert outcome.stdout.splitlines()[0].endswith(
            "; binlog compression: log_bin_compress=ON, log_bin_compress_min_len=256"
        ), outcome.text
        worker = workers.start(config)
        worker.wait_for_log("relay shop: reading", timeout=90)
        boundary = server.position()
        server.sql(
            f"INSERT INTO {db}.notes VALUES (1, 'short')",
            f"INSERT INTO {db}.notes VALUES (2, '{'x' * 2000}')",
            f"UPDATE {db}.notes SET body = '{'y' * 2000}' WHERE id = 1",
        )
    server.sql(f"INSERT INTO {db}.notes VALUES (3, 'after')")
    kinds = [
        row[2].lower()
        for row in server.sql(f"SHOW BINLOG EVENTS IN '{boundary[0]}' FROM {boundary[1]}")
    ]
    assert "write_rows_compressed_v1" in kinds and "update_rows_compressed_v1" in kinds, kinds
    assert "write_rows_v1" in kinds, kinds  # the short rows stayed uncompressed

    messages = read_topic(topic, count_at_least(4), timeout=60)
    messages.sort(key=lambda m: (m["value"]["scn"], m["value"]["row"]))  # across partitions
    assert [(m["value"]["op"], m["value"]["after"]) for m in messages] == [
        ("c", {"id": 1, "body": "short"}),
        ("c", {"id": 2, "body": "x" * 2000}),
        ("u", {"id": 1, "body": "y" * 2000}),
        ("c", {"id": 3, "body": "after"}),
    ]
    assert "Traceback" not in worker.log()
    server.sql(f"DROP DATABASE {db}")


def test_the_compression_report_names_each_setting_the_server_has() -> None:
    from relay import preflight

    mariadb = {"log_bin": "ON", "log_bin_compress": "ON", "log_bin_compress_min_len": "256"}
    mysql_8_0_20 = {
        "log_bin": "ON",
        "binlog_transaction_compression": "ON",
        "binlog_transaction_compression_level_zstd": "3",
    }
    assert preflight.compression_report(mariadb) == (
        "log_bin_compress=ON, log_bin_compress_min_len=256"
    )
    assert preflight.compression_report(mysql_8_0_20) == (
        "binlog_transaction_compression=ON, binlog_transaction_compression_level_zstd=3"
    )
    assert preflight.compression_report({"log_bin": "ON"}) == ""  # MySQL before 8.0.20


# --- configuration errors ----------------------------------------------------------------

SOURCE = '[[source]]\nname = "shop"\nmysql = "mysql://root@127.0.0.1:3306"\nserver_id = 5401\n'


TWO = SOURCE + SOURCE.replace('"shop"', '"shop2"')
BAD_CONFIGS = [
    pytest.param('[aesop]\nkafak = "x:9092"\n', {}, "[aesop].kafak: unknown key", id="unknown-key"),
    pytest.param(SOURCE + 'includes = ["a.*"]\n', {}, "[[source]] 'shop'.includes: unknown key",
                 id="unknown-source-key"),
    pytest.param('[aesop]\nweb_port = "6066"\n', {}, "[aesop].web_port: must be an integer",
                 id="bad-type"),
    pytest.param(SOURCE.replace('"shop"', '"Shop!"'), {}, "[[source]] 'Shop!'.name: must match",
                 id="bad-source-name"),
    pytest.param(SOURCE + SOURCE.replace("5401", "5402"), {},
                 "[[source]].name: 'shop' is used twice", id="duplicate-name"),
    pytest.param(TWO, {}, "[[source]].server_id: 5401 is used twice", id="duplicate-server-id"),
    pytest.param(SOURCE.replace("server_id = 5401\n", ""), {},
                 "[[source]] 'shop'.server_id: is required", id="missing-key"),
    pytest.param('[aesop\nid = "x"\n', {}, "not valid TOML", id="bad-toml"),
    pytest.param(SOURCE.replace("mysql://", "postgres://"), {},
                 "[[source]] 'shop'.mysql: must look like mysql://", id="bad-mysql-url"),
    pytest.param("[aesop]\n", {"AESOP_WEB_PORT": "notanumber"},
                 "AESOP_WEB_PORT (overrides [aesop].web_port): must be an integer",
                 id="bad-env-override"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "env", "needle"), BAD_CONFIGS)
def test_check_refuses_a_bad_config(
    tmp_path: Path, text: str, env: dict[str, str], needle: str
) -> None:
    config = tmp_path / "aesop.toml"
    config.write_text(text)
    assert_one_error(aesop_check(config, env), 2, f"aesop: {config}: ", needle)


def test_check_refuses_a_missing_config_file(tmp_path: Path) -> None:
    config = tmp_path / "nowhere.toml"
    assert_one_error(
        aesop_check(config), 2, f"aesop: {config}: ", "no such config file", "AESOP_CONFIG"
    )


@pytest.mark.parametrize("command", ["faust", "aesop"])
def test_worker_refuses_a_bad_config_in_one_line(tmp_path: Path, command: str) -> None:
    config = tmp_path / "aesop.toml"
    config.write_text('[aesop]\nweb_port = "6066"\n')
    argv = {
        "faust": [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
        "aesop": [str(BIN / "aesop"), "worker"],
    }[command]
    assert_one_error(
        run(argv, config), 2, f"aesop: {config}: ", "[aesop].web_port: must be an integer"
    )


# --- MySQL 8 logins ----------------------------------------------------------------------


def test_pymysql_can_answer_a_caching_sha2_password_login_without_tls() -> None:
    """MySQL 8's default login sends the password RSA-encrypted with the server's key when
    the connection has no TLS; PyMySQL needs the cryptography package for that."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.hashes import SHA1
    from pymysql import _auth

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    salt = bytes(range(20))
    sent = _auth.sha2_rsa_encrypt(b"s3cret", salt, public)
    # What the server does with it: decrypt, then undo the XOR with the salt.
    plain = key.decrypt(sent, padding.OAEP(padding.MGF1(SHA1()), SHA1(), None))
    assert bytes(b ^ salt[i % len(salt)] for i, b in enumerate(plain)) == b"s3cret\0"


# --- MariaDB 11.4's event positions --------------------------------------------------------


def test_check_refuses_events_without_positions_and_passes_where_the_variable_is_absent() -> None:
    """MariaDB 11.4 added binlog_legacy_event_pos (OFF by default: end_log_pos 0 inside a
    transaction); MariaDB 10.x and MySQL have no such variable."""
    from app.errors import SourceError
    from app.settings import MySQLURL, SourceSettings
    from relay import preflight

    source = SourceSettings("shop", MySQLURL("127.0.0.1", 1, "root", ""), 5401, (), (), "", "t")
    found = {**dict(preflight.REQUIRED), "log_bin": "ON"}
    preflight.check_variables(source, found)
    preflight.check_variables(source, {**found, "binlog_legacy_event_pos": "ON"})
    with pytest.raises(SourceError) as raised:
        preflight.check_variables(source, {**found, "binlog_legacy_event_pos": "OFF"})
    assert str(raised.value) == (
        "source 'shop': binlog_legacy_event_pos is OFF; MariaDB 11.4+ then logs the events "
        "inside a transaction with end_log_pos 0 and their rows get no position: set "
        "binlog_legacy_event_pos=ON (SET GLOBAL, and in the server's config)"
    )


# --- MySQL 8 partial JSON updates ---------------------------------------------------------


def test_check_refuses_partial_json_updates_and_passes_where_the_variable_is_absent(
    binlog_server: PrivateServer,
) -> None:
    """MariaDB has no binlog_row_value_options; MySQL 8 lists it ('' or PARTIAL_JSON).

    Its value is judged with the rest of a real server's variables as SHOW GLOBAL
    VARIABLES lists them, once as MariaDB answers and once with MySQL 8's variable added.
    """
    from app.errors import SourceError
    from app.settings import MySQLURL, SourceSettings
    from relay import preflight

    url = MySQLURL("127.0.0.1", binlog_server.port, "root", "")
    source = SourceSettings("shop", url, 5401, (), (), "earliest", "aesop.shop")
    with pymysql.connect(**url.connect_args()) as conn:
        found = preflight.binlog_variables(conn)
    assert found["log_bin"] == "ON" and "binlog_row_value_options" not in found, found
    preflight.check_variables(source, found)
    preflight.check_variables(source, {**found, "binlog_row_value_options": ""})
    with pytest.raises(SourceError) as raised:
        preflight.check_variables(source, {**found, "binlog_row_value_options": "PARTIAL_JSON"})
    assert str(raised.value) == (
        "source 'shop': binlog_row_value_options is PARTIAL_JSON; partial JSON updates log a "
        "diff instead of the new row and cannot be decoded: set binlog_row_value_options='' "
        "(SET PERSIST binlog_row_value_options='')"
    )


def test_check_exits_2_for_bad_input_and_1_for_any_other_error() -> None:
    from app.cli import ErrorLine, check_exit_code
    from app.errors import GtidError, GtidPurgedError, PositionLostError, SourceError

    assert check_exit_code([]) == 0
    assert check_exit_code(["ok: source 'a': reads from f:4 (start = latest)"]) == 0
    assert check_exit_code(["ok: a", "error: consumer 'c': cannot import"]) == 1
    unreachable = ErrorLine("error: unreachable", SourceError.exit_code)
    purged = ErrorLine("error: purged", GtidPurgedError.exit_code)
    assert check_exit_code([unreachable]) == 1
    assert check_exit_code([unreachable, purged, "error: other"]) == 2
    assert purged == "error: purged" and purged.startswith("error")
    assert issubclass(GtidPurgedError, PositionLostError) and GtidError.exit_code == 2
