"""A ZooKeeper mirror of small JSON documents, written off the loop, catching up after outages.

kazoo's connection states, as this mirror treats them:
- CONNECTED: writes go through at once.
- SUSPENDED (connection lost, session may survive): writes wait; the latest document per
  path is kept, older ones are superseded, so an outage costs memory per path, not per write.
- LOST (session expired): kazoo reconnects with a new session; pending writes then go out.
ZooKeeper is a mirror, never the source of truth, so an outage never stops the caller.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.retry import KazooRetry
from mode import Service

from app.errors import AesopError

log = logging.getLogger(__name__)

RETRY_S = 1.0
CALL_TIMEOUT_S = 10.0


class ZooKeeperUnavailable(AesopError):
    """ZooKeeper did not answer in time."""


class ZooKeeperDocumentInvalid(AesopError):
    """A node under aesop's root holds something that is not a JSON document."""


class ZooKeeperMirror(Service):
    """Keeps ``<root>/...`` documents in ZooKeeper equal to the latest published values."""

    def __init__(self, hosts: str, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hosts = hosts
        self.root = root
        self._client: KazooClient | None = None
        self._pending: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._was_down = False
        self._closing = False

    @property
    def enabled(self) -> bool:
        return bool(self.hosts)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def on_start(self) -> None:
        if not self.enabled:
            return
        self._client = KazooClient(
            hosts=self.hosts,
            timeout=10.0,
            connection_retry=KazooRetry(max_tries=-1, delay=0.5, max_delay=5.0),
        )
        self._client.add_listener(self._on_state)
        # start_async() returns at once; the client connects (and reconnects) on its own.
        self._client.start_async()

    def _on_state(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            log.info("zookeeper %s: connected", self.hosts)
        elif self._closing:
            log.info("zookeeper %s: session closed", self.hosts)  # our own stop
        else:
            log.warning("zookeeper %s: %s; mirror writes wait until it is back", self.hosts, state)

    def publish(self, path: str, document: Any) -> None:
        """Schedule ``document`` (JSON-able) to be written at ``root + path``."""
        if not self.enabled:
            return
        node = self.root + path
        # Written in the order published: a document published after another is never
        # written before it (a relay's "stopped" after its last checkpoint).
        self._pending.pop(node, None)
        self._pending[node] = orjson.dumps(document)
        self._flushed.clear()
        self._wake.set()

    async def read(self, path: str, timeout: float = CALL_TIMEOUT_S) -> Any | None:
        """The document at ``root + path``, ``None`` if absent.

        Raises ZooKeeperUnavailable when ZooKeeper cannot be read (kazoo's own errors
        included) and ZooKeeperDocumentInvalid when the node holds no JSON: both are
        AesopErrors, which every caller retries or reports in one line.
        """
        if not self.enabled:
            return None
        client = self._client
        if client is None:
            raise ZooKeeperUnavailable(f"zookeeper {self.hosts}: not started")
        node = self.root + path
        try:
            data = await self._call(self._get, client, node, timeout=timeout)
        except KazooException as exc:
            raise ZooKeeperUnavailable(f"zookeeper {self.hosts}: {type(exc).__name__}") from None
        if data is None:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ZooKeeperDocumentInvalid(
                f"zookeeper node {node} holds no JSON document ({data[:40]!r}); "
                "delete it (aesop writes it again) or restore it"
            ) from None

    async def wait_connected(self, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.connected:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    async def flush(self, timeout: float) -> bool:
        """Wait until every published document is written; False on timeout."""
        if not self._pending:
            return True
        try:
            await asyncio.wait_for(self._flushed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @Service.task
    async def _writer(self) -> None:
        while not self.should_stop:
            await self._wake.wait()
            self._wake.clear()
            if not await self._write_pending():
                await asyncio.sleep(RETRY_S)
                self._wake.set()

    async def _write_pending(self) -> bool:
        client = self._client  # on_stop may drop it meanwhile: keep writing through this one
        if client is None or not client.connected:
            self._note_down("not connected")
            return False
        for path, data in list(self._pending.items()):
            try:
                await self._call(self._set, client, path, data)
            except (ZooKeeperUnavailable, KazooException) as exc:
                self._note_down(type(exc).__name__)
                return False
            if self._pending.get(path) is data:
                del self._pending[path]
        if self._was_down:
            log.info("zookeeper %s: mirror caught up", self.hosts)
            self._was_down = False
        if not self._pending:
            self._flushed.set()
        return True

    def _note_down(self, why: str) -> None:
        if not self._was_down:
            log.warning(
                "zookeeper %s: mirror behind (%s); aesop keeps running on its tables",
                self.hosts,
                why,
            )
            self._was_down = True

    async def _call(self, fun: Any, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fun, *args), timeout)
        except TimeoutError:
            raise ZooKeeperUnavailable(f"zookeeper {self.hosts} did not answer") from None

    @staticmethod
    def _get(client: KazooClient, path: str) -> bytes | None:
        try:
            data, _ = client.get(path)
        except NoNodeError:
            return None
        return bytes(data)

    @staticmethod
    def _set(client: KazooClient, path: str, data: bytes) -> None:
        try:
            client.set(path, data)
        except NoNodeError:
            client.create(path, data, makepath=True)

    async def on_stop(self) -> None:
        if self._client is None:
            return
        if self._pending and self.connected:
            await self._write_pending()
        self._closing = True
        client, self._client = self._client, None
        await asyncio.to_thread(client.stop)
        await asyncio.to_thread(client.close)
