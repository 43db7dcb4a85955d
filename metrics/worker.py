"""``GET /metrics`` on the worker's web server: Faust's Prometheus sensor and aesop's series."""

from __future__ import annotations

from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import REGISTRY

from agents.worker import consumers
from app.main import app
from metrics.collector import AesopCollector
from relay.worker import relays

# Faust's series are named faust_*, whatever the app id, so rules and dashboards fit every
# deployment; the default registry adds the process_* and python_* series.
setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="faust")
REGISTRY.register(AesopCollector(relays, consumers))
