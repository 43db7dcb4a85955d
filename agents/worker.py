"""Hosts every ``[[consumer]]`` in the aesop worker, each as a Faust app of its own."""

from __future__ import annotations

from typing import Any

from agents.consumer import ConsumerRunner
from app.settings import Settings
from tables.zookeeper import ZooKeeperMirror


def install(app: Any, settings: Settings, mirror: ZooKeeperMirror) -> list[ConsumerRunner]:
    """Add one service per consumer to the app; a handler that cannot be imported raises
    ConfigError here, before anything starts."""
    consumers = [
        ConsumerRunner(settings, consumer, mirror, loop=app.loop, beacon=app.beacon)
        for consumer in settings.consumers
    ]
    for runner in consumers:
        app.service(runner)
    return consumers
