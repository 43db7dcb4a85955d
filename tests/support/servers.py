"""Throwaway MariaDB servers a test starts, with options of its own, and stops by pid; the
local stack's MySQL 8.0 and MariaDB 11.4."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

from app.settings import MySQLURL
from relay.binlog_status import binary_log_status
from tests.support.stack import free_port, wait_until

BIN = Path(sys.executable).parent


MARIADBD = shutil.which("mariadbd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


INSTALL_DB = shutil.which("mariadb-install-db", path=f"{os.environ.get('PATH', '')}:/usr/bin")


BINLOG_ON = (
    "--log-bin=mysql-bin",
    "--server-id=1",
    "--binlog-format=ROW",
    "--binlog-row-image=FULL",
    "--binlog-row-metadata=FULL",
    "--log-bin-compress=OFF",
)


class RootOnLoopback:
    """SQL as root, without a password, on a server at 127.0.0.1:``port``."""

    port: int

    def sql(self, *statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run statements (autocommit) and return the last one's rows."""
        with pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", database=database, autocommit=True
        ) as conn, conn.cursor() as cur:  # fmt: skip
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                cur.execute(statement)
                rows = list(cur.fetchall())
            return rows

    def position(self) -> tuple[str, int]:
        with (
            pymysql.connect(host="127.0.0.1", port=self.port, user="root") as conn,
            conn.cursor() as cur,
        ):
            file, pos = binary_log_status(cur)[:2]
        return str(file), int(pos)


@dataclass
class PrivateServer(RootOnLoopback):
    """A mariadbd of this test session on 127.0.0.1:<port>, root with no password."""

    base: Path
    port: int
    proc: subprocess.Popen[bytes]

    def url(self, user: str = "root", password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"mysql://{user}{secret}@127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.base / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop this server by its pid (SIGTERM, then SIGKILL after 60 s)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_private_server(base: Path, *options: str) -> PrivateServer:
    """mariadb-install-db a data dir under ``base``, start mariadbd on it, add root@127.0.0.1."""
    assert MARIADBD and INSTALL_DB, "mariadb-server is not installed (make up installs it)"
    base.mkdir(parents=True, exist_ok=True)
    datadir, sock = base / "data", base / "sock"
    subprocess.run(
        [INSTALL_DB, "--no-defaults", "--user=root", f"--datadir={datadir}",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    out = (base / "mariadbd.out").open("ab")
    proc = subprocess.Popen(
        [MARIADBD, "--no-defaults", f"--datadir={datadir}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={sock}", f"--pid-file={base / 'pid'}",
         "--user=root", "--skip-name-resolve", f"--log-error={base / 'error.log'}",
         "--innodb-buffer-pool-size=32M", *options],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out.close()
    server = PrivateServer(base, port, proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = pymysql.connect(unix_socket=str(sock), user="root", autocommit=True)
            break
        except pymysql.err.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"mariadbd in {base} did not start:\n{server.log()}") from None
            time.sleep(0.2)
    # As docker/mariadb/bootstrap.sql: with skip-name-resolve a TCP client from 127.0.0.1
    # matches only root@127.0.0.1.
    with conn, conn.cursor() as cur:
        for statement in (
            "SET sql_log_bin = 0",
            "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'",
            "ALTER USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('')",
            "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
        ):
            cur.execute(statement)
    return server


def restart(server: PrivateServer) -> PrivateServer:
    """Start a stopped private server again: same command, data directory and port."""
    with (server.base / "mariadbd.out").open("ab") as out:
        proc = subprocess.Popen(
            server.proc.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    again = PrivateServer(server.base, server.port, proc)
    wait_until(lambda: connectable(again), 60, "the replica server to accept connections")
    return again


def connectable(server: PrivateServer) -> bool:
    try:
        server.sql("SELECT 1")
    except pymysql.err.OperationalError:
        assert server.proc.poll() is None, server.log()
        return False
    return True


@dataclass(frozen=True)
class StackServer(RootOnLoopback):
    """One of the local stack's database servers (docker/stack.sh's ``service``): MariaDB
    10.11 on 3306, MySQL 8.0 on 3307, MariaDB 11.4 on 3308.

    ``user``/``password`` is the login the relay's source URL uses: on MySQL 8 a
    caching_sha2_password user (the server's default plugin), elsewhere root.
    """

    service: str
    product: str
    port: int
    flavour: str  # "mariadb" or "mysql"
    user: str = "root"
    password: str = ""

    def url(self, user: str = "root", password: str = "") -> MySQLURL:
        return MySQLURL("127.0.0.1", self.port, user, password)

    def source_url(self, database: str | None = None) -> str:
        """The relay's (or the handler's) URL: the server's own login, ``database`` if given."""
        secret = f":{self.password}" if self.password else ""
        path = f"/{database}" if database else ""
        return f"mysql://{self.user}{secret}@127.0.0.1:{self.port}{path}"

    def unreachable(self) -> str | None:
        """Why root cannot log in over TCP, in one line; None when it can."""
        try:
            pymysql.connect(**self.url().connect_args(), connect_timeout=3).close()
        except pymysql.MySQLError as exc:
            return (
                f"{self.product} ({self.service}) not answering on 127.0.0.1:{self.port} "
                f"({exc.args[-1]}); run `docker/stack.sh start {self.service}` or `make up`"
            )
        return None


STACK_SERVERS = {
    "mysql8": StackServer("mysql8", "MySQL 8.0", 3307, "mysql", "aesop_sha2", "aesop-sha2"),
    "mariadb11": StackServer("mariadb11", "MariaDB 11.4", 3308, "mariadb"),
}

# The servers the relay, its checkpoint and the ``mysql`` handler are tested against, by
# test id; the ``server`` fixture runs a test once on each.
MATRIX = {
    "mariadb10": StackServer("mariadb", "MariaDB 10.11", 3306, "mariadb"),
    **STACK_SERVERS,
}


def on_servers(*idents: str) -> pytest.MarkDecorator:
    """Run a test of the ``server`` fixture on these servers of the matrix only (a fault test
    that takes a minute per server runs where the servers differ most: MariaDB and MySQL)."""
    return pytest.mark.parametrize("matrix_server", list(idents), indirect=True)


@dataclass(frozen=True)
class ServerDatabase:
    """A test's own database on one server of the matrix (the ``server`` fixture): root SQL
    in it, the relay's URL, where the server's binlog is, and the server's flavour."""

    id: str  # the test id: mariadb10, mysql8, mariadb11
    server: StackServer
    db: str

    @property
    def flavour(self) -> str:
        return self.server.flavour

    @property
    def mysql(self) -> bool:
        return self.server.flavour == "mysql"

    @property
    def service(self) -> str:
        return self.server.service

    def sql(self, *statements: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run statements as root (autocommit) in ``database`` (the test's by default)."""
        return self.server.sql(*statements, database=database or self.db)

    def connect_args(self, database: str | None = None) -> dict[str, Any]:
        """pymysql.connect arguments for root, in ``database`` (the test's by default)."""
        return {**self.server.url().connect_args(), "database": database or self.db}

    def url(self, database: str | None = None) -> str:
        """The URL a source (or a ``mysql`` consumer, with ``database``) is configured with."""
        return self.server.source_url(database)

    def position(self) -> str:
        file, pos = self.server.position()
        return f"{file}:{pos}"

    def last_gtid(self) -> str:
        """The GTID of the last transaction the server logged, as events carry it."""
        if self.mysql:
            # @@gtid_executed is a set, "uuid:1-57"; the last transaction is uuid:57.
            ((executed,),) = self.sql("SELECT @@GLOBAL.gtid_executed")
            assert "," not in executed, f"one server uuid on the test server: {executed}"
            uuid, _, ranges = executed.replace("\n", "").partition(":")
            return f"{uuid}:{ranges.rsplit(':', 1)[-1].rsplit('-', 1)[-1]}"
        ((pos,),) = self.sql("SELECT @@gtid_binlog_pos")
        assert "," not in pos, f"one replication domain on the test server: {pos}"
        return str(pos)


def numbers_from(low: int, rows: int) -> str:
    """A SELECT of ``rows`` numbers from ``low + 1``, each with a pad, on every flavour
    (MariaDB's seq_1_to_N engine is not MySQL's): a cross join of digit tables."""
    places = len(str(rows - 1)) if rows > 1 else 1
    digits = (
        "(SELECT 0 d UNION ALL " + " UNION ALL ".join(f"SELECT {i}" for i in range(1, 10)) + ")"
    )
    terms = " + ".join(f"{10**k} * p{k}.d" for k in range(places))
    joins = ", ".join(f"{digits} p{k}" for k in range(places))
    return f"SELECT {low} + 1 + {terms}, 'big' FROM {joins} WHERE {terms} < {rows}"
