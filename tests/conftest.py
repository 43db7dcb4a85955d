"""Fixtures: the real local stack (checked, never mocked), and factories for sources and workers."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from tests.support.config import ConfigFactory
from tests.support.kafka import delete_topics_starting_with
from tests.support.mysql import mysql_url, sql
from tests.support.servers import MATRIX, STACK_SERVERS, ServerDatabase, StackServer
from tests.support.stack import ROOT, Stack
from tests.support.workers import WorkerFactory
from tests.support.zookeeper import zk_delete

SERVICES = {"MariaDB": 3306, "ZooKeeper": 2181, "Kafka": 9092}


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The local stack must be up (`make up`); a missing service fails every test loudly."""
    down = []
    for name, port in SERVICES.items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            down.append(f"{name} on 127.0.0.1:{port}")
    if down:
        pytest.fail(f"local stack not running ({', '.join(down)}); run `make up`", pytrace=False)
    return Stack(ROOT)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def make_config(tmp_path: Path, unique: str) -> ConfigFactory:
    """Writes the test's aesop TOML under its temporary directory, app id ``t<unique>``."""
    return ConfigFactory(tmp_path, unique)


@pytest.fixture
def database(stack: Stack, unique: str) -> Iterator[str]:
    """A fresh database on the stack's MariaDB, dropped afterwards."""
    name = f"t_{unique}"
    with pymysql.connect(**mysql_url().connect_args(), autocommit=True) as conn:
        conn.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield name
    with pymysql.connect(**mysql_url().connect_args(), autocommit=True) as conn:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def drop_test_resources(unique: str) -> Iterator[None]:
    """After the test: drop its Kafka topics and its ZooKeeper tree (the workers' data
    directories are under its temporary directory)."""
    yield
    delete_topics_starting_with(f"t{unique}-", f"aesop.t{unique}")
    zk_delete(f"/aesop-test/t{unique}")


@pytest.fixture
def workers(
    stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WorkerFactory]:
    """Starts `faust -A app worker` processes; stops them and keeps their logs on failure."""
    factory = WorkerFactory(tmp_path, request.node.name)
    yield factory
    factory.close()


@pytest.fixture
def replica(stack: Stack, unique: str) -> Iterator[str]:
    """A destination database on the stack's MariaDB, dropped afterwards."""
    name = f"t_{unique}_replica"
    yield name
    sql(f"DROP DATABASE IF EXISTS {name}")


def stack_server(service: str) -> StackServer:
    """One of the stack's other servers; not answering fails the test loudly, in one line.
    They are not in the ``stack`` fixture's check: only the tests that use them need them."""
    server = STACK_SERVERS[service]
    why = server.unreachable()
    if why:
        pytest.fail(why, pytrace=False)
    return server


@pytest.fixture(scope="session")
def mysql8() -> StackServer:
    """MySQL 8.0.15 on 127.0.0.1:3307 (`docker/stack.sh start mysql8`)."""
    return stack_server("mysql8")


@pytest.fixture(scope="session")
def mariadb11() -> StackServer:
    """MariaDB 11.4.5 on 127.0.0.1:3308 (`docker/stack.sh start mariadb11`)."""
    return stack_server("mariadb11")


@pytest.fixture(params=sorted(STACK_SERVERS))
def other_server(request: pytest.FixtureRequest) -> StackServer:
    """Each of mysql8 and mariadb11 in turn."""
    server: StackServer = request.getfixturevalue(request.param)
    return server


@pytest.fixture(scope="session", params=list(MATRIX))
def matrix_server(request: pytest.FixtureRequest) -> StackServer:
    """Each server of the matrix in turn: MariaDB 10.11, MySQL 8.0, MariaDB 11.4 (session
    scope, so that pytest runs a file's tests server by server)."""
    server = MATRIX[request.param]
    why = server.unreachable()
    if why:
        pytest.fail(why, pytrace=False)
    return server


def make_database(server: StackServer, name: str) -> None:
    server.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")


@pytest.fixture
def server(matrix_server: StackServer, unique: str) -> Iterator[ServerDatabase]:
    """A fresh database ``t_<unique>`` on each server of the matrix in turn, dropped after."""
    ident = next(key for key, value in MATRIX.items() if value is matrix_server)
    made = ServerDatabase(ident, matrix_server, f"t_{unique}")
    make_database(matrix_server, made.db)
    yield made
    matrix_server.sql(f"DROP DATABASE IF EXISTS {made.db}")


# Fixtures that stand for a real server: the local stack's, or a MariaDB a test starts from
# the binaries `make up` installs.
STACK_FIXTURES = frozenset(
    {
        "stack",
        "server",
        "matrix_server",
        "binlog_server",
        "binlog_off_server",
        "compressing_server",
        "mysql8",
        "mariadb11",
        "other_server",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need a real server (a fixture of STACK_FIXTURES, directly or through
    another) are marked ``stack``; ``make test`` runs the others, the unit tier, first."""
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """On failure, attach the worker and server logs the test touched."""
    if call.when != "call" or call.excinfo is None:
        return
    factory = item.funcargs.get("workers") if hasattr(item, "funcargs") else None
    sections = []
    if isinstance(factory, WorkerFactory):
        sections.extend(factory.log_tails())
    stack = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if isinstance(stack, Stack):
        sections.extend(stack.log_tails())
    for title, text in sections:
        item.add_report_section("call", title, text)


os.environ.setdefault("AESOP_TEST", "1")
