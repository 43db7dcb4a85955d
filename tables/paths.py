"""The ZooKeeper layout under ``zk_root``: every node aesop writes, in one place."""

from __future__ import annotations


def relay_path(source_name: str) -> str:
    """A source's relay checkpoint (``relay.position.Checkpoint`` as JSON)."""
    return f"/relays/{source_name}"


def heartbeat_path(source_name: str) -> str:
    """``{worker, state, ts_ms}`` from the worker running a source's relay, every few seconds."""
    return f"/heartbeats/{source_name}"
