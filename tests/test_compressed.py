"""Compressed binlogs: MariaDB's compressed query and rows events (log_bin_compress=ON) from a
real server, and MySQL 8.0.20+'s compressed transactions (TRANSACTION_PAYLOAD_EVENT) built from
a real MySQL 8.0 binlog. Either way the relay's change events equal, but for positions, those
of the same statements logged uncompressed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import zstandard
from pymysql.protocol import MysqlPacket
from pymysqlreplication.packet import BinLogPacketWrapper

from app.settings import MySQLURL
from relay import _pmr_patches, binlog, compressed
from tables.positions import scn_of
from tests.support.payload_proxy import PayloadProxy, field, packed_int
from tests.support.servers import BINLOG_ON, PrivateServer, StackServer, start_private_server
from tests.test_servers import read_handoff

LONG = 600  # characters: well above log_bin_compress_min_len (256)
PADDING = "p" * LONG
TABLE = (
    "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40) CHARACTER SET utf8mb4, note TEXT, "
    "amount DECIMAL(10,2), made DATETIME(3), raw BLOB, doc JSON, flags SET('a','b','c'), "
    f"day DATE) COMMENT '{PADDING[:300]}'"
)


def small(row_id: int) -> str:
    return (
        f"({row_id}, 'pen \u270d\U0001f600', NULL, -1.50, '2024-01-02 03:04:05.678', "
        "x'00ff10', '{\"a\": 1}', '', '1000-01-01')"
    )


def large(row_id: int) -> str:
    return (
        f"({row_id}, 'long', REPEAT('lorem \u00e9 ', {LONG // 8}), 12345678.99, "
        f"'1999-12-31 23:59:59.999', REPEAT(x'00ff', {LONG // 2}), "
        f"JSON_OBJECT('big', REPEAT('j', {LONG}), 'n', 2.5), 'a,c', '2024-02-29')"
    )


# Each item: the statements of one transaction (autocommit when alone).
WORKLOAD: list[tuple[str, ...]] = [
    (TABLE,),
    (f"INSERT INTO items VALUES {small(1)}",),
    (f"INSERT INTO items VALUES {large(2)}",),
    (
        "BEGIN",
        f"INSERT INTO items VALUES {small(3)}",
        f"INSERT INTO items VALUES {large(4)}",
        f"INSERT INTO items VALUES {small(5)}, {large(6)}",
        "UPDATE items SET amount = amount + 1 WHERE id IN (3, 4)",
        "COMMIT",
    ),
    ("UPDATE items SET note = CONCAT(note, 'more') WHERE id = 2",),
    ("UPDATE items SET id = 20 WHERE id = 2",),  # a primary-key change of a large row
    ("UPDATE items SET id = 10 WHERE id = 1",),  # and of a small one
    ("DELETE FROM items WHERE id = 10",),
    ("DELETE FROM items WHERE id = 20",),
    (f"ALTER TABLE items ADD COLUMN extra INT DEFAULT 7 COMMENT '{PADDING[:300]}'",),
    (f"INSERT INTO items (id, name) VALUES (7, '{PADDING[:30]}')",),
]
CHANGES = 1 + 1 + 6 + 1 + 2 + 2 + 1 + 1 + 1


def run_workload(server: Any, database: str) -> None:
    for statements in WORKLOAD:
        server.sql(*statements, database=database)


def without_positions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A change event less what differs between two logs of the same statements."""
    drop = ("pos", "gtid", "ts_ms")
    return [
        {
            **{k: v for k, v in e.items() if k not in ("scn", "ts_ms")},
            "source": {k: v for k, v in e["source"].items() if k not in drop},
        }
        for e in events
    ]


# --- MariaDB: log_bin_compress=ON ------------------------------------------------------


@pytest.fixture(scope="module")
def compressing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    options = [o for o in BINLOG_ON if not o.startswith("--log-bin-compress")]
    server = start_private_server(
        tmp_path_factory.mktemp("mariadb-compress"), *options, "--log-bin-compress=ON"
    )
    yield server
    server.stop()


def binlog_events(server: PrivateServer, start: tuple[str, int]) -> list[tuple[int, str]]:
    """(position, type) of each event after ``start``, as SHOW BINLOG EVENTS lists them."""
    rows = server.sql(f"SHOW BINLOG EVENTS IN '{start[0]}' FROM {start[1]}")
    return [(int(row[1]), str(row[2])) for row in rows]


def test_mariadb_compressed_events_give_the_changes_uncompressed_ones_do(
    compressing_server: PrivateServer,
) -> None:
    server = compressing_server
    assert server.sql("SELECT @@log_bin_compress, @@log_bin_compress_min_len") == [(1, 256)]
    url = MySQLURL("127.0.0.1", server.port, "root", "")
    runs = {}
    for compress in ("OFF", "ON"):
        server.sql(
            f"SET GLOBAL log_bin_compress = {compress}",
            "DROP DATABASE IF EXISTS shop",
            "CREATE DATABASE shop CHARACTER SET utf8mb4",
        )
        start = server.position()
        run_workload(server, "shop")
        end = server.position()
        handoff = read_handoff(url, "shop", start, CHANGES)
        runs[compress] = (start, end, handoff, binlog_events(server, start))

    plain, packed = runs["OFF"][2].events(), runs["ON"][2].events()
    assert len(plain) == len(packed) == CHANGES
    assert without_positions(packed) == without_positions(plain)
    assert "".join(e["op"] for e in packed) == "ccccccuuudcdcddc"

    # Both paths were taken: large rows and the long DDL compressed, small rows not.
    assert not [t for _, t in runs["OFF"][3] if "compressed" in t.lower()]
    types = dict(runs["ON"][3])
    compressed_rows = {p for p, t in types.items() if t.lower().endswith("rows_compressed_v1")}
    plain_rows = {p for p, t in types.items() if t.lower().endswith("rows_v1")}
    assert "Query_compressed" in types.values(), types
    from_compressed = [e for e in packed if e["source"]["pos"] in compressed_rows]
    from_plain = [e for e in packed if e["source"]["pos"] in plain_rows]
    assert len(from_compressed) + len(from_plain) == CHANGES
    assert {e["op"] for e in from_compressed} == {"c", "u", "d"}
    assert {e["op"] for e in from_plain} >= {"c", "d"}
    # Each is a real event with its own position: SCN from where the event starts.
    for e in packed:
        assert e["scn"] == scn_of(e["source"]["file"], e["source"]["pos"])
    # The resume point after the last commit is the server's position there, and a compressed
    # DDL is a transaction boundary like any other.
    start, end, handoff, _ = runs["ON"]
    assert handoff.batches[-1].resume.pos == end[1]

    # A resume from the transaction start drops exactly what was already published.
    multi = next(i for i, e in enumerate(packed) if e["txn"]["seq"] == 2)
    last = (packed[multi]["scn"], packed[multi]["row"])
    again = read_handoff(url, "shop", start, CHANGES - multi - 1, skip=last).events()
    assert without_positions(again) == without_positions(packed[multi + 1 :])


# --- MySQL 8.0.20+: binlog_transaction_compression=ON -----------------------------------


@pytest.fixture
def mysql8_database(mysql8: StackServer, unique: str) -> Iterator[str]:
    name = f"t_{unique}"
    mysql8.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield name
    mysql8.sql(f"DROP DATABASE IF EXISTS {name}")


def test_mysql_compressed_transactions_give_the_changes_uncompressed_ones_do(
    mysql8: StackServer, mysql8_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No MySQL 8.0.20+ can be had here, so the stack's MySQL 8.0.15 logs the statements and
    ``PayloadProxy`` (tests/support/payload_proxy.py), a proxy between the relay and that
    server, hands the relay its binlog stream with each transaction packed into a
    TRANSACTION_PAYLOAD_EVENT as MySQL's format has it. The relay's own BinlogReader, with the
    library's own stream, reads both the server directly and through the proxy: the whole
    path from socket to change event is the one a compressing server would take. Forwarding
    the real server (rather than serving canned bytes) keeps its handshake, queries and
    positions real, so a resume at a transaction start is a resume on the server."""
    database = mysql8_database
    start = mysql8.position()
    run_workload(mysql8, database)
    end = mysql8.position()
    plain = read_handoff(mysql8.url(), database, start, CHANGES).events()
    with PayloadProxy(mysql8.port) as proxy:
        through = MySQLURL("127.0.0.1", proxy.port, "root", "")
        handoff = read_handoff(through, database, start, CHANGES)
    packed = handoff.events()
    # Every transaction but the two DDL statements (which MySQL never compresses) was packed.
    assert proxy.payloads == len(WORKLOAD) - 2

    def apart_from_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**e, "row": None} for e in without_positions(events)]

    assert len(packed) == CHANGES
    assert apart_from_rows(packed) == apart_from_rows(plain)
    # A transaction's changes share the payload's SCN, told apart by increasing rows; the
    # multi-row transaction, four rows events uncompressed, is one event here.
    identities = [(e["scn"], e["row"]) for e in packed]
    assert identities == sorted(set(identities))
    multi = [e for e in packed if e["source"]["gtid"] == packed[2]["source"]["gtid"]]
    assert len(multi) == 6 and len({e["scn"] for e in multi}) == 1
    assert len({e["scn"] for e in plain if e["source"]["gtid"] == plain[2]["source"]["gtid"]}) == 4
    assert all(start[1] < e["source"]["pos"] < end[1] for e in packed)
    assert handoff.batches[-1].resume.pos == end[1]

    # Cut mid-payload (two changes a batch), then resume as after a crash: from the batch's
    # resume point (the transaction start), dropping what it had published.
    monkeypatch.setattr(binlog, "ROWS_PER_BATCH", 2)
    with PayloadProxy(mysql8.port) as proxy:
        through = MySQLURL("127.0.0.1", proxy.port, "root", "")
        batches = read_handoff(through, database, start, CHANGES).batches
        cut = next(b for b in batches if b.changes and not _last_of_transaction(b.changes[-1]))
        assert cut.last is not None and scn_of(cut.resume.file, cut.resume.pos) < cut.last[0]
        done = sum(len(b.changes) for b in batches[: batches.index(cut) + 1])
        resume = (cut.resume.file, cut.resume.pos)
        again = read_handoff(through, database, resume, CHANGES - done, skip=cut.last).events()
    assert [{**e, "ts_ms": None} for e in again] == [{**e, "ts_ms": None} for e in packed[done:]]


def _last_of_transaction(change: Any) -> bool:
    return bool(orjson.loads(change.value)["txn"]["last"])


# --- the formats, without a server --------------------------------------------------------


def mariadb_buffer(data: bytes) -> bytes:
    """MariaDB's compressed buffer: 0x80 | length bytes, the length high byte first, zlib."""
    size = len(data).to_bytes(4, "big").lstrip(b"\0") or b"\0"
    return bytes([0x80 | len(size)]) + size + zlib.compress(data)


def test_a_mariadb_buffer_opens_and_a_bad_one_says_why() -> None:
    text = b"lorem ipsum " * 100
    assert compressed.mariadb_uncompress(mariadb_buffer(text)) == text
    good = mariadb_buffer(text)
    for bad, why in [
        (b"\x00" + good[1:], "bad compressed-data header byte 0x00"),
        (b"\x92" + good[1:], "bad compressed-data header byte 0x92"),  # algorithm 1
        (good[:1] + (len(text) + 1).to_bytes(2, "big") + good[3:], "were announced"),
        (good[:-5], "zlib stream does not decode"),
    ]:
        with pytest.raises(compressed.CompressedEventError, match=why):
            compressed.mariadb_uncompress(bad)


def xid_event(xid: int, when: int = 1_700_000_000) -> bytes:
    """A whole XID_EVENT without checksum, as a payload holds it (its end position 0)."""
    body = xid.to_bytes(8, "little")
    return struct.pack("<IBIIIH", when, 16, 1, 19 + len(body), 0, 0) + body


def outer_payload(inner: bytes, fields: bytes, end: int, checksum: bool) -> Any:
    """The library's packet wrapper over a type-40 event holding ``inner``, ending at ``end``."""
    body = fields + inner
    size = 19 + len(body) + (4 if checksum else 0)
    event = struct.pack("<IBIIIH", 1_700_000_000, 40, 1, size, end, 0) + body
    event += b"\0\0\0\0" if checksum else b""
    ctl = SimpleNamespace(charset="utf8", _get_dbms=lambda: "mysql")
    return BinLogPacketWrapper(
        MysqlPacket(b"\0" + event, None), {}, ctl, (8, 0, 20), checksum,
        frozenset(_pmr_patches.event_map().values()), None, None, None, None, True, False,
        False, True, False, False, None,
    )  # fmt: skip


@pytest.mark.parametrize("checksum", [True, False])
def test_a_payload_event_yields_its_events_at_its_own_place(checksum: bool) -> None:
    """Fields in any order, an unknown one skipped (as MySQL's decoder does); each inner event
    starts where the payload starts and ends where it ends."""
    _pmr_patches.apply()
    inner = xid_event(7) + xid_event(8)
    packed = zstandard.ZstdCompressor().compress(inner)
    fields = (
        field(9, 12345) + field(1, len(packed)) + field(2, 0) + field(3, len(inner))
        + packed_int(0) + packed
    )  # fmt: skip
    wrapper = outer_payload(b"", fields, 5000, checksum)
    payload = wrapper.event
    assert isinstance(payload, compressed.TransactionPayloadEvent)
    got = [(offset, type(e).__name__, e.xid, e.packet.log_pos, e.packet.event_size)
           for offset, e in payload.inner()]  # fmt: skip
    size = wrapper.event_size
    assert got == [(0, "XidEvent", 7, 5000, size), (27, "XidEvent", 8, 5000, size)]
    # Stored uncompressed (compression type 255, NONE) the same events come out.
    plain = field(2, 255) + field(1, len(inner)) + packed_int(0) + inner
    none = outer_payload(b"", plain, 5000, checksum).event
    assert [e.xid for _, e in none.inner()] == [7, 8]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (field(2, 0) + field(3, 4) + packed_int(0) + b"abcd", "lacks its size or compression"),
        (field(2, 0) + field(1, 50) + packed_int(0) + b"abcd", "of 50 bytes has 4"),
        (field(2, 0) + field(1, 4), "has no end mark"),
        (field(2, 7) + field(1, 4) + packed_int(0) + b"abcd", "unknown type 7"),
        (field(2, 0) + field(1, 4) + packed_int(0) + b"abcd", "zstd stream does not decode"),
        (field(2, 255) + field(1, 10) + packed_int(0) + xid_event(1)[:10], "ends inside an event"),
    ],
)
def test_a_bad_payload_event_says_why(fields: bytes, why: str) -> None:
    _pmr_patches.apply()
    with pytest.raises(compressed.CompressedEventError, match=why):
        list(outer_payload(b"", fields, 5000, True).event.inner())
