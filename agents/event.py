"""A consumed change event: checked on arrival, decoded in full only when asked for.

Every message is checked to be a change event as it arrives: well-formed JSON (the whole
document), an object with ``op`` in c/u/d/r, integer ``scn`` and ``row``, and a ``source``
with string ``name``, ``db`` and ``table``. That check reads only those fields into a
:class:`Head` (msgspec validates and skips the rest without building it), so a handler that
needs no more than the head (``route``, or one that counts) never pays for decoding the
rows; ``Change.event``, the whole event as a dict, is decoded on first use.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import orjson

from app.errors import AesopError

OPS = frozenset("cudr")


class BadMessage(AesopError):
    """A consumed message that is not a change event."""


class Source(msgspec.Struct, frozen=True, gc=False):
    name: str
    db: str
    table: str


class Head(msgspec.Struct, gc=False):
    """The fields of a change event the consumer itself needs."""

    op: Literal["c", "u", "d", "r"]
    source: Source
    scn: int
    row: int


fast_decode_head = msgspec.json.Decoder(Head).decode
"""The head of a change event; raises msgspec's errors (or TypeError for a null value)."""


def decode_head(value: bytes | None) -> Head:
    """The head of the change event in a message value, or BadMessage saying why not."""
    try:
        return fast_decode_head(value)  # type: ignore[arg-type]
    except (msgspec.DecodeError, TypeError) as exc:
        parse(value)  # raises BadMessage with the reason in our words
        raise BadMessage(f"not a change event: {exc}") from None


def parse(value: bytes | None) -> dict[str, Any]:
    """The whole change event in a message value, or BadMessage saying why it is not one."""
    if value is None:
        raise BadMessage("null value (tombstone); expected a change event")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise BadMessage(f"not a change event: a JSON {type(event).__name__}, not an object")
    if event.get("op") not in OPS:
        raise BadMessage(f"not a change event: op is {event.get('op')!r}, not c/u/d/r")
    scn, row = event.get("scn"), event.get("row")
    if type(scn) is not int or type(row) is not int:
        raise BadMessage("not a change event: scn and row must be integers")
    source = event.get("source")
    if not isinstance(source, dict) or not all(
        isinstance(source.get(k), str) for k in ("name", "db", "table")
    ):
        raise BadMessage("not a change event: source must have name, db and table")
    return event


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
