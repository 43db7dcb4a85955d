"""Builds the one faust.App from the settings; nothing else constructs a faust.App."""

from __future__ import annotations

import sys

import faust

import app.settings as settings_module
from app import producer
from app.assignor import WholeAssignor
from app.errors import ConfigError
from app.partitioner import partition_for_key


def _load() -> settings_module.Settings:
    from agents.handlers import load_function

    loaded = settings_module.load()
    for consumer in loaded.consumers:
        if consumer.handler not in ("mysql", "route"):
            load_function(consumer)  # a handler that cannot be imported is a config error
    return loaded


try:
    settings = _load()
except ConfigError as exc:
    # Reached from `faust -A app worker`: a config error is one line and exit 2, no traceback.
    print(f"aesop: {exc}", file=sys.stderr)
    raise SystemExit(exc.exit_code) from None

app = faust.App(
    settings.id,
    broker=settings.kafka,
    store="memory://",
    topic_partitions=settings.partitions,
    web_port=settings.web_port,
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    broker_session_timeout=settings.session_timeout,
    # A subscribed topic missing from the leader's metadata is looked up again at once, not
    # in five minutes; and metadata is refreshed every minute in any case.
    PartitionAssignor=WholeAssignor,
    consumer_metadata_max_age_ms=60_000,
    producer_acks=-1,
    # Rows of one key must never be reordered by a retry.
    producer_max_batch_size=256 * 1024,
    producer_linger_ms=5,
    # Kafka's default partitioning, computed at half the CPU (it ran once per change).
    producer_partitioner=partition_for_key,
    autodiscover=[
        "tables",
        "relay",
        "agents",
        "metrics",
        "app.dashboard",
        "app.tasks",
        "app.gc_tuning",
    ],
    origin="app",
)

producer.install(app)

# GET /health, GET /lag and the scheduled lag email register themselves on the app.
from app import monitor as _monitor  # noqa: E402, F401
