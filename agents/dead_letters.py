"""``<consumer>.dlq``: messages that are no change event, and changes the handler refuses.

The original key and value bytes go there with the error in headers, as Kafka Connect does;
the send is acknowledged before the consumer goes on, and retried while Kafka is down.
"""

from __future__ import annotations

import logging
from typing import Any

from app.retry import RECONNECT
from tables.applied import Pause

log = logging.getLogger(__name__)


class DeadLetters:
    def __init__(self, topic: Any, consumer: str, stats: Any, pause: Pause) -> None:
        self.topic = topic
        self.consumer = consumer
        self.stats = stats  # its ``dead_lettered`` counts them
        self._pause = pause

    async def send(
        self, key: bytes | None, value: bytes | None, where: Any, error: BaseException
    ) -> None:
        """Send the original bytes with the error in headers; wait for the ack (``where``
        has the message's ``topic``, ``partition`` and ``offset``)."""
        self.stats.dead_lettered += 1
        reason = str(error)
        log.error(
            "consumer %s: %s/%d offset %d dead-lettered to %s: %s",
            self.consumer, where.topic, where.partition, where.offset,
            self.topic.get_topic_name(), reason,
        )  # fmt: skip
        headers = [
            ("aesop.error", reason.encode()),
            ("aesop.error.class", type(getattr(error, "cause", error)).__name__.encode()),
            ("aesop.consumer", self.consumer.encode()),
            ("aesop.topic", where.topic.encode()),
            ("aesop.partition", str(where.partition).encode()),
            ("aesop.offset", str(where.offset).encode()),
        ]
        delays = RECONNECT.delays()
        while True:
            try:
                future = await self.topic.send(key=key, value=value, headers=headers)
                await future
                return
            except Exception as exc:  # Kafka down: the message must not be lost, so wait.
                delay = next(delays)
                log.warning("consumer %s: dead-letter send failed (%s); retrying in %.1fs",
                            self.consumer, exc, delay)  # fmt: skip
                await self._pause(delay, f"sending a dead letter: {exc}")
