"""ZooKeeperMirror's writes through kazoo's connection states, with a fake KazooClient.

The writer task's body is ``_write_pending()``, called directly here; one test runs the
service itself to see the task retry on its own after an outage.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import orjson
import pytest
from kazoo.client import KazooState
from kazoo.exceptions import ConnectionLoss, NoNodeError, SessionExpiredError

from tables import zookeeper
from tables.zookeeper import ZooKeeperMirror

ROOT = "/aesop/x"
LOGGER = "tables.zookeeper"


class FakeClient:
    """kazoo's client as the mirror writes through it: ``set``, ``create``, ``connected``."""

    def __init__(self, connected: bool = True, nodes: dict[str, bytes] | None = None) -> None:
        self.connected = connected
        self.nodes: dict[str, bytes] = dict(nodes or {})
        self.writes: list[tuple[str, bytes]] = []  # (path, data) of each set or create done
        self.creates: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[Exception] = []  # raised, in turn, by the next calls to set
        self.stopped = self.closed = False

    def set(self, path: str, data: bytes) -> None:
        if self.failures:
            raise self.failures.pop(0)
        if path not in self.nodes:
            raise NoNodeError()
        self.nodes[path] = data
        self.writes.append((path, data))

    def create(self, path: str, data: bytes, **kwargs: Any) -> None:
        self.creates.append((path, kwargs))
        self.nodes[path] = data
        self.writes.append((path, data))

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.closed = True


def mirror_with(client: FakeClient, hosts: str = "127.0.0.1:1") -> ZooKeeperMirror:
    mirror = ZooKeeperMirror(hosts, ROOT)
    mirror._client = client
    return mirror


def doc(value: Any) -> bytes:
    return orjson.dumps(value)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and text in r.getMessage()]


async def test_a_document_published_while_connected_is_written_under_the_root() -> None:
    client = FakeClient(nodes={f"{ROOT}/relays/a": b"{}"})
    mirror = mirror_with(client)
    mirror.publish("/relays/a", {"scn": 7, "row": 0})

    assert await mirror._write_pending() is True
    assert client.writes == [(f"{ROOT}/relays/a", doc({"scn": 7, "row": 0}))]
    assert client.creates == []
    assert mirror._pending == {}
    assert await mirror.flush(0.01) is True


async def test_writes_wait_while_down_and_only_the_latest_document_per_path_goes_out() -> None:
    client = FakeClient(connected=False)
    mirror = mirror_with(client)
    mirror.publish("/relays/a", {"scn": 1})
    mirror.publish("/relays/b", {"scn": 5})
    mirror.publish("/relays/a", {"scn": 2})
    mirror.publish("/relays/a", {"scn": 3})

    assert await mirror._write_pending() is False
    assert client.writes == []
    assert await mirror.flush(0.05) is False
    assert len(mirror._pending) == 2  # one per path, however many were published

    client.connected = True
    flushed = asyncio.ensure_future(mirror.flush(5.0))
    await asyncio.sleep(0.01)
    assert not flushed.done()  # still waiting for the writes
    assert await mirror._write_pending() is True
    assert await flushed is True
    # In the order of their latest publish: what was published last is written last.
    assert client.writes == [
        (f"{ROOT}/relays/b", doc({"scn": 5})),
        (f"{ROOT}/relays/a", doc({"scn": 3})),
    ]
    assert mirror._pending == {}


async def test_flush_returns_false_on_timeout_while_down_and_keeps_the_documents() -> None:
    mirror = mirror_with(FakeClient(connected=False))
    mirror.publish("/heartbeats/a", {"ts_ms": 1})
    await mirror._write_pending()

    assert await mirror.flush(0.05) is False
    assert mirror._pending == {f"{ROOT}/heartbeats/a": doc({"ts_ms": 1})}


async def test_flush_with_nothing_published_returns_true_at_once() -> None:
    mirror = mirror_with(FakeClient(connected=False))
    assert await mirror.flush(0) is True


async def test_a_missing_node_is_created_with_its_parents() -> None:
    client = FakeClient()
    mirror = mirror_with(client)
    mirror.publish("/consumers/c/t/3", {"scn": 9})

    assert await mirror._write_pending() is True
    assert client.creates == [(f"{ROOT}/consumers/c/t/3", {"makepath": True})]
    assert client.nodes == {f"{ROOT}/consumers/c/t/3": doc({"scn": 9})}
    # Once there, the next document is set.
    mirror.publish("/consumers/c/t/3", {"scn": 10})
    assert await mirror._write_pending() is True
    assert len(client.creates) == 1
    assert client.nodes == {f"{ROOT}/consumers/c/t/3": doc({"scn": 10})}


async def test_a_kazoo_error_keeps_the_document_and_logs_behind_once_then_caught_up_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = f"{ROOT}/relays/a"
    client = FakeClient(nodes={path: b"{}"})
    client.failures = [ConnectionLoss(), SessionExpiredError()]
    mirror = mirror_with(client)
    mirror.publish("/relays/a", {"scn": 1})

    assert await mirror._write_pending() is False
    assert await mirror._write_pending() is False
    client.connected = False
    assert await mirror._write_pending() is False
    assert mirror._pending == {path: doc({"scn": 1})}
    assert client.writes == []
    behind = messages(caplog, "mirror behind")
    assert len(behind) == 1
    assert behind[0].levelno == logging.WARNING and "ConnectionLoss" in behind[0].getMessage()
    assert messages(caplog, "caught up") == []

    client.connected = True
    assert await mirror._write_pending() is True
    assert client.writes == [(path, doc({"scn": 1}))]
    assert mirror._pending == {}
    caught_up = messages(caplog, "mirror caught up")
    assert len(caught_up) == 1 and caught_up[0].levelno == logging.INFO

    # Writes while nothing was down log nothing more.
    mirror.publish("/relays/a", {"scn": 2})
    assert await mirror._write_pending() is True
    assert len(messages(caplog, "mirror caught up")) == 1
    assert len(messages(caplog, "mirror behind")) == 1

    # The next outage is reported again.
    client.failures = [ConnectionLoss()]
    mirror.publish("/relays/a", {"scn": 3})
    assert await mirror._write_pending() is False
    assert len(messages(caplog, "mirror behind")) == 2


async def test_a_failed_write_stops_the_round_and_keeps_the_documents_after_it() -> None:
    client = FakeClient(nodes={f"{ROOT}/a": b"{}", f"{ROOT}/b": b"{}"})
    client.failures = [ConnectionLoss()]
    mirror = mirror_with(client)
    mirror.publish("/a", 1)
    mirror.publish("/b", 2)

    assert await mirror._write_pending() is False
    assert set(mirror._pending) == {f"{ROOT}/a", f"{ROOT}/b"}
    assert await mirror._write_pending() is True
    assert client.writes == [(f"{ROOT}/a", b"1"), (f"{ROOT}/b", b"2")]


async def test_a_document_published_while_its_path_is_written_stays_pending() -> None:
    path = f"{ROOT}/relays/a"
    entered, release = threading.Event(), threading.Event()

    class SlowClient(FakeClient):
        def set(self, path: str, data: bytes) -> None:
            if not self.writes:
                entered.set()
                release.wait(5)
            super().set(path, data)

    client = SlowClient(nodes={path: b"{}"})
    mirror = mirror_with(client)
    mirror.publish("/relays/a", {"scn": 1})
    writing = asyncio.ensure_future(mirror._write_pending())
    assert await asyncio.to_thread(entered.wait, 5)
    mirror.publish("/relays/a", {"scn": 2})
    release.set()

    assert await writing is True
    assert client.writes == [(path, doc({"scn": 1}))]
    assert mirror._pending == {path: doc({"scn": 2})}
    assert await mirror.flush(0.05) is False  # the newer document is not written yet
    assert await mirror._write_pending() is True
    assert client.writes[-1] == (path, doc({"scn": 2}))
    assert await mirror.flush(0.01) is True


async def test_without_hosts_publish_does_nothing() -> None:
    mirror = ZooKeeperMirror("", ROOT)
    assert mirror.enabled is False
    mirror.publish("/relays/a", {"scn": 1})
    assert mirror._pending == {}
    assert not mirror._wake.is_set()
    assert await mirror.flush(0.01) is True


async def test_connected_follows_the_client() -> None:
    client = FakeClient(connected=False)
    mirror = mirror_with(client)
    assert mirror.connected is False
    client.connected = True
    assert mirror.connected is True
    assert ZooKeeperMirror("127.0.0.1:1", ROOT).connected is False  # not started


@pytest.mark.parametrize(
    ("state", "closing", "level", "text"),
    [
        (KazooState.LOST, False, logging.WARNING, "LOST; mirror writes wait"),
        (KazooState.SUSPENDED, False, logging.WARNING, "SUSPENDED; mirror writes wait"),
        (KazooState.CONNECTED, False, logging.INFO, "connected"),
        # The session ends because the mirror stops it: no warning.
        (KazooState.LOST, True, logging.INFO, "session closed"),
        (KazooState.SUSPENDED, True, logging.INFO, "session closed"),
    ],
)
def test_connection_states_are_logged_as_warnings_unless_closing(
    state: str, closing: bool, level: int, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    mirror = ZooKeeperMirror("zk1:2181", ROOT)
    mirror._closing = closing
    mirror._on_state(state)
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == level
    assert "zk1:2181" in record.getMessage() and text in record.getMessage()


async def test_on_stop_writes_what_is_pending_then_closes_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    client = FakeClient(nodes={f"{ROOT}/relays/a": b"{}"})
    mirror = mirror_with(client)
    mirror.publish("/relays/a", {"scn": 4})

    await mirror.on_stop()
    assert client.writes == [(f"{ROOT}/relays/a", doc({"scn": 4}))]
    assert client.stopped and client.closed
    assert mirror._client is None
    # kazoo reports the end of the session it was asked to end: no warning.
    mirror._on_state(KazooState.LOST)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_the_writer_retries_on_its_own_and_writes_once_reconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(zookeeper, "RETRY_S", 0.02)

    class NoConnect(ZooKeeperMirror):
        async def on_start(self) -> None:  # the fake client stands in for kazoo's
            pass

    client = FakeClient(connected=False)
    mirror = NoConnect("127.0.0.1:1", ROOT)
    mirror._client = client
    await mirror.start()
    try:
        mirror.publish("/relays/a", {"scn": 1})
        assert await mirror.flush(0.1) is False
        assert client.writes == []
        # Back: no new publish needed, the writer's next retry writes it.
        client.connected = True
        assert await mirror.flush(5.0) is True
        assert client.writes == [(f"{ROOT}/relays/a", doc({"scn": 1}))]
    finally:
        await mirror.stop()
    assert client.closed
