"""The worker's Kafka producer: idempotent, so a retry never writes a change twice.

faust turns idempotence on only inside transactions (``processing_guarantee =
"exactly_once"``). The relay needs it always: when a broker goes away mid-request, aiokafka
retries the record batch, and without producer ids and sequence numbers the broker may append
it twice. With them it drops the repeat, and a partition's batches stay in order.

It is also what waits for Kafka when a worker starts while Kafka is down: faust starts the
producer before anything else that talks to Kafka, and would exit on "Unable to bootstrap".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, RequestTimedOutError
from faust.transport.drivers.aiokafka import Producer
from faust.transport.producer import Producer as BaseProducer

from app.retry import RetryPolicy

log = logging.getLogger(__name__)

# Kafka at start-up: tried again within 5 s at most, so a worker starts soon after it is back.
BOOTSTRAP = RetryPolicy(initial=0.5, maximum=5.0)


class IdempotentProducer(Producer):
    """faust's aiokafka producer with ``enable_idempotence`` (and so ``acks=all``)."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {"acks": "all", "enable_idempotence": True}

    async def on_start(self) -> None:
        """Start the aiokafka producer, waiting for Kafka (one line per attempt) while down."""
        await BaseProducer.on_start(self)
        delays = BOOTSTRAP.delays()
        while not self.should_stop:
            producer = self._new_producer()
            try:
                await producer.start()
            except KafkaConnectionError as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                delay = next(delays)
                brokers = ",".join(f"{u.host}:{u.port}" for u in self.app.conf.broker_producer)
                log.warning("kafka %s: %s; waiting for it, next attempt in %.1fs",
                            brokers, exc, delay)  # fmt: skip
                await self.sleep(delay)
                continue
            self._producer = producer
            self.beacon.add(producer)
            return

    async def create_topic(self, topic: str, *args: Any, **kwargs: Any) -> None:
        """Declare a topic, waiting for Kafka if it went away meanwhile (as at start-up, when
        it stops again just after the producer reached it) rather than exiting."""
        delays = BOOTSTRAP.delays()
        while True:
            try:
                await super().create_topic(topic, *args, **kwargs)
                return
            except (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError) as exc:
                if self.should_stop:
                    raise
                delay = next(delays)
                log.warning("kafka: cannot create topic %s (%r); next attempt in %.1fs",
                            topic, exc, delay)  # fmt: skip
                await self.sleep(delay)


def install(app: Any) -> None:
    """Make ``app.producer`` an IdempotentProducer (call before it is first used)."""
    assert app._producer is None, "the producer was made before install()"
    app.transport.Producer = IdempotentProducer
