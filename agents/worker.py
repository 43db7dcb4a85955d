"""Hosts every ``[[consumer]]`` in the aesop worker, each as a Faust app of its own."""

from __future__ import annotations

import sys

from agents.consumer import ConsumerRunner
from app.main import app, settings
from tables.checkpoints import mirror

SWITCH_INTERVAL_S = 0.0005

# Handlers were imported when the settings were loaded (app.main), so this cannot fail.
consumers = [
    ConsumerRunner(settings, consumer, mirror, loop=app.loop, beacon=app.beacon)
    for consumer in settings.consumers
]
for runner in consumers:
    app.service(runner)

if consumers:
    # Each consumer app reads Kafka in a thread of its own while the event loop applies
    # batches. At Python's default switch interval (5 ms) that thread waits up to 5 ms for
    # the GIL after each socket read while a batch is applied, and fetches stall.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
