"""A consumed change event: checked on arrival, decoded in full only when asked for.

Every message is checked to be a change event as it arrives, by decoding only its head
(``app.change_event.Head``: ``op``, ``source.name/db/table``, ``scn``, ``row``), so a handler
that needs no more than the head (``route``, or one that counts) never pays for decoding the
rows; ``Change.event``, the whole event as a dict, is decoded on first use. The event's
definition, the check and its reasons are in ``app.change_event``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from app.change_event import Head, decode_head


class Change(msgspec.Struct, gc=False):
    """One consumed change event, with where it came from.

    ``head`` is checked and decoded; ``event`` (the whole event as a dict) is decoded from
    ``value`` on first use.
    """

    head: Head
    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int
    decoded: dict[str, Any] | None = None

    @property
    def event(self) -> dict[str, Any]:
        event = self.decoded
        if event is None:
            event = self.decoded = orjson.loads(self.value)
        return event

    @classmethod
    def of(cls, value: bytes, topic: str = "", partition: int = 0, offset: int = 0,
           key: bytes | None = None) -> Change:  # fmt: skip
        """A change from a message value (checked as on arrival)."""
        return cls(decode_head(value), key, value, topic, partition, offset)

    def __repr__(self) -> str:
        return f"<Change {self.topic}/{self.partition}@{self.offset} {self.head}>"
