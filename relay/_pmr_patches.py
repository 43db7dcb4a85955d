"""Fixes to python-mysql-replication row decoding: the library's readers, replaced.

Only ``apply()`` changes the library, once per process, at worker start (and when a binlog
reader is made, for tools that read without a worker). It first checks that the installed
version is one these patches were written for, and stops with one line if not: they replace
name-mangled private methods, which any other version may have changed.
"""

from __future__ import annotations

import datetime
import struct
from importlib import metadata
from typing import Any

from pymysqlreplication import binlogstream
from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE
from pymysqlreplication.event import BinLogEvent, QueryEvent
from pymysqlreplication.exceptions import MalformedBinLogEvent, StatusVariableMismatch
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import RowsEvent, TableMapEvent

from app.errors import LibraryVersionError
from relay import compressed
from relay.mysql_text import (
    FRAC_BYTES,
    FRAC_SCALE,
    date_text,
    datetime2_text,
    text_decoder,
    time2_text,
    timestamp_text,
)

DISTRIBUTION = "mysql-replication"
# The versions whose RowsEvent and TableMapEvent privates these patches were checked against.
SUPPORTED_VERSIONS = ("1.0.17",)

# pymysqlreplication's readers are name-mangled privates; we replace them with readers
# that return what the server stored, because the originals lose information:
#  - strings are decoded with Python codecs that differ from MySQL's (utf16/utf32/ucs2
#    are big-endian in MySQL, latin1 is cp1252 plus five C1 controls) and crash on them;
#  - zero and partial-zero dates come back as None, indistinguishable from NULL;
#  - a zero TIMESTAMP comes back as 1970-01-01 00:00:00;
#  - negative TIME values with a fraction are off by up to one second;
#  - ENUM and SET labels are decoded as UTF-8 whatever the column charset ("" on failure);
#  - an empty SET comes back as None;
#  - on MySQL, UNSIGNED flags after a YEAR column go to the wrong columns (below).
# Temporal values are returned as the final text, which also skips building datetimes.


def _read_frac(packet: Any, fsp: int) -> int:
    """Microseconds of a non-negative DATETIME2/TIMESTAMP2 fraction."""
    return int.from_bytes(packet.read(FRAC_BYTES[fsp]), "big") * FRAC_SCALE[fsp]


def _read_string(self: RowsEvent, size: int, column: Any) -> bytes:
    return bytes(self.packet.read_length_coded_pascal_string(size))


def _read_bit(self: RowsEvent, column: Any) -> int:
    return int.from_bytes(self.packet.read(column.bytes), "big")


def _read_date(self: RowsEvent) -> str:
    return date_text(self.packet.read_uint24())


def _read_datetime(self: RowsEvent) -> str:
    date, time = divmod(self.packet.read_uint64(), 1000000)
    return (
        f"{date // 10000:04d}-{date // 100 % 100:02d}-{date % 100:02d} "
        f"{time // 10000:02d}:{time // 100 % 100:02d}:{time % 100:02d}"
    )


def _read_datetime2(self: RowsEvent, column: Any) -> str:
    return datetime2_text(self.packet.read(5 + FRAC_BYTES[column.fsp]), column.fsp)


def _read_time(self: RowsEvent) -> str:
    v = int.from_bytes(self.packet.read(3), "little", signed=True)
    sign = "-" if v < 0 else ""
    v = abs(v)
    return f"{sign}{v // 10000:02d}:{v // 100 % 100:02d}:{v % 100:02d}"


def _read_time2(self: RowsEvent, column: Any) -> str:
    return time2_text(self.packet.read(3 + FRAC_BYTES[column.fsp]), column.fsp)


def _add_fsp_to_time(self: RowsEvent, time: datetime.datetime, column: Any) -> str:
    # Only TIMESTAMP2 reaches here once DATETIME2 is replaced.
    return timestamp_text(time, _read_frac(self.packet, column.fsp), column.fsp)


def _read_type_values(self: TableMapEvent, length: int) -> list[list[bytes]]:
    # Keep the raw label bytes; _sync_column_info below decodes them in the column charset.
    result = []
    read_until = self.packet.read_bytes + length
    while self.packet.read_bytes < read_until:
        count = self.packet.read_length_coded_binary()
        result.append([bytes(self.packet.read_variable_length_string()) for _ in range(count)])
    return result


def _decode_labels(labels: list[Any], encoding: str | None) -> list[str]:
    decoder = text_decoder(encoding) or ("latin-1", "strict")
    return [x.decode(*decoder) if isinstance(x, bytes) else x for x in labels]


_orig_sync_column_info = TableMapEvent._sync_column_info


def _sync_column_info(self: TableMapEvent) -> None:
    _orig_sync_column_info(self)
    for column in self.columns:
        if column.enum_values:
            column.enum_values = _decode_labels(column.enum_values, column.character_set_name)
        if column.set_values:
            column.set_values = _decode_labels(column.set_values, column.character_set_name)


_orig_read_column_data = RowsEvent._read_column_data
_EMPTY_SET: frozenset[str] = frozenset()


def _read_column_data(self: RowsEvent, cols_bitmap: Any, row_image_type: Any = None) -> Any:
    values = _orig_read_column_data(self, cols_bitmap, row_image_type)
    # Every None read in this row records its reason afresh, so a stale entry from an
    # earlier row never matches a None of this one.
    sources = self._RowsEvent__none_sources
    if sources:
        for name, source in sources.items():
            if source == NONE_SOURCE.EMPTY_SET and values.get(name, 0) is None:
                values[name] = _EMPTY_SET
    return values


_ROWS_EVENT_PATCHES = {
    "_RowsEvent__read_string": _read_string,
    "_RowsEvent__read_bit": _read_bit,
    "_RowsEvent__read_date": _read_date,
    "_RowsEvent__read_datetime": _read_datetime,
    "_RowsEvent__read_datetime2": _read_datetime2,
    "_RowsEvent__read_time": _read_time,
    "_RowsEvent__read_time2": _read_time2,
    "_RowsEvent__add_fsp_to_time": _add_fsp_to_time,
    "_read_column_data": _read_column_data,
}
# The column types the SIGNEDNESS metadata of a table map has one bit for, in column order.
# MariaDB gives YEAR a bit (its Field_year is a Field_tiny); MySQL does not (its
# is_numeric_type), so counting YEAR on MySQL shifts every later flag to the next numeric
# column: BIGINT UNSIGNED 18446744073709551615 after a YEAR came out as -1.
_MYSQL_SIGNEDNESS = frozenset(
    (FIELD_TYPE.TINY, FIELD_TYPE.SHORT, FIELD_TYPE.INT24, FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG,
     FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.FLOAT, FIELD_TYPE.DOUBLE)
)  # fmt: skip
_SIGNEDNESS_TYPES = {"mysql": _MYSQL_SIGNEDNESS, "mariadb": _MYSQL_SIGNEDNESS | {FIELD_TYPE.YEAR}}


def _is_numeric_column(self: TableMapEvent, column_type: int) -> bool:
    """Whether the column has a bit in the SIGNEDNESS metadata, on this server's flavour."""
    flavour = "mariadb" if self.dbms == "mariadb" else "mysql"
    return column_type in _SIGNEDNESS_TYPES[flavour]


_TABLE_MAP_PATCHES = {
    "_read_type_values": _read_type_values,
    "_sync_column_info": _sync_column_info,
    "_is_numeric_column": _is_numeric_column,
}


def _query_event_init(
    self: Any, from_packet: Any, event_size: int, table_map: Any, ctl_connection: Any, **kwargs: Any
) -> None:
    """QueryEvent.__init__, but a status variable newer than the library (MariaDB 11.2+ logs
    its character set collations in DDL such as ``CREATE TABLE ... CHARACTER SET ascii``)
    skips the rest of the status block, whose length the event gives, instead of failing the
    event (the library then stops on every read of it, and the relay with it). aesop reads
    only the query text of query events."""
    BinLogEvent.__init__(self, from_packet, event_size, table_map, ctl_connection, **kwargs)
    packet = self.packet
    self.slave_proxy_id = packet.read_uint32()
    self.execution_time = packet.read_uint32()
    self.schema_length = struct.unpack("!B", packet.read(1))[0]
    self.error_code = packet.read_uint16()
    self.status_vars_length = packet.read_uint16()
    post_header_len = self._advance_to_payload(13)
    end = packet.read_bytes + self.status_vars_length
    while packet.read_bytes < end:
        key = packet.read_uint8()
        try:
            self._read_status_vars_value_for_key(key)
        except StatusVariableMismatch:
            packet.advance(end - packet.read_bytes)
    self.schema = packet.read(self.schema_length)
    packet.advance(1)
    query_len = event_size - post_header_len - self.status_vars_length - self.schema_length - 1
    if query_len < 0:
        raise MalformedBinLogEvent(
            f"QueryEvent payload length is negative after applying post-header length "
            f"{post_header_len}"
        )
    self.query = packet.read(query_len).decode("utf-8", errors="backslashreplace")


_QUERY_EVENT_PATCHES = {"__init__": _query_event_init}


_applied = False


def check_version(installed: str | None = None) -> None:
    """Raise LibraryVersionError unless the installed library is a supported version."""
    if installed is None:
        try:
            installed = metadata.version(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            installed = "none"
    if installed not in SUPPORTED_VERSIONS:
        raise LibraryVersionError(
            f"{DISTRIBUTION} {installed} is installed, but aesop's binlog decoding was written "
            f"for {', '.join(SUPPORTED_VERSIONS)}; install that (pip install -r requirements.lock)"
        )


def apply() -> None:
    """Replace the library's readers (once), after checking its version."""
    global _applied
    if _applied:
        return
    check_version()
    patched = (
        (RowsEvent, _ROWS_EVENT_PATCHES),
        (TableMapEvent, _TABLE_MAP_PATCHES),
        (QueryEvent, _QUERY_EVENT_PATCHES),
    )
    for cls, patches in patched:
        for name in patches:
            if not hasattr(cls, name):
                raise LibraryVersionError(
                    f"pymysqlreplication.{cls.__name__} has no {name}; relay/_pmr_patches.py "
                    f"targets {DISTRIBUTION} {', '.join(SUPPORTED_VERSIONS)}: install that"
                )
    for cls, patches in patched:
        for name, function in patches.items():
            setattr(cls, name, function)
    # On a lost connection (2006, 2013) the library reconnects by itself: at once, from its
    # last event (mid-transaction too), with a multi-line warning. An empty list hands these
    # errors to the relay, which reconnects with backoff from a transaction boundary.
    binlogstream.MYSQL_EXPECTED_ERROR_CODES = []
    # Compressed events (MariaDB log_bin_compress, MySQL binlog_transaction_compression)
    # come out as the ordinary events they hold.
    compressed.apply()
    _applied = True


def event_map() -> dict[int, type]:
    """The library's binlog event type -> class map (after ``apply``, with ours in it)."""
    return dict(getattr(BinLogPacketWrapper, compressed.EVENT_MAP_NAME))
