"""Starting a worker's Kafka clients while Kafka is down: wait for it, never exit.

faust starts the producer first, then the consumer thread, then the table recovery; each
bootstraps its own connection. A worker restarted during a Kafka outage waits in the producer
(:mod:`app.producer`); but Kafka can also go away between the producer's start and the
consumer's, and aiokafka's ``AIOKafkaConsumer.start()`` then raised "Unable to bootstrap",
which crashed the worker with a traceback. Every client start goes through
:func:`start_waiting`: one warning line per attempt, backing off to 5 s, until Kafka answers
or the worker stops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from time import monotonic
from typing import Any, Protocol, TypeVar

from aiokafka.errors import KafkaConnectionError
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer

from app.errors import LibraryVersionError
from app.retry import RetryPolicy

log = logging.getLogger(__name__)

# Kafka at start-up: tried again within 5 s at most, so a worker starts soon after it is back.
BOOTSTRAP = RetryPolicy(initial=0.5, maximum=5.0)


class _Client(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Waiter(Protocol):
    @property
    def should_stop(self) -> bool: ...

    async def sleep(self, n: float) -> None: ...


C = TypeVar("C", bound=_Client)


async def start_waiting(
    service: _Waiter, make: Callable[[], C], role: str, brokers: str
) -> C | None:
    """Start a client made by ``make``, making a new one after each refused attempt, until it
    starts (returned) or ``service`` stops (None)."""
    delays = BOOTSTRAP.delays()
    while not service.should_stop:
        client = make()
        try:
            await client.start()
        except KafkaConnectionError as exc:
            with contextlib.suppress(Exception):
                await client.stop()
            delay = next(delays)
            log.warning("kafka %s: %s: %s; waiting for it, next attempt in %.1fs",
                        brokers, role, exc, delay)  # fmt: skip
            await service.sleep(delay)
            continue
        return client
    return None


def broker_list(urls: Any) -> str:
    """Brokers (an app's ``conf.broker_consumer`` or ``broker_producer``) as host:port,... for
    log lines."""
    return ",".join(f"{url.host}:{url.port}" for url in urls)


class WaitingConsumerThread(AIOKafkaConsumerThread):
    """faust's consumer thread, whose aiokafka consumer waits for Kafka to start."""

    # How long Kafka may hold a fetch that found nothing new (None: faust's 1.5 s).
    fetch_max_wait_ms: int | None = None

    async def on_start(self) -> None:
        self.time_started = monotonic()
        self._consumer = await start_waiting(
            self,
            self._new_aiokafka_consumer,
            f"consumer of {self.app.conf.id}",
            broker_list(self.app.conf.broker_consumer),
        )

    def _new_aiokafka_consumer(self) -> Any:
        consumer = self._create_consumer(loop=self.thread_loop)
        if self.fetch_max_wait_ms is not None:
            if not hasattr(consumer, "_fetch_max_wait_ms"):
                raise LibraryVersionError(
                    "this aiokafka's consumer has no _fetch_max_wait_ms; install the versions "
                    "of requirements.lock"
                )
            consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class WaitingConsumer(Consumer):
    """faust's aiokafka consumer, running a :class:`WaitingConsumerThread`."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return WaitingConsumerThread(self, loop=self.loop, beacon=self.beacon)


def install(app: Any) -> None:
    """Make the app's consumer wait for Kafka at start (call before it is first used). The
    consumer apps' transport (agents.fetch) has a WaitingConsumer of its own."""
    assert app._consumer is None, "the consumer was made before install()"
    app.transport.Consumer = WaitingConsumer
