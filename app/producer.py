"""The worker's Kafka producer: idempotent, so a retry never writes a change twice.

faust turns idempotence on only inside transactions (``processing_guarantee =
"exactly_once"``). The relay needs it always: when a broker goes away mid-request, aiokafka
retries the record batch, and without producer ids and sequence numbers the broker may append
it twice. With them it drops the repeat, and a partition's batches stay in order.

It is also what waits for Kafka when a worker starts while Kafka is down: faust starts the
producer before anything else that talks to Kafka (see :mod:`app.kafka_start`).

And it is where every topic aesop creates is made durable: change, route and dead-letter
topics, table changelogs and Faust's own topics all go through :meth:`create_topic`, which
gives them ``[aesop] replication_factor`` (capped at the live brokers, with one warning line)
and ``min.insync.replicas`` (capped at that factor).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, RequestTimedOutError
from faust.transport.drivers.aiokafka import Producer
from faust.transport.producer import Producer as BaseProducer

from app.kafka_start import BOOTSTRAP, broker_list, start_waiting

log = logging.getLogger(__name__)


# (wanted, brokers) pairs already warned about: one line per process, not one per topic.
_warned_caps: set[tuple[int, int]] = set()


def durable(
    wanted: int, min_insync: int, brokers: int, config: Mapping[str, Any] | None
) -> tuple[int, dict[str, Any]]:
    """The replication factor and topic config to create a topic with: ``wanted`` capped at
    ``brokers`` (one warning line naming both, once per process), ``min.insync.replicas``
    capped at the factor; other config entries are kept."""
    replication = max(1, min(wanted, brokers)) if brokers > 0 else wanted
    if replication < wanted and (wanted, brokers) not in _warned_caps:
        _warned_caps.add((wanted, brokers))
        log.warning(
            "kafka: replication_factor = %d but only %d broker(s) are live; creating topics "
            "with replication factor %d (add brokers, or set [aesop] replication_factor)",
            wanted, brokers, replication,
        )  # fmt: skip
    found = dict(config or {})
    found["min.insync.replicas"] = str(min(min_insync, replication))
    return replication, found


class IdempotentProducer(Producer):
    """faust's aiokafka producer with ``enable_idempotence`` (and so ``acks=all``)."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {"acks": "all", "enable_idempotence": True}

    async def on_start(self) -> None:
        """Start the aiokafka producer, waiting for Kafka (one line per attempt) while down."""
        await BaseProducer.on_start(self)
        brokers = broker_list(self.app.conf.broker_producer)
        role = f"producer of {self.app.conf.id}"
        producer = await start_waiting(self, self._new_producer, role, brokers)
        if producer is not None:
            self._producer = producer
            self.beacon.add(producer)

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        *,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Declare a topic with the replication and ``min.insync.replicas`` of the settings
        (see :func:`durable`), waiting for Kafka if it went away meanwhile (as at start-up,
        when it stops again just after the producer reached it) rather than exiting."""
        delays = BOOTSTRAP.delays()
        conf = self.app.conf
        wanted = max(replication, conf.topic_replication_factor)
        min_insync = getattr(self.app, "min_insync_replicas", 1)
        while True:
            try:
                brokers = len(self._producer.client.cluster.brokers()) if self._producer else 0
                factor, full = durable(wanted, min_insync, brokers, config)
                await super().create_topic(topic, partitions, factor, config=full, **kwargs)
                return
            except (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError) as exc:
                if self.should_stop:
                    raise
                delay = next(delays)
                log.warning("kafka: cannot create topic %s (%r); next attempt in %.1fs",
                            topic, exc, delay)  # fmt: skip
                await self.sleep(delay)


def install(app: Any, min_insync_replicas: int) -> None:
    """Make ``app.producer`` an IdempotentProducer (call before it is first used); the topics
    it creates get ``min_insync_replicas`` (the factor is the app's topic_replication_factor)."""
    assert app._producer is None, "the producer was made before install()"
    app.transport.Producer = IdempotentProducer
    app.min_insync_replicas = min_insync_replicas
