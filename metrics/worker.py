"""``GET /metrics`` on the worker's web server: Faust's Prometheus sensor and aesop's series."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from metrics.collector import AesopCollector


def install(app: Any, relays: Any, consumers: Iterable[Any]) -> CollectorRegistry:
    """Serve ``/metrics`` from a registry of this app's own (so a process may hold several
    apps): Faust's series, aesop's, and the process_* and python_* series."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    # Faust's series are named faust_*, whatever the app id, so rules and dashboards fit
    # every deployment.
    setup_prometheus_sensors(app, pattern="/metrics", registry=registry, name_prefix="faust")
    registry.register(AesopCollector(relays, consumers))
    return registry
