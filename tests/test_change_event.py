"""The change event's one definition (``app.change_event``) against what the relay publishes
and what the consumer accepts, without a server.

The relay's real code runs here (``BinlogReader`` over canned binlog events, as in
``tests/test_reader.py``): its bytes are compared with fixed ones, so that a change to the
schema module or the hot path that alters a key or an event byte fails here, and each event
is decoded as a :class:`ChangeEvent`, which takes exactly the contract's fields. The
consumer's check takes every op the relay emits and rejects a malformed message with the
one-line reason it always gave (those reasons travel in dead letters' headers).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, get_args

import msgspec
import orjson
import pytest
from faust.types import TP
from pymysqlreplication.event import QueryEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from agents.event import Change
from agents.skip import select
from app import change_event
from app.change_event import (
    FIELDS,
    KEY_FIELDS,
    OPS,
    SOURCE_FIELDS,
    TXN_FIELDS,
    BadMessage,
    ChangeEvent,
    EventKey,
    Head,
    Source,
    decode_head,
    fast_decode_head,
    key_bytes,
    key_prefix,
    parse,
    source_block,
)
from app.errors import AesopError
from relay import binlog
from relay.handoff import SerializedChange
from tests.test_reader import begin, event, primary_key_change_events, read, rotate

CLOCK_S = 1_732_460_000.042


def canned_events() -> list[Any]:
    """Two transactions: an update (one row keeps its key, one changes it), an insert into a
    table without a primary key (names and values that need escaping), a delete under a
    composite key; then an insert without a GTID."""
    return [
        rotate(),
        *begin(1100, "0-1-57"),
        event(UpdateRowsEvent, 1234, schema="shop", table="orders", primary_key="id", rows=[
            {"before_values": {"id": 1, "amount": "10.50", "status": "new"},
             "after_values": {"id": 1, "amount": "21.00", "status": "new"}},
            {"before_values": {"id": 2, "amount": "1.00", "status": "new"},
             "after_values": {"id": 12, "amount": "1.00", "status": "paid"}},
        ]),
        event(WriteRowsEvent, 1400, schema="shop", table='notes "ü"', primary_key=None, rows=[
            {"values": {"note": "été ☃\n", "n": 1.5, "tags": ["a", "b"], "doc": {"k": None}}},
        ]),
        event(DeleteRowsEvent, 1500, schema="shop", table="lines", primary_key=("order_id", "n"),
              rows=[{"values": {"order_id": 1, "n": 2, "qty": 18446744073709551615}}]),
        event(XidEvent, 1600),
        event(QueryEvent, 1700, query="BEGIN"),
        event(WriteRowsEvent, 1800, schema="shop", table="orders", primary_key="id",
              rows=[{"values": {"id": 3, "amount": "0.00", "status": None}}]),
        event(XidEvent, 1900),
    ]  # fmt: skip


def published(monkeypatch: pytest.MonkeyPatch, events: list[Any]) -> list[SerializedChange]:
    """What the relay hands over for ``events``, built at a fixed time."""
    _, handoff = read(monkeypatch, events, clock=lambda: CLOCK_S)
    return [change for batch in handoff.batches for change in batch.changes]


# What the relay published for canned_events() before the schema module existed.
RELAY_OUTPUT: list[tuple[bytes, bytes]] = [
    (
        b'{"db":"shop","table":"orders","pk":{"id":1}}',
        b'{"op":"u","source":{"name":"shop","server_id":1,"db":"shop","table":"orders",'
        b'"file":"mysql-bin.000007","pos":1234,"gtid":"0-1-57","ts_ms":1700000000000,"snapshot":false},'
        b'"scn":30064772306,"row":0,"txn":{"seq":0,"last":false},"key":{"id":1},'
        b'"before":{"id":1,"amount":"10.50","status":"new"},"after":{"id":1,'
        b'"amount":"21.00","status":"new"},"changed":["amount"],"ts_ms":1732460000042}',
    ),
    (
        b'{"db":"shop","table":"orders","pk":{"id":2}}',
        b'{"op":"d","source":{"name":"shop","server_id":1,"db":"shop","table":"orders",'
        b'"file":"mysql-bin.000007","pos":1234,"gtid":"0-1-57","ts_ms":1700000000000,"snapshot":false},'
        b'"scn":30064772306,"row":1,"txn":{"seq":1,"last":false},"key":{"id":2},'
        b'"before":{"id":2,"amount":"1.00","status":"new"},"after":null,"changed":[],'
        b'"ts_ms":1732460000042}',
    ),
    (
        b'{"db":"shop","table":"orders","pk":{"id":12}}',
        b'{"op":"c","source":{"name":"shop","server_id":1,"db":"shop","table":"orders",'
        b'"file":"mysql-bin.000007","pos":1234,"gtid":"0-1-57","ts_ms":1700000000000,"snapshot":false},'
        b'"scn":30064772306,"row":2,"txn":{"seq":2,"last":false},"key":{"id":12},'
        b'"before":null,"after":{"id":12,"amount":"1.00","status":"paid"},"changed":[],'
        b'"ts_ms":1732460000042}',
    ),
    (
        b'{"db":"shop","table":"notes \\"\xc3\xbc\\"","pk":null}',
        b'{"op":"c","source":{"name":"shop","server_id":1,"db":"shop",'
        b'"table":"notes \\"\xc3\xbc\\"","file":"mysql-bin.000007","pos":1400,'
        b'"gtid":"0-1-57","ts_ms":1700000000000,"snapshot":false},"scn":30064772472,"row":0,"txn":{"seq":3,'
        b'"last":false},"key":null,"before":null,'
        b'"after":{"note":"\xc3\xa9t\xc3\xa9 \xe2\x98\x83\\n","n":1.5,"tags":["a","b"],'
        b'"doc":{"k":null}},"changed":[],"ts_ms":1732460000042}',
    ),
    (
        b'{"db":"shop","table":"lines","pk":{"order_id":1,"n":2}}',
        b'{"op":"d","source":{"name":"shop","server_id":1,"db":"shop","table":"lines",'
        b'"file":"mysql-bin.000007","pos":1500,"gtid":"0-1-57","ts_ms":1700000000000,"snapshot":false},'
        b'"scn":30064772572,"row":0,"txn":{"seq":4,"last":true},"key":{"order_id":1,"n":2},'
        b'"before":{"order_id":1,"n":2,"qty":18446744073709551615},"after":null,'
        b'"changed":[],"ts_ms":1732460000042}',
    ),
    (
        b'{"db":"shop","table":"orders","pk":{"id":3}}',
        b'{"op":"c","source":{"name":"shop","server_id":1,"db":"shop","table":"orders",'
        b'"file":"mysql-bin.000007","pos":1800,"gtid":null,"ts_ms":1700000000000,"snapshot":false},'
        b'"scn":30064772872,"row":0,"txn":{"seq":0,"last":true},"key":{"id":3},'
        b'"before":null,"after":{"id":3,"amount":"0.00","status":null},"changed":[],'
        b'"ts_ms":1732460000042}',
    ),
]


def test_the_relay_publishes_the_same_key_and_event_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    changes = published(monkeypatch, canned_events())
    assert [(c.key, c.value) for c in changes] == RELAY_OUTPUT


def test_every_event_the_relay_publishes_is_a_change_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exactly the schema's fields, in its order, and keys the schema would build."""
    changes = published(monkeypatch, canned_events() + primary_key_change_events()[1:])
    ops = set()
    for change in changes:
        event_ = msgspec.json.decode(change.value, type=ChangeEvent)
        key = msgspec.json.decode(change.key, type=EventKey)
        ops.add(event_.op)
        document = orjson.loads(change.value)
        assert tuple(document) == FIELDS
        assert tuple(document["source"]) == SOURCE_FIELDS
        assert document["source"]["snapshot"] is False
        assert tuple(document["txn"]) == TXN_FIELDS
        assert tuple(orjson.loads(change.key)) == KEY_FIELDS
        assert (change.scn, change.row) == (event_.scn, event_.row)
        assert (key.db, key.table, key.pk) == (event_.source.db, event_.source.table, event_.key)
        assert change.key == key_bytes(key.db, key.table, key.pk)
        # The schema encodes the same bytes back.
        assert msgspec.json.encode(event_) == change.value
        assert msgspec.json.encode(key) == change.key
    assert ops == {"c", "u", "d"} == set(binlog.OPS.values())


def test_the_row_changes_ops_are_the_schemas() -> None:
    row, other = {"id": 1, "v": "a"}, {"id": 2, "v": "b"}
    made = [
        *binlog._row_changes("c", None, row, ("id",)),
        *binlog._row_changes("d", row, None, ("id",)),
        *binlog._row_changes("u", row, {**row, "v": "b"}, ("id",)),
        *binlog._row_changes("u", row, other, ("id",)),
        *binlog._row_changes("u", row, other, ()),
    ]
    assert [op for op, *_ in made] == ["c", "d", "u", "d", "c", "u"]
    assert {op for op, *_ in made} <= OPS
    assert (change_event.CREATE, change_event.UPDATE) == ("c", "u")
    assert (change_event.DELETE, change_event.READ) == ("d", "r")


@pytest.mark.parametrize(
    ("db", "table", "pk"),
    [
        ("shop", "orders", {"id": 1}),
        ("shop", "orders", None),
        ('we"ird\\', "tä\tble ☃", {"a": 18446744073709551615, "b": "x"}),
    ],
)
def test_the_key_prefix_and_source_block_serialize_as_the_whole_would(
    db: str, table: str, pk: dict[str, Any] | None
) -> None:
    whole_key = orjson.dumps({"db": db, "table": table, "pk": pk})
    assert key_prefix(db, table) + orjson.dumps(pk) + b"}" == whole_key
    assert key_bytes(db, table, pk) == whole_key
    source: dict[str, Any] = {
        "name": "shop", "server_id": 7, "db": db, "table": table,
        "file": "mysql-bin.000003", "pos": 1234, "gtid": None, "ts_ms": 1732460000000,
        "snapshot": False,
    }  # fmt: skip
    block = source_block(*source.values())
    assert isinstance(block, orjson.Fragment)
    assert orjson.dumps({"source": block}) == orjson.dumps({"source": source})
    assert tuple(source) == SOURCE_FIELDS
    for flag in (True, "last"):
        flagged = orjson.loads(orjson.dumps({"s": source_block(*list(source.values())[:-1], flag)}))
        assert flagged["s"]["snapshot"] == flag


def test_the_heads_fields_are_the_events() -> None:
    assert set(Head.__struct_fields__) <= set(FIELDS)
    assert set(Source.__struct_fields__) <= set(SOURCE_FIELDS)
    assert set(get_args(change_event.Op)) == OPS == set("cudr")
    assert issubclass(BadMessage, AesopError)


def test_the_consumer_takes_every_event_the_relay_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changes = published(monkeypatch, canned_events() + primary_key_change_events()[1:])
    for change in changes:
        document = orjson.loads(change.value)
        head = decode_head(change.value)
        assert head == fast_decode_head(change.value)
        assert (head.op, head.scn, head.row) == (document["op"], change.scn, change.row)
        assert head.source == Source("shop", document["source"]["db"], document["source"]["table"])
        assert parse(change.value) == document
    # Through the consumer's own selection, as records of one partition (in binlog order:
    # the primary key changes come from earlier positions).
    changes = published(monkeypatch, primary_key_change_events() + canned_events()[1:])
    records = [
        SimpleNamespace(key=c.key, value=c.value, offset=offset) for offset, c in enumerate(changes)
    ]
    selected: list[Change] = []
    found = select(TP("aesop.shop", 0), records, None, None, selected)
    assert (found.bad, found.skipped) == ([], 0)
    assert [(c.head.scn, c.head.row) for c in selected] == [(c.scn, c.row) for c in changes]
    assert [c.event for c in selected] == [orjson.loads(c.value) for c in changes]


def test_a_snapshot_read_is_a_change_event() -> None:
    """op "r" (a snapshot's row, no ``before``) and ``source.snapshot``, which binlog events
    leave out, as the contract has them."""
    insert = orjson.loads(RELAY_OUTPUT[-1][1])
    read_ = {**insert, "op": "r", "source": {**insert["source"], "snapshot": "last"}}
    value = orjson.dumps(read_)
    assert msgspec.json.decode(value, type=ChangeEvent).source.snapshot == "last"
    assert decode_head(value).op == "r"
    assert parse(value) == read_


def _event(**fields: Any) -> bytes:
    return orjson.dumps({**orjson.loads(RELAY_OUTPUT[0][1]), **fields})


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"op": "c", "changed": []}, "op 'c' has after and no before"),
        ({"op": "r", "changed": []}, "op 'r' has after and no before"),
        ({"op": "d"}, "changed is [] but for updates (op 'd')"),
        ({"op": "d", "changed": []}, "a delete has before and no after"),
        ({"after": None}, "an update has both before and after"),
        ({"op": "x"}, "Invalid enum value 'x' - at `$.op`"),
        ({"row": -1}, "Expected `int` >= 0 - at `$.row`"),
        ({"txn": {"seq": 0}}, "Object missing required field `last` - at `$.txn`"),
        ({"extra": 1}, "Object contains unknown field `extra`"),
    ],
)
def test_the_whole_event_is_checked_against_the_contract(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(msgspec.ValidationError) as raised:
        msgspec.json.decode(_event(**fields), type=ChangeEvent)
    assert str(raised.value) == why


SOURCE = b'"source":{"name":"shop","db":"d","table":"t"}'
NOT_AN_EVENT = "not a change event: "


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "null value (tombstone); expected a change event"),
        (b"", "not JSON: Input is a zero-length, empty document: line 1 column 1 (char 0)"),
        (b"not json", "not JSON: invalid literal, expected 'null': line 1 column 1 (char 0)"),
        (b'{"op":"c"', "not JSON: unexpected end of data: line 1 column 10 (char 9)"),
        (
            b'{"op":"c",' + SOURCE + b',"scn":1,"row":0} x',
            "not JSON: unexpected content after document: line 1 column 74 (char 73)",
        ),
        (b"[1]", NOT_AN_EVENT + "a JSON list, not an object"),
        (b"null", NOT_AN_EVENT + "a JSON NoneType, not an object"),
        (b'{"scn":1,"row":0,' + SOURCE + b"}", NOT_AN_EVENT + "op is None, not c/u/d/r"),
        (b'{"op":"C","scn":1,"row":0,' + SOURCE + b"}", NOT_AN_EVENT + "op is 'C', not c/u/d/r"),
        (b'{"op":"c","scn":"1","row":0}', NOT_AN_EVENT + "scn and row must be integers"),
        (b'{"op":"c","scn":1.0,"row":0}', NOT_AN_EVENT + "scn and row must be integers"),
        (b'{"op":"c","scn":1,"row":true}', NOT_AN_EVENT + "scn and row must be integers"),
        (b'{"op":"c","scn":1}', NOT_AN_EVENT + "scn and row must be integers"),
        (b'{"op":"c","scn":1,"row":0}', NOT_AN_EVENT + "source must have name, db and table"),
        (
            b'{"op":"c","scn":1,"row":0,"source":{"name":"shop","db":"d"}}',
            NOT_AN_EVENT + "source must have name, db and table",
        ),
        (
            b'{"op":"c","scn":1,"row":0,"source":"shop"}',
            NOT_AN_EVENT + "source must have name, db and table",
        ),
    ],
)
def test_a_malformed_message_is_refused_in_one_line(value: bytes | None, why: str) -> None:
    """The same reason from the check on arrival as from the whole parse."""
    for check in (parse, decode_head):
        with pytest.raises(BadMessage) as raised:
            check(value)
        assert str(raised.value) == why
    with pytest.raises((msgspec.DecodeError, TypeError)):
        fast_decode_head(value)  # type: ignore[arg-type]
