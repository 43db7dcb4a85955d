"""The ZooKeeper layout under ``zk_root``, and the applied table's keys: in one place."""

from __future__ import annotations


def relay_path(source_name: str) -> str:
    """A source's relay checkpoint (``tables.positions.Checkpoint`` as JSON)."""
    return f"/relays/{source_name}"


def heartbeat_path(source_name: str) -> str:
    """``{worker, state, ts_ms}`` from the worker running a source's relay, every few seconds."""
    return f"/heartbeats/{source_name}"


def consumer_topic_path(consumer: str, topic: str) -> str:
    """The parent of a consumer's applied positions in one topic, one child per partition."""
    return f"/consumers/{consumer}/{topic}"


def consumer_path(consumer: str, topic: str, partition: int) -> str:
    """A consumer's applied position in one partition: ``{scn, row, offset, ts_ms}``."""
    return f"{consumer_topic_path(consumer, topic)}/{partition}"


def applied_key(topic: str, partition: int) -> str:
    """The key of a partition's applied position in a consumer's ``applied`` table."""
    return f"{topic}/{partition}"
