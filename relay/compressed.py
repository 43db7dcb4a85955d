"""Compressed binlog events, opened into the ordinary events they hold.

MariaDB with ``log_bin_compress=ON`` writes QUERY_COMPRESSED_EVENT (165) and compressed rows
events (166-171): the event's head as usual, then a zlib stream in place of the query text or
of the rows. MySQL 8.0.20+ with ``binlog_transaction_compression=ON`` writes a transaction
(after its GTID event) as one TRANSACTION_PAYLOAD_EVENT (40): a TLV header, then a zstd stream
holding the transaction's ordinary events, written without checksums.

``apply()`` (called from ``relay._pmr_patches.apply``) maps these types to the classes below
in python-mysql-replication's event map, so they come out of the library's own stream:
a MariaDB compressed event as the library's QueryEvent or rows event (its packet keeps the
compressed event's real position and size), a payload as ``TransactionPayloadEvent``, whose
``inner()`` yields the library's events for what it holds. Uncompressed events never reach
this module.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import Any

import zstandard
from pymysql.protocol import MysqlPacket
from pymysqlreplication.event import BinLogEvent, NotImplementedEvent, QueryEvent
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from app.errors import DecodeError

HEADER_LEN = 19  # the common header: timestamp, type, server id, size, end position, flags
CHECKSUM_LEN = 4
TYPE_AT, SIZE_AT, END_AT = 4, 9, 13  # offsets in the common header

# MariaDB's compressed type -> the uncompressed type it stands for (sql/log_event.h).
MARIADB_UNCOMPRESSED = {165: 2, 166: 23, 167: 24, 168: 25, 169: 30, 170: 31, 171: 32}
_UNCOMPRESSED_CLASS: dict[int, type[BinLogEvent]] = {
    2: QueryEvent,
    23: WriteRowsEvent,
    24: UpdateRowsEvent,
    25: DeleteRowsEvent,
    30: WriteRowsEvent,
    31: UpdateRowsEvent,
    32: DeleteRowsEvent,
}
QUERY_HEADER_LEN = 13
ROWS_HEADER_LEN_V1, ROWS_HEADER_LEN_V2 = 8, 10

TRANSACTION_PAYLOAD_EVENT = 40
# The payload header's fields (MySQL's Transaction_payload codec) and compression types.
END_MARK, PAYLOAD_SIZE, COMPRESSION_TYPE, UNCOMPRESSED_SIZE = 0, 1, 2, 3
ZSTD, NONE = 0, 255


class CompressedEventError(DecodeError):
    """A compressed event that does not decode: a corrupt stream or an unknown format."""


def _packed_int(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """MySQL's length-encoded integer (net_field_length_ll) at ``at``: (value, next offset)."""
    first = data[at]
    if first < 251:
        return first, at + 1
    width = {252: 2, 253: 3, 254: 8}.get(first)
    if width is None:
        raise CompressedEventError(f"bad length-encoded integer (first byte {first})")
    return int.from_bytes(data[at + 1 : at + 1 + width], "little"), at + 1 + width


def mariadb_uncompress(data: bytes | memoryview) -> bytes:
    """One of MariaDB's compressed buffers (binlog_buf_uncompress): a header byte, 0x80 |
    algorithm << 4 | the count of length bytes; the uncompressed length, high byte first;
    then a zlib stream (algorithm 0, the only one MariaDB writes)."""
    head = data[0]
    if head & 0x80 == 0 or head & 0x70 or not 1 <= head & 0x07 <= 4:
        raise CompressedEventError(f"bad compressed-data header byte 0x{head:02x}")
    width = head & 0x07
    size = int.from_bytes(data[1 : 1 + width], "big")
    try:
        out = zlib.decompress(data[1 + width :])
    except zlib.error as exc:
        raise CompressedEventError(f"zlib stream does not decode ({exc})") from None
    if len(out) != size:
        raise CompressedEventError(f"uncompressed {len(out)} bytes where {size} were announced")
    return out


def _post_header_len(lengths: Any, event_type: int, default: int) -> int:
    if lengths and 0 < event_type <= len(lengths):
        return int(lengths[event_type - 1])
    return default


def mariadb_uncompressed_event(event: bytes, post_header_lengths: Any, checksum: bool) -> bytes:
    """The uncompressed event a MariaDB compressed event stands for (as MariaDB's
    query_event_uncompress and row_log_event_uncompress build it): the same head, its type
    and size set, the compressed part opened; a zeroed checksum when the stream has them."""
    event_type = event[TYPE_AT]
    end = len(event) - (CHECKSUM_LEN if checksum else 0)
    at = HEADER_LEN
    if event_type == 165:
        db_len = event[at + 8]
        status_len = struct.unpack_from("<H", event, at + 11)[0]
        at += _post_header_len(post_header_lengths, event_type, QUERY_HEADER_LEN)
        at += status_len + db_len + 1
    else:
        post_header = _post_header_len(post_header_lengths, event_type, ROWS_HEADER_LEN_V1)
        at += ROWS_HEADER_LEN_V1
        if post_header == ROWS_HEADER_LEN_V2:
            at += struct.unpack_from("<H", event, at)[0]  # the extra-data block, its length in it
        width, at = _packed_int(event, at)
        bitmaps = 2 if event_type in (167, 170) else 1  # updates log two column bitmaps
        at += bitmaps * ((width + 7) // 8)
    if at >= end:
        raise CompressedEventError(f"a type {event_type} event of {len(event)} bytes ends early")
    body = mariadb_uncompress(memoryview(event)[at:end])
    head = bytearray(event[:at])
    size = at + len(body) + (CHECKSUM_LEN if checksum else 0)
    head[TYPE_AT] = MARIADB_UNCOMPRESSED[event_type]
    head[SIZE_AT : SIZE_AT + 4] = size.to_bytes(4, "little")
    return bytes(head) + body + (b"\0" * CHECKSUM_LEN if checksum else b"")


def _load(wrapper: Any, event: bytes) -> None:
    """Point a packet wrapper at ``event`` (a whole event), its common header already read."""
    packet = MysqlPacket(b"\0" + event, None)
    packet.advance(1 + HEADER_LEN)
    wrapper.packet = packet


class MariadbCompressedEvent(BinLogEvent):
    """Types 165-171: made as the library's event for the uncompressed type.

    The packet wrapper keeps the compressed event's end position and size from its header,
    so the event's start, and the SCN, are those of the event in the binlog file.
    """

    def __new__(
        cls, from_packet: Any, event_size: int, table_map: Any, ctl_connection: Any, **kwargs: Any
    ) -> BinLogEvent:
        checksum = bool(kwargs.get("use_checksum"))
        raw = bytes(from_packet.packet.get_all_data()[1:])
        event = mariadb_uncompressed_event(raw, kwargs.get("post_header_lengths"), checksum)
        event_type = event[TYPE_AT]
        _load(from_packet, event)
        from_packet.event_type = event_type
        body = len(event) - HEADER_LEN - (CHECKSUM_LEN if checksum else 0)
        made = _UNCOMPRESSED_CLASS[event_type](
            from_packet, body, table_map, ctl_connection, **kwargs
        )
        return made


class TransactionPayloadEvent(BinLogEvent):
    """Type 40, MySQL 8.0.20+: one transaction's events, compressed together.

    ``inner()`` yields ``(offset, event)`` for each event of the payload, in order, with
    ``offset`` its place in the uncompressed payload. Each inner event's packet carries this
    event's end position and size, so it starts where this event starts; table maps are
    recorded in the stream's table map as the stream itself does.
    """

    def __init__(
        self, from_packet: Any, event_size: int, table_map: Any, ctl_connection: Any, **kwargs: Any
    ) -> None:
        super().__init__(from_packet, event_size, table_map, ctl_connection, **kwargs)
        post_header = self._advance_to_payload(0)
        data = self.packet.read(event_size - post_header)
        fields: dict[int, int] = {}
        at = 0
        while True:
            if at >= len(data):
                raise CompressedEventError("transaction payload header has no end mark")
            field, at = _packed_int(data, at)
            if field == END_MARK:
                break
            length, at = _packed_int(data, at)
            if field in (PAYLOAD_SIZE, COMPRESSION_TYPE, UNCOMPRESSED_SIZE):
                fields[field], at = _packed_int(data, at)
            else:
                at += length  # a field added after 8.0.20: skipped, as MySQL's decoder does
        if PAYLOAD_SIZE not in fields or COMPRESSION_TYPE not in fields:
            raise CompressedEventError("transaction payload header lacks its size or compression")
        self.compression_type = fields[COMPRESSION_TYPE]
        self.payload_size = fields[PAYLOAD_SIZE]
        self.uncompressed_size = fields.get(UNCOMPRESSED_SIZE, self.payload_size)
        payload = data[at : at + self.payload_size]
        if len(payload) != self.payload_size:
            raise CompressedEventError(
                f"transaction payload of {self.payload_size} bytes has {len(payload)}"
            )
        self._payload = payload
        self._kwargs = kwargs

    def uncompressed(self) -> bytes:
        if self.compression_type == NONE:
            return bytes(self._payload)
        if self.compression_type != ZSTD:
            raise CompressedEventError(
                f"transaction payload compressed with unknown type {self.compression_type}"
            )
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(
                self._payload, read_across_frames=True
            )
            with reader:
                data = reader.read()
        except zstandard.ZstdError as exc:
            raise CompressedEventError(f"zstd stream does not decode ({exc})") from None
        if len(data) != self.uncompressed_size:
            raise CompressedEventError(
                f"transaction payload opened to {len(data)} bytes where "
                f"{self.uncompressed_size} were announced"
            )
        return data

    def inner(self) -> Iterator[tuple[int, BinLogEvent]]:
        data = self.uncompressed()
        kw = self._kwargs
        checksum = bool(kw.get("use_checksum"))
        outer = self.packet
        end = outer.log_pos.to_bytes(4, "little")
        at = 0
        while at < len(data):
            if len(data) - at < HEADER_LEN:
                raise CompressedEventError(f"transaction payload ends inside an event at {at}")
            size = int.from_bytes(data[at + SIZE_AT : at + SIZE_AT + 4], "little")
            if size < HEADER_LEN or at + size > len(data):
                raise CompressedEventError(f"inner event at {at} of size {size} overruns")
            head = bytearray(data[at : at + HEADER_LEN])
            # The stream expects a checksum when the server sends them: a zeroed one (only
            # checked when verify_checksum is on, which the relay never sets).
            head[SIZE_AT : SIZE_AT + 4] = (size + (CHECKSUM_LEN if checksum else 0)).to_bytes(
                4, "little"
            )
            head[END_AT : END_AT + 4] = end
            tail = b"\0" * CHECKSUM_LEN if checksum else b""
            body = data[at + HEADER_LEN : at + size]
            packet = MysqlPacket(b"\0" + bytes(head) + body + tail, None)
            wrapper = BinLogPacketWrapper(
                packet, self.table_map, self._ctl_connection, self.mysql_version, checksum,
                ALL_EVENTS, None, None, None, None, kw.get("freeze_schema", False),
                kw.get("ignore_decode_errors", False), False, kw.get("optional_meta_data", False),
                False, kw.get("use_column_name_cache", False), kw.get("post_header_lengths"),
            )  # fmt: skip
            made = wrapper.event
            if made is None and head[TYPE_AT] == TABLE_MAP_EVENT:
                at += size  # freeze_schema: a table already mapped keeps its first map
                continue
            if made is None:
                kind = head[TYPE_AT]
                raise CompressedEventError(
                    f"inner event of type {kind} at {at} of a transaction payload could not be "
                    "made (a rows event without its table map?)"
                )
            if made.event_type == TABLE_MAP_EVENT:
                self.table_map[made.table_id] = made.get_table()
            # Its start is the payload's start: every change it holds gets the payload's SCN.
            wrapper.event_size = outer.event_size
            yield at, made
            at += size


TABLE_MAP_EVENT = 19
EVENT_MAP_NAME = "_BinLogPacketWrapper__event_map"
# Inner events are all made, so that the reader sees every one (unknown ones included).
ALL_EVENTS: frozenset[type] = frozenset()


def apply() -> None:
    """Map the compressed types to the classes above in the library's event map."""
    global ALL_EVENTS
    event_map = getattr(BinLogPacketWrapper, EVENT_MAP_NAME)
    for event_type in MARIADB_UNCOMPRESSED:
        event_map[event_type] = MariadbCompressedEvent
    event_map[TRANSACTION_PAYLOAD_EVENT] = TransactionPayloadEvent
    ALL_EVENTS = frozenset(event_map.values()) | {NotImplementedEvent}
