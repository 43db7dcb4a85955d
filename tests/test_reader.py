"""The binlog reader's event handling, without a server: canned events in, batches out.

Events MariaDB cannot write (MySQL 8's PARTIAL_UPDATE_ROWS_EVENT) are tested here. The
stand-in stream filters events with python-mysql-replication's own allowed-event list, as
the real stream does, so an event type missing from the reader's list is dropped here too.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pymysql
import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import PartialUpdateRowsEvent, UpdateRowsEvent, WriteRowsEvent

from app.errors import DecodeError, SourceError
from app.settings import MySQLURL, SourceSettings
from relay import binlog
from relay.handoff import Batch
from tables.positions import Position, scn_of
from tests.support.stack import wait_until

FILE = "mysql-bin.000007"
SOURCE = SourceSettings(
    name="shop",
    mysql=MySQLURL("127.0.0.1", 1, "repl", ""),
    server_id=9,
    include=(),
    exclude=(),
    start=f"{FILE}:4",
    topic="aesop.shop",
)


class CannedStream:
    """Stands in for BinLogStreamReader: the given events, filtered as the library does."""

    def __init__(
        self, events: list[Any], at_end: Callable[[], None] | None = None, **kwargs: Any
    ) -> None:
        self.allowed = BinLogStreamReader._allowed_event_list(
            None, kwargs["only_events"], None, kwargs["filter_non_implemented_events"]
        )
        self.events = iter(events)
        # Called once the events run out, before the None that ends the stream: the reader
        # being stopped there. Without it, the stream ends as the server ending it does.
        self.at_end = at_end

    def fetchone(self) -> Any:
        for event in self.events:
            if event.__class__ in self.allowed:
                return event
        if self.at_end is not None:
            self.at_end()
        return None

    def close(self) -> None:
        pass


class Collected:
    """Stands in for the Handoff: keeps what the reader hands over."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def put(self, batch: Batch, stop: threading.Event) -> None:
        self.batches.append(batch)

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(c.value) for b in self.batches for c in b.changes]

    def keys_of_changes(self) -> list[dict[str, Any]]:
        return [orjson.loads(c.key) for b in self.batches for c in b.changes]


def run_until(reader: Any, handoff: Collected, count: int, timeout: float) -> None:
    """Run ``reader`` on a thread until ``handoff`` holds ``count`` change events, then stop
    it; an error the reader raised is raised again here."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            reader.run()
        except BaseException as exc:  # raised again in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="binlog-reader", daemon=True)
    thread.start()
    try:
        wait_until(lambda: failed or len(handoff.events()) >= count, timeout, f"{count} events")
    finally:
        reader.stop()
        thread.join(10)
    if failed:
        raise failed[0]


def event(cls: type, pos: int, size: int = 50, **attrs: Any) -> Any:
    """An event of ``cls`` starting at ``pos``, with only the attributes the reader reads."""
    made = cls.__new__(cls)
    made.packet = SimpleNamespace(log_pos=pos + size, event_size=size, server_id=1)
    made.timestamp = 1_700_000_000
    made.event_type = attrs.pop("event_type", 0)
    for name, value in attrs.items():
        # A rows event's ``rows`` is a property over the rows it has decoded.
        setattr(made, "_RowsEvent__rows" if name == "rows" else name, value)
    return made


class PassThrough:
    """A row decoder for canned events: their rows are already in their final form."""

    def images(self, event: Any, op: str) -> list[tuple[Any, Any]]:
        if op == "u":
            return [(r["before_values"], r["after_values"]) for r in event.rows]
        if op == "c":
            return [(None, r["values"]) for r in event.rows]
        return [(r["values"], None) for r in event.rows]


def rotate(pos: int = 4) -> Any:
    return event(RotateEvent, 0, next_binlog=FILE, position=pos)


def begin(pos: int, gtid: str) -> list[Any]:
    return [
        event(MariadbGtidEvent, pos, gtid=gtid, flags=0),
        event(QueryEvent, pos + 50, query="BEGIN"),
    ]


def rows(cls: type, pos: int, images: list[dict[str, Any]], pk: Any = "id") -> Any:
    return event(cls, pos, schema="shop", table="items", primary_key=pk, rows=images)


START = Position(FILE, 4)


def read(
    monkeypatch: pytest.MonkeyPatch,
    events: list[Any],
    start: Position = START,
    skip_through: tuple[int, int] = (0, -1),
    clock: Callable[[], float] = time.time,
) -> tuple[binlog.BinlogReader, Collected]:
    handoff = Collected()
    reader = binlog.BinlogReader(SOURCE, start, skip_through, handoff, clock)  # type: ignore[arg-type]
    monkeypatch.setattr(
        binlog, "BinLogStreamReader", lambda **kw: CannedStream(events, reader.stopping.set, **kw)
    )
    reader._decoder = lambda _event: PassThrough()  # type: ignore[method-assign]
    reader.run()
    return reader, handoff


def without_clock(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "ts_ms": None} for e in events]


def test_a_partial_json_update_stops_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    before, after = {"id": 1, "doc": "{}"}, {"id": 1, "doc": "{}"}
    partial = rows(
        PartialUpdateRowsEvent,
        400,
        [{"before_values": before, "after_values": after}],
    )
    partial.event_type = 39
    events = [rotate(), *begin(200, "0-1-5"), partial, event(XidEvent, 500)]
    with pytest.raises(DecodeError) as raised:
        read(monkeypatch, events)
    message = str(raised.value)
    assert message.startswith(
        f"source 'shop': PARTIAL_UPDATE_ROWS_EVENT at {FILE}:400 cannot be decoded; "
        "set binlog_row_value_options='' on the server"
    ), message
    assert "\n" not in message


def test_a_partial_json_update_is_not_published_as_an_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its after image holds a diff, not the row: nothing of it may reach Kafka."""
    partial = rows(
        PartialUpdateRowsEvent, 400, [{"before_values": {"id": 1}, "after_values": {"id": 1}}]
    )
    partial.event_type = 39
    handoff = Collected()
    monkeypatch.setattr(
        binlog, "BinLogStreamReader", lambda **kw: CannedStream([rotate(), partial], **kw)
    )
    reader = binlog.BinlogReader(SOURCE, Position(FILE, 4), (0, -1), handoff)  # type: ignore[arg-type]
    reader._decoder = lambda _event: PassThrough()  # type: ignore[method-assign]
    with pytest.raises(DecodeError):
        reader.run()
    assert handoff.events() == []


@pytest.mark.parametrize(
    ("event_type", "name"),
    [(26, "INCIDENT_EVENT"), (42, "GTID_TAGGED_LOG_EVENT"), (250, "a type aesop does not know")],
)
def test_an_event_type_the_reader_does_not_know_stops_the_source(
    monkeypatch: pytest.MonkeyPatch, event_type: int, name: str
) -> None:
    """The allow-list: a type neither decoded nor listed as ignored is never skipped."""
    committed = [rotate(), *begin(100, "0-1-5"), rows(WriteRowsEvent, 150, [{"values": {"id": 1}}])]
    unknown = event(NotImplementedEvent, 1234, event_type=event_type)
    handoff = Collected()
    events = [*committed, event(XidEvent, 200), *begin(1000, "0-1-6"), unknown]
    monkeypatch.setattr(binlog, "BinLogStreamReader", lambda **kw: CannedStream(events, **kw))
    reader = binlog.BinlogReader(SOURCE, START, (0, -1), handoff)  # type: ignore[arg-type]
    reader._decoder = lambda _event: PassThrough()  # type: ignore[method-assign]
    with pytest.raises(DecodeError) as raised:
        reader.run()
    message = str(raised.value)
    assert message.startswith(
        f"source 'shop': binlog event type {event_type} ({name}) at {FILE}:1234 is neither "
        "decoded nor known to be safe to skip"
    ), message
    assert f'delete its checkpoint and set start = "{FILE}:<pos>"' in message
    assert f"SHOW BINLOG EVENTS IN '{FILE}' FROM 1234" in message
    assert 'start = "latest"' in message
    assert "\n" not in message
    # What came before it was handed over, and nothing after its transaction start.
    assert [e["after"] for e in handoff.events()] == [{"id": 1}]
    assert reader.resume == Position(FILE, 250, "0-1-5")


def test_the_types_the_reader_ignores_pass_and_a_heartbeat_v2_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ignored = [
        event(NotImplementedEvent, 300 + i, event_type=t) for i, t in enumerate((34, 36, 37))
    ]
    heartbeat_v2 = event(NotImplementedEvent, 0, event_type=binlog.HEARTBEAT_V2)
    one = rows(WriteRowsEvent, 500, [{"values": {"id": 2}}])
    events = [rotate(), *ignored, *begin(400, "0-1-7"), one, event(XidEvent, 600), heartbeat_v2]
    _, handoff = read(monkeypatch, events)
    assert [e["after"] for e in handoff.events()] == [{"id": 2}]
    reader, _ = read(monkeypatch, [rotate(), *ignored])
    assert not reader.streaming
    reader, _ = read(monkeypatch, [rotate(), *ignored, heartbeat_v2])
    assert reader.streaming  # only a heartbeat (or a batch) says the server is sending


def test_every_event_class_the_library_makes_is_decoded_or_deliberately_ignored() -> None:
    """The library drops classes not in EVENTS unseen: each such type is in IGNORED, and an
    unreviewed one (a library change) stops the reader from being made."""
    from pymysqlreplication.event import IntvarEvent

    from relay import _pmr_patches

    _pmr_patches.apply()
    library = _pmr_patches.event_map()
    assert binlog.unreviewed_types(library) == {}
    assert library[40].__name__ == "TransactionPayloadEvent"
    assert {library[t].__name__ for t in range(165, 172)} == {"MariadbCompressedEvent"}
    assert binlog.unreviewed_types({**library, 250: IntvarEvent}) == {250: "IntvarEvent"}


def test_a_rows_event_without_its_position_stops_the_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MariaDB 11.4+ with binlog_legacy_event_pos=OFF logs end_log_pos 0 inside a transaction:
    such rows have no SCN, and dropping them would lose them without a word."""
    unplaced = rows(WriteRowsEvent, 300, [{"values": {"id": 1}}])
    unplaced.packet.log_pos = 0
    committed = [rotate(), *begin(100, "0-1-8"), rows(WriteRowsEvent, 150, [{"values": {"id": 2}}])]
    events = [*committed, event(XidEvent, 200), *begin(250, "0-1-9"), unplaced]
    with pytest.raises(DecodeError) as raised:
        read(monkeypatch, events)
    message = str(raised.value)
    assert message.startswith(
        f"source 'shop': a rows event of shop.items in {FILE} after {FILE}:250 has "
        "end_log_pos 0, so its rows get no position; set binlog_legacy_event_pos=ON"
    ), message
    assert 'start = "latest"' in message and "\n" not in message


def primary_key_change_events() -> list[Any]:
    return [
        rotate(),
        *begin(100, "0-1-7"),
        rows(
            UpdateRowsEvent,
            200,
            [
                {"before_values": {"id": 1, "v": "a"}, "after_values": {"id": 11, "v": "a"}},
                {"before_values": {"id": 2, "v": "b"}, "after_values": {"id": 2, "v": "c"}},
                {"before_values": {"id": 3, "v": "d"}, "after_values": {"id": 13, "v": "e"}},
            ],
        ),
        rows(WriteRowsEvent, 300, [{"values": {"id": 4, "v": "f"}}]),
        event(XidEvent, 400),
    ]


def test_an_update_of_the_primary_key_is_a_delete_then_a_create(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, handoff = read(monkeypatch, primary_key_change_events())
    got = [
        (e["op"], e["scn"], e["row"], e["txn"]["seq"], e["txn"]["last"], e["key"],
         e["before"], e["after"], e["changed"])
        for e in handoff.events()
    ]  # fmt: skip
    update, insert = scn_of(FILE, 200), scn_of(FILE, 300)
    assert got == [
        ("d", update, 0, 0, False, {"id": 1}, {"id": 1, "v": "a"}, None, []),
        ("c", update, 1, 1, False, {"id": 11}, None, {"id": 11, "v": "a"}, []),
        ("u", update, 2, 2, False, {"id": 2}, {"id": 2, "v": "b"}, {"id": 2, "v": "c"}, ["v"]),
        ("d", update, 3, 3, False, {"id": 3}, {"id": 3, "v": "d"}, None, []),
        ("c", update, 4, 4, False, {"id": 13}, None, {"id": 13, "v": "e"}, []),
        ("c", insert, 0, 5, True, {"id": 4}, None, {"id": 4, "v": "f"}, []),
    ]
    assert [k["pk"] for k in handoff.keys_of_changes()] == [{"id": i} for i in (1, 11, 2, 3, 13, 4)]


def test_a_resume_inside_a_primary_key_change_drops_exactly_what_was_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-reading the transaction numbers its events the same way, so the dedupe is exact."""
    _, first = read(monkeypatch, primary_key_change_events())
    published = first.events()
    for cut in range(len(published)):
        last = (published[cut]["scn"], published[cut]["row"])
        _, again = read(monkeypatch, primary_key_change_events(), skip_through=last)
        assert without_clock(again.events()) == without_clock(published[cut + 1 :]), cut


def test_a_composite_key_change_in_one_column_is_a_delete_then_a_create(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    change = rows(
        UpdateRowsEvent,
        200,
        [{"before_values": {"a": 1, "b": "x"}, "after_values": {"a": 1, "b": "y"}}],
        pk=("a", "b"),
    )
    _, handoff = read(monkeypatch, [rotate(), *begin(100, "0-1-8"), change, event(XidEvent, 300)])
    assert [(e["op"], e["row"], e["key"]) for e in handoff.events()] == [
        ("d", 0, {"a": 1, "b": "x"}),
        ("c", 1, {"a": 1, "b": "y"}),
    ]


def test_a_resume_point_at_a_rotate_keeps_the_last_gtid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large transaction right after a Rotate is handed off in parts that resume there."""
    events = [
        rotate(),
        *begin(100, "0-1-9"),
        rows(WriteRowsEvent, 200, [{"values": {"id": 1}}]),
        event(XidEvent, 300),
        event(RotateEvent, 400, next_binlog="mysql-bin.000008", position=4),
        *begin(4, "0-1-10"),
        rows(WriteRowsEvent, 200, [{"values": {"id": 2}}, {"values": {"id": 3}}]),
    ]
    monkeypatch.setattr(binlog, "ROWS_PER_BATCH", 1)
    _, handoff = read(monkeypatch, events)
    assert [b.resume for b in handoff.batches] == [
        Position(FILE, 350, "0-1-9"),  # the commit's batch
        Position("mysql-bin.000008", 4, "0-1-9"),  # the large transaction's first part
    ]


def test_the_resume_point_of_the_first_rotate_keeps_the_checkpoint_gtid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server starts every stream with a Rotate to the start position."""
    two = [{"values": {"id": 1}}, {"values": {"id": 2}}]
    events = [rotate(), *begin(4, "0-1-4"), rows(WriteRowsEvent, 200, two)]
    monkeypatch.setattr(binlog, "ROWS_PER_BATCH", 1)
    _, handoff = read(monkeypatch, events, start=Position(FILE, 4, "0-1-3"))
    assert [b.resume for b in handoff.batches] == [Position(FILE, 4, "0-1-3")]


def test_a_compressed_event_that_does_not_open_is_read_again_not_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A corrupt payload is a decode failure, retried with backoff, that names its place."""
    from relay.compressed import CompressedEventError, TransactionPayloadEvent

    def corrupt() -> Any:
        raise CompressedEventError("zstd stream does not decode (bad frame)")

    payload = event(TransactionPayloadEvent, 800, size=120, inner=corrupt)
    events = [rotate(), event(MariadbGtidEvent, 700, gtid="0-1-9", flags=0), payload]
    with pytest.raises(binlog.RowDecodeError) as raised:
        read(monkeypatch, events)
    assert str(raised.value) == (
        f"source 'shop': the compressed binlog event at {FILE}:800 could not be opened (zstd "
        f"stream does not decode (bad frame)); reading again from {FILE}:4"
    )


def test_a_mariadb_compressed_event_that_does_not_open_names_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It fails while the stream makes it, before the stream moves past it."""
    from relay.compressed import CompressedEventError

    class FailingStream(CannedStream):
        log_pos = 1234

        def fetchone(self) -> Any:
            raise CompressedEventError("zlib stream does not decode (incomplete)")

    monkeypatch.setattr(binlog, "BinLogStreamReader", lambda **kw: FailingStream([], **kw))
    reader = binlog.BinlogReader(SOURCE, START, (0, -1), Collected())  # type: ignore[arg-type]
    with pytest.raises(binlog.RowDecodeError, match=f"event at {FILE}:1234 could not be opened"):
        reader.run()


def test_a_gtid_stream_adds_each_transaction_to_the_set_and_keeps_its_start_at_the_rotate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started by GTID set, the server's first Rotate (log_pos 0) is to position 4 of the
    file: the resume point stays the checkpoint's until a transaction ends."""
    opening = rotate()
    opening.packet.log_pos = 0
    events = [
        opening,
        *begin(100, "0-1-9"),
        rows(WriteRowsEvent, 200, [{"values": {"id": 1}}, {"values": {"id": 2}}]),
        event(XidEvent, 300),
    ]
    start = Position(FILE, 100, "0-1-8", "0-1-8,1-1-3")
    monkeypatch.setattr(binlog, "ROWS_PER_BATCH", 1)
    reader, handoff = read(monkeypatch, events, start=start)
    assert reader._where() == {"auto_position": "0-1-8,1-1-3", "is_mariadb": True}
    assert [b.resume for b in handoff.batches] == [
        start,  # the first row, handed before the commit
        Position(FILE, 350, "0-1-9", "0-1-9,1-1-3"),
    ]


def test_an_empty_gtid_set_reads_by_position_and_starts_the_set_at_the_first_gtid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [rotate(), *begin(100, "0-1-1"), event(XidEvent, 300)]
    monkeypatch.setattr(binlog, "POSITION_EVERY_S", 0.0)
    reader, handoff = read(monkeypatch, events, start=Position(FILE, 4, None, ""))
    assert reader._where() == {"log_file": FILE, "log_pos": 4}
    assert handoff.batches[-1].resume == Position(FILE, 350, "0-1-1", "0-1-1")


def test_a_stream_the_server_ends_is_a_lost_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """MySQL 8 ends the binlog dump with an EOF packet when it shuts down: the library's
    fetchone then returns None. The reader must fail (the source reconnects with backoff),
    never end as if it had been stopped, which left the source silent for good."""
    monkeypatch.setattr(binlog, "BinLogStreamReader", lambda **kw: CannedStream([rotate()], **kw))
    reader = binlog.BinlogReader(SOURCE, START, (0, -1), Collected())  # type: ignore[arg-type]
    with pytest.raises(SourceError) as raised:
        reader.run()
    assert str(raised.value) == (
        f"source 'shop': the server ended the binlog stream at {FILE}:None "
        "(it is shutting down or the connection was killed)"
    )


def test_the_control_connection_gives_up_on_a_server_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that accepts the connection and says nothing: the reader's own control
    connection (asked which columns are JSON) fails within its read timeout, never hangs."""
    monkeypatch.setattr(binlog, "READ_TIMEOUT_S", 1)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        source = dataclasses.replace(SOURCE, mysql=MySQLURL("127.0.0.1", port, "r", ""))
        reader = binlog.BinlogReader(source, START, (0, -1), Collected())  # type: ignore[arg-type]
        failed: list[BaseException] = []

        def ask() -> None:
            try:
                reader._json_columns("shop", "items")
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), "the control connection waited on a silent server"
    assert failed and isinstance(failed[0], pymysql.err.OperationalError), failed
