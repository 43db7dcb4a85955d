"""A Faust consumer for the consumer apps that never commits past a message nobody applied.

Faust's stream skips a message fetched in an earlier group generation (or while the flow is
stopped for a rebalance) and *acks* it, so its offset can be committed although no agent
processed it. When the partition stays with the same worker after the rebalance, the seek
to the committed offset then passes it by: the change is lost. Here such an ack only stops
the consumer waiting for the message; its offset is not marked acked, so the message is read
again after the seek (and skipped by ``(scn, row)`` if it was applied after all).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.futures import notify


class StaleSafeConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: set[int] = set()  # id() of messages the agent applied: acked as usual

    def ack(self, message: Any) -> bool:
        app = self.app
        if id(message) in self.applied:
            self.applied.discard(id(message))
        elif message.generation_id != app.consumer_generation_id or (
            not app.flow_control.is_active()
        ):
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
            return False
        return super().ack(message)  # type: ignore[no-any-return]


class StaleSafeTransport(faust_aiokafka.Transport):
    Consumer = StaleSafeConsumer


class StaleSafeApp(faust.App):
    """A Faust app whose consumer is a :class:`StaleSafeConsumer`."""

    def _new_transport(self) -> Any:
        return StaleSafeTransport(self.conf.broker_consumer, self)
