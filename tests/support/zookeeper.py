"""ZooKeeper for tests: read a document, delete a tree."""

from __future__ import annotations

from typing import Any

import orjson
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from tests.support.stack import ZOOKEEPER


def zk_get(path: str) -> dict[str, Any] | None:
    client = KazooClient(hosts=ZOOKEEPER, timeout=10)
    client.start(timeout=15)
    try:
        if not client.exists(path):
            return None
        data, _ = client.get(path)
        return orjson.loads(data)
    finally:
        client.stop()
        client.close()


def zk_delete(path: str) -> None:
    """Delete ``path`` and everything under it, if present (test clean-up)."""
    client = KazooClient(hosts=ZOOKEEPER, timeout=10)
    client.start(timeout=15)
    try:
        client.delete(path, recursive=True)
    except NoNodeError:
        pass
    finally:
        client.stop()
        client.close()
