"""The change event: the one definition of a change's Kafka message, for relay and consumer.

One message per row change (the product contract, and the README's "The change event"):

- key: ``{"db": ..., "table": ..., "pk": {...}}`` (:class:`EventKey`; ``pk`` is ``null`` for a
  table without a primary key);
- value: ``{"op", "source", "scn", "row", "txn", "key", "before", "after", "changed",
  "ts_ms"}`` in that order (:class:`ChangeEvent`, :data:`FIELDS`), with ``source`` an
  :class:`EventSource` and ``txn`` a :class:`Txn`.

The relay (``relay/binlog.py``) builds what all rows of one binlog rows event share once:
the ``source`` block (:func:`source_block`, serialized once, embedded as an
``orjson.Fragment``) and the key's prefix (:func:`key_prefix`; a row's key is that prefix,
``orjson.dumps(pk)`` and ``b"}"``). Per row it writes the value as a dict literal, for speed;
the unit tests decode what it publishes as a :class:`ChangeEvent`, which takes exactly these
fields, and compare its bytes with fixed ones.

The consumer checks each message on arrival by decoding only its :class:`Head`
(:data:`fast_decode_head`, :func:`decode_head`); :func:`parse` decodes the whole event, and
either raises :class:`BadMessage` with a one-line reason for a message that is no change
event.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import orjson

from app.errors import AesopError

# The op codes: insert, update, delete, and a row read by a snapshot.
CREATE, UPDATE, DELETE, READ = "c", "u", "d", "r"
Op = Literal["c", "u", "d", "r"]
OPS = frozenset((CREATE, UPDATE, DELETE, READ))

Row = dict[str, Any]
"""A row image (``before``, ``after``) or a primary key's values (``key``): column -> value."""

Count = Annotated[int, msgspec.Meta(ge=0)]


class EventSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a change was read: ``source`` in the event."""

    name: str  # the [[source]]'s name
    server_id: int
    db: str
    table: str
    file: str  # the binlog file and the position of the rows event
    pos: Count
    gtid: str | None  # the transaction's GTID, where the server has one
    ts_ms: int  # the commit time in the binlog
    # The contract's snapshot flag: true on a snapshot event, "last" on the last row of a
    # table's snapshot, false on an event read from the binlog.
    snapshot: bool | Literal["last"] = False


class Txn(msgspec.Struct, forbid_unknown_fields=True):
    """The row's place in its transaction: ``txn`` in the event."""

    seq: Count  # 0-based
    last: bool  # true on the transaction's last row


class EventKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The message key."""

    db: str
    table: str
    pk: Row | None  # None: a table without a primary key (all its changes on one partition)


class ChangeEvent(msgspec.Struct, forbid_unknown_fields=True):
    """A whole change event, the message value: every field required, no other allowed.

    For a check of an event (``msgspec.json.decode(value, type=ChangeEvent)``) or a typed
    reading of it; the consumer itself decodes only the :class:`Head`.
    """

    op: Op
    source: EventSource
    scn: Count  # (binlog file sequence << 32) | pos; (scn, row) orders a source's events
    row: Count  # 0-based, among the events of one rows event
    txn: Txn
    key: Row | None  # the primary key's values; None without a primary key
    before: Row | None  # the old row: None for c and r
    after: Row | None  # the new row: None for d
    changed: list[str]  # the columns whose value differs: updates only, else []
    ts_ms: int  # when the relay built the event

    def __post_init__(self) -> None:
        op, before, after = self.op, self.before, self.after
        if op == UPDATE:
            if before is None or after is None:
                raise ValueError("an update has both before and after")
        elif self.changed:
            raise ValueError(f"changed is [] but for updates (op {op!r})")
        elif op == DELETE:
            if before is None or after is not None:
                raise ValueError("a delete has before and no after")
        elif before is not None or after is None:
            raise ValueError(f"op {op!r} has after and no before")


FIELDS: tuple[str, ...] = ChangeEvent.__struct_fields__
SOURCE_FIELDS: tuple[str, ...] = EventSource.__struct_fields__
TXN_FIELDS: tuple[str, ...] = Txn.__struct_fields__
KEY_FIELDS: tuple[str, ...] = EventKey.__struct_fields__


# The relay's side: the parts every row of one rows event shares, built once per rows event.


def source_block(
    name: str,
    server_id: int,
    db: str,
    table: str,
    file: str,
    pos: int,
    gtid: str | None,
    ts_ms: int,
    snapshot: bool | str = False,
) -> orjson.Fragment:
    """The event's ``source``, serialized, to be embedded as it is in each row's event."""
    return orjson.Fragment(
        orjson.dumps(
            {
                "name": name,
                "server_id": server_id,
                "db": db,
                "table": table,
                "file": file,
                "pos": pos,
                "gtid": gtid,
                "ts_ms": ts_ms,
                "snapshot": snapshot,
            }
        )
    )


def key_prefix(db: str, table: str) -> bytes:
    """The message key up to its ``pk``: ``key_prefix(db, table) + orjson.dumps(pk) + b"}"``
    is ``orjson.dumps({"db": db, "table": table, "pk": pk})``."""
    return b'{"db":' + orjson.dumps(db) + b',"table":' + orjson.dumps(table) + b',"pk":'


def key_bytes(db: str, table: str, pk: Row | None) -> bytes:
    """A whole message key (the relay joins :func:`key_prefix` and ``pk`` inline per row)."""
    return key_prefix(db, table) + orjson.dumps(pk) + b"}"


# The consumer's side: the check on arrival and the decoding.


class BadMessage(AesopError):
    """A consumed message that is not a change event."""


class Source(msgspec.Struct, frozen=True, gc=False):
    """The fields of ``source`` the consumer itself needs."""

    name: str
    db: str
    table: str


class Head(msgspec.Struct, gc=False):
    """The fields of a change event the consumer itself needs."""

    op: Op
    source: Source
    scn: int
    row: int


fast_decode_head = msgspec.json.Decoder(Head).decode
"""The head of a change event; raises msgspec's errors (or TypeError for a null value).

It reads the whole document (so only well-formed JSON passes) and builds only the head's
fields: ``op`` in c/u/d/r, integer ``scn`` and ``row``, and a ``source`` with string
``name``, ``db`` and ``table``; other fields are skipped, not checked."""


def decode_head(value: bytes | None) -> Head:
    """The head of the change event in a message value, or BadMessage saying why not."""
    try:
        return fast_decode_head(value)  # type: ignore[arg-type]
    except (msgspec.DecodeError, TypeError) as exc:
        parse(value)  # raises BadMessage with the reason in our words
        raise BadMessage(f"not a change event: {exc}") from None


def parse(value: bytes | None) -> dict[str, Any]:
    """The whole change event in a message value, or BadMessage saying why it is not one.

    It checks what the head holds, as :func:`decode_head` does, not the rest."""
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
        isinstance(source.get(k), str) for k in Source.__struct_fields__
    ):
        raise BadMessage("not a change event: source must have name, db and table")
    return event
