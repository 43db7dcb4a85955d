"""What the ZooKeeper mirror holds, read without a worker.

``aesop check``, ``aesop lag`` and every worker's lag report read relay checkpoints,
heartbeats and consumer positions through :func:`read_mirrored`, in one short ZooKeeper
session (blocking: call it from a thread on an event loop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.errors import AesopError
from app.settings import Settings
from tables.paths import consumer_topic_path, heartbeat_path, relay_path
from tables.positions import AppliedPosition, Checkpoint

CONNECT_TIMEOUT_S = 5.0
NOT_JSON = "not JSON"


@dataclass
class Mirrored:
    """Relay checkpoints (as JSON documents, checked), heartbeats and consumer positions."""

    relays: dict[str, Any] = field(default_factory=dict)
    heartbeats: dict[str, Any] = field(default_factory=dict)  # source -> {worker, state, ts_ms}
    consumers: dict[tuple[str, str, int], AppliedPosition] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)  # full path -> why it was left out


class ZooKeeperUnreachable(AesopError):
    """No ZooKeeper session could be made within the timeout."""


_zk_log = logging.getLogger("aesop.zookeeper.read")
_zk_log.setLevel(logging.WARNING)


def read_mirrored(settings: Settings, timeout: float = CONNECT_TIMEOUT_S) -> Mirrored:
    """Every relay checkpoint, heartbeat and consumer position of ``settings`` under zk_root.
    A node that is not JSON, or not what its path says, is left out and named in ``bad``."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError

    # A session per report (every few seconds on a worker): its connect and close lines
    # are not worth logging; warnings and errors still are.
    client = KazooClient(hosts=settings.zookeeper, timeout=timeout, logger=_zk_log)
    try:
        client.start(timeout=timeout)
    except Exception as exc:
        client.close()
        text = str(exc.args[-1]) if exc.args else ""
        why = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise ZooKeeperUnreachable(
            f"cannot reach ZooKeeper at {settings.zookeeper}: {why}"
        ) from None
    found = Mirrored()

    def read(path: str) -> Any | None:
        try:
            data, _ = client.get(path)
        except NoNodeError:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            found.bad[path] = NOT_JSON
            return None

    root = settings.zk_root
    try:
        for source in settings.sources:
            beat = read(root + heartbeat_path(source.name))
            if isinstance(beat, dict) and isinstance(beat.get("ts_ms"), int):
                found.heartbeats[source.name] = beat
            path = root + relay_path(source.name)
            document = read(path)
            if document is None:
                continue
            try:
                found.relays[source.name] = Checkpoint.from_json(document).to_json()
            except AesopError as exc:
                found.bad[path] = str(exc)[:300]
        for consumer in settings.consumers:
            for topic in consumer.topics:
                parent = root + consumer_topic_path(consumer.name, topic)
                try:
                    children = client.get_children(parent)
                except NoNodeError:
                    continue
                for child in children:
                    if child.isdigit():
                        document = read(f"{parent}/{child}")
                        position = _applied(document)
                        if position is not None:
                            found.consumers[(consumer.name, topic, int(child))] = position
                        elif document is not None:
                            found.bad[f"{parent}/{child}"] = "not an applied position"
        return found
    finally:
        client.stop()
        client.close()


def _applied(document: Any) -> AppliedPosition | None:
    """A mirrored applied position, or None when the node holds something else."""
    if not isinstance(document, dict) or not isinstance(document.get("offset"), int):
        return None
    try:
        return AppliedPosition.from_json(document)
    except (KeyError, TypeError, ValueError):
        return None
