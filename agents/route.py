"""``handler = "route"``: re-publish each change to a topic per table, ``<topic>.<db>.<table>``.

The key and value are the original bytes, so per-row order holds in the routed topics
(they get the same partition count, and the same partitioner, as the source topic). With
``tombstones = true`` a delete is followed by a message with the same key and a null value,
so that a compacted routed topic forgets deleted rows (as Debezium does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from aiokafka.errors import KafkaError

from agents.handlers import Change, EventFailed, Handler


class RouteHandler(Handler):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._declared: dict[str, Any] = {}

    async def _topic(self, name: str) -> Any:
        topic = self._declared.get(name)
        if topic is None:
            topic = self.app.topic(
                name,
                partitions=self.settings.partitions,
                key_serializer="raw",
                value_serializer="raw",
            )
            await topic.maybe_declare()
            self._declared[name] = topic
        return topic

    async def apply(self, changes: Sequence[Change]) -> None:
        sent: list[tuple[int, Awaitable[Any]]] = []
        for index, change in enumerate(changes):
            head = change.head
            try:
                topic = await self._topic(f"{change.topic}.{head.source.db}.{head.source.table}")
                sent.append((index, await topic.send(key=change.key, value=change.value)))
                if self.consumer.tombstones and head.op == "d":
                    sent.append((index, await topic.send(key=change.key, value=None)))
            except KafkaError as exc:
                await self._settle(sent)
                raise EventFailed(index, exc, transient=True) from exc
        await self._settle(sent)

    async def _settle(self, sent: list[tuple[int, Awaitable[Any]]]) -> None:
        """Wait for Kafka's acks; the first unacknowledged change is where applying stopped."""
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (index, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                raise EventFailed(index, result, transient=True) from result
