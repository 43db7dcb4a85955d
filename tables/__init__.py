"""Changelog-backed state mirrored to ZooKeeper: relay checkpoints and consumer positions."""

__all__ = ["checkpoints", "paths", "zookeeper"]
