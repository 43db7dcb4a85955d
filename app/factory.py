"""The composition root: the one place a worker's faust.App is built, part by part.

Each part registers itself through an explicit ``install`` function, in this order:
the producer, the checkpoint table and ZooKeeper mirror (``tables``), the relays
(``relay``), the consumers (``agents``), the HTTP views (``web``), ``/metrics``
(``metrics``), and the worker's diagnostics. Nothing registers itself on import.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from agents import worker as consumers_part
from agents.consumer import ConsumerRunner
from app import gc_tuning, kafka_start, logfilter, producer, tasks
from app.assignor import WholeAssignor
from app.errors import AesopError
from app.partitioner import partition_for_key
from app.settings import Settings
from metrics import worker as metrics_part
from relay import worker as relay_part
from relay.service import RelayManager
from tables import checkpoints
from tables.checkpoints import CheckpointStore
from web import dashboard, health
from web.health import Monitor

log = logging.getLogger(__name__)

# A worker asked to stop (SIGTERM) exits within this, whatever is out of reach: with Kafka up
# its relays drain and save their checkpoints in a second or two; with Kafka or ZooKeeper
# down, what cannot be saved stays unsaved, as after a crash.
STOP_DEADLINE_S = 10.0
STOP_GAVE_UP_EXIT = 1

# Each consumer app reads Kafka in a thread of its own while the event loop applies
# batches. At Python's default switch interval (5 ms) that thread waits up to 5 ms for the
# GIL after each socket read while a batch is applied, and fetches stall.
SWITCH_INTERVAL_S = 0.0005


class WorkerApp(faust.App):
    """faust's App, which first runs ``first_at_stop`` when it stops (the relays stop
    there, before the consumer leaves the group and the producer is flushed), and gives up
    ``STOP_DEADLINE_S`` after it began stopping."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_at_stop: list[Callable[[], Awaitable[None]]] = []

    async def on_stop(self) -> None:
        exit_if_still_stopping_after(STOP_DEADLINE_S)
        for stop in self.first_at_stop:
            try:
                await stop()
            except Exception:  # the rest of the stop goes on, as for a failing child service
                log.exception(
                    "worker: %s failed while stopping", getattr(stop, "__qualname__", stop)
                )
        await super().on_stop()


def exit_if_still_stopping_after(seconds: float) -> threading.Timer:
    """Exit the process ``seconds`` from now unless it has exited by then (a daemon timer)."""

    def give_up() -> None:
        # No logging.shutdown(): it could wait on a handler lock held by a stuck thread.
        log.error(
            "worker: still stopping %.0fs after it was asked to (something it waits for, "
            "such as Kafka, does not answer); exiting now: the next start resumes from the "
            "last saved checkpoints and positions, as after a crash",
            seconds,
        )
        os._exit(STOP_GAVE_UP_EXIT)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer


@dataclass(frozen=True)
class Worker:
    """A worker's app and the parts installed on it."""

    app: WorkerApp
    store: CheckpointStore
    relays: RelayManager
    consumers: list[ConsumerRunner]
    monitor: Monitor
    registry: CollectorRegistry


def create_app(settings: Settings) -> faust.App:
    """The worker's app: relays and consumers of ``settings``, with their views and metrics.
    Raises ConfigError when a consumer's handler cannot be imported."""
    return assemble(settings).app


def assemble(settings: Settings) -> Worker:
    """Build the worker's app and install every part on it, in order."""
    app = WorkerApp(
        settings.id,
        broker=settings.kafka,
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        web_port=settings.web_port,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        broker_session_timeout=settings.session_timeout,
        # A subscribed topic missing from the leader's metadata is looked up again at once,
        # not in five minutes; and metadata is refreshed every minute in any case.
        PartitionAssignor=WholeAssignor,
        consumer_metadata_max_age_ms=60_000,
        producer_acks=-1,
        # Rows of one key must never be reordered by a retry.
        producer_max_batch_size=256 * 1024,
        producer_linger_ms=5,
        # Kafka's default partitioning, computed at half the CPU (it ran once per change).
        producer_partitioner=partition_for_key,
        autodiscover=False,
        origin="app",
    )
    producer.install(app, settings.min_insync_replicas)
    kafka_start.install(app)
    store = checkpoints.install(app, settings)
    relays = relay_part.install(app, settings, store)
    consumers = consumers_part.install(app, settings, store.zk)
    monitor = health.install(app, settings, relays, consumers)
    dashboard.install(app, settings, monitor)
    registry = metrics_part.install(app, relays, consumers)
    tasks.install(app)
    gc_tuning.install(app)

    def configure_process(sender: Any, **kwargs: Any) -> None:
        try:
            configure_worker_process(settings)
        except AesopError as exc:  # a library version aesop was not written for: one line
            print(f"aesop: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None

    app.on_worker_init.connect(configure_process)  # type: ignore[arg-type]  # mode's type
    return Worker(app, store, relays, consumers, monitor, registry)


def configure_worker_process(settings: Settings) -> None:
    """The process-wide settings a worker runs with, made once as it starts."""
    from agents import fetch
    from relay import _pmr_patches

    fetch.check_faust()
    _pmr_patches.apply()
    # While Kafka is unreachable aiokafka repeats its connection errors ~130 times a second.
    logfilter.install()
    if settings.consumers:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
