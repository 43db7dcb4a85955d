"""Hosts every ``[[consumer]]`` in the aesop worker, each as a Faust app of its own."""

from __future__ import annotations

from agents.consumer import ConsumerRunner
from app.main import app, settings
from tables.checkpoints import mirror

# Handlers were imported when the settings were loaded (app.main), so this cannot fail.
consumers = [
    ConsumerRunner(settings, consumer, mirror, loop=app.loop, beacon=app.beacon)
    for consumer in settings.consumers
]
for runner in consumers:
    app.service(runner)
