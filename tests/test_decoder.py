"""relay.decoder without a server: DECIMAL storage, and when the library's path takes over.

tests/test_values.py checks the compiled reader against the library on real binlog rows.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
from pymysql.protocol import MysqlPacket
from pymysqlreplication.column import Column
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.packet import BinLogPacketWrapper
from pymysqlreplication.row_event import RowsEvent

from relay.decoder import RowDecoder, compile_image_reader, decimal_reader


@pytest.mark.parametrize(
    ("precision", "decimals", "stored", "text"),
    [
        # The example of MySQL's decimal2bin documentation, and its negation.
        (14, 4, "810dfb38d204d2", "1234567890.1234"),
        (14, 4, "7ef204c72dfb2d", "-1234567890.1234"),
        (5, 2, "807b2d", "123.45"),
        (5, 2, "7f84d2", "-123.45"),
        (2, 2, "80", "0.00"),
        (5, 0, "800000", "0"),
        (3, 3, "8001", "0.001"),
    ],
)
def test_decimal_reader_reads_mysql_storage(
    precision: int, decimals: int, stored: str, text: str
) -> None:
    data = b"\xaa" + bytes.fromhex(stored) + b"\xbb"
    assert decimal_reader(precision, decimals)(data, 1) == (text, 1 + len(stored) // 2)


def _stored_decimal(rng: random.Random, precision: int, decimals: int) -> bytes:
    """A random DECIMAL(precision, decimals) value as MySQL stores it (decimal2bin)."""
    widths = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
    integral, fractional = divmod(precision - decimals, 9), divmod(decimals, 9)
    pieces = [(widths[integral[1]], integral[1])] + [(4, 9)] * integral[0]
    pieces += [(4, 9)] * fractional[0] + [(widths[fractional[1]], fractional[1])]
    stored = b"".join(
        rng.choice([0, 10**digits - 1, rng.randrange(10**digits)]).to_bytes(width, "big")
        for width, digits in pieces
        if width
    )
    number = int.from_bytes(stored, "big") | 0x80 << (8 * len(stored) - 8)
    if rng.random() < 0.5:
        number ^= (1 << (8 * len(stored))) - 1
    return number.to_bytes(len(stored), "big")


def _library_decimal(stored: bytes, precision: int, decimals: int) -> str:
    """What python-mysql-replication reads from ``stored``, as relay.values shows it."""
    wrapper = object.__new__(BinLogPacketWrapper)
    wrapper.packet = MysqlPacket(stored, "utf8")
    wrapper.read_bytes = 0
    wrapper._BinLogPacketWrapper__data_buffer = b""
    event = SimpleNamespace(packet=wrapper)
    column = SimpleNamespace(precision=precision, decimals=decimals)
    return f"{RowsEvent._RowsEvent__read_new_decimal(event, column):f}"


@pytest.mark.parametrize(
    ("precision", "decimals"),
    [(1, 0), (2, 2), (5, 2), (9, 9), (10, 0), (12, 2), (18, 9), (19, 10), (38, 17), (65, 30)],
)
def test_decimal_reader_agrees_with_the_library(precision: int, decimals: int) -> None:
    rng = random.Random(precision * 100 + decimals)
    read = decimal_reader(precision, decimals)
    for _ in range(500):
        stored = _stored_decimal(rng, precision, decimals)
        assert read(stored, 0) == (_library_decimal(stored, precision, decimals), len(stored))


def _column(kind: int, name: str, **extra: Any) -> Column:
    fields = {"type": kind, "name": name, "unsigned": False, "character_set_name": None}
    fields |= {"enum_values": None, "set_values": None}
    return Column(**(fields | extra))


INT_COLUMNS = [_column(FIELD_TYPE.LONG, "id"), _column(FIELD_TYPE.TINY, "t", unsigned=True)]


@pytest.mark.parametrize(
    "column",
    [
        _column(FIELD_TYPE.DATETIME, "old_datetime"),
        _column(FIELD_TYPE.JSON, "mysql_json", length_size=4),
        _column(FIELD_TYPE.LONG, ""),  # no name in the table map
    ],
)
def test_layouts_it_does_not_handle_are_left_to_the_library(column: Column) -> None:
    assert compile_image_reader([*INT_COLUMNS, column]) is None


def _event(body: bytes, rows: list[dict[str, Any]], bitmap: bytes = b"\x03") -> Any:
    """A write rows event of INT_COLUMNS whose row data is ``body``."""
    packet = SimpleNamespace(_data=b"header" + body, _position=6)
    wrapper = SimpleNamespace(packet=packet, read_bytes=10, _BinLogPacketWrapper__data_buffer=b"")
    return SimpleNamespace(
        complete=True,
        number_of_columns=2,
        columns_present_bitmap=bitmap,
        packet=wrapper,
        event_size=10 + len(body),
        rows=rows,
        schema="db",
        table="t",
    )


def _row(nulls: int, *fields: bytes) -> bytes:
    return bytes([nulls]) + b"".join(fields)


LIBRARY = [{"values": {"id": "from", "t": "the library"}}]


@pytest.mark.parametrize("bitmap", [b"\x03", b"\xff"], ids=["mariadb", "mysql"])
def test_reads_row_images_from_the_event_bytes(bitmap: bytes) -> None:
    """A full image's columns-present bitmap: MariaDB clears the unused bits, MySQL sets them."""
    body = _row(0, (-5).to_bytes(4, "little", signed=True), b"\xff") + _row(2, b"\x07\0\0\0")
    images = RowDecoder(INT_COLUMNS).images(_event(body, LIBRARY, bitmap), "c")
    assert images == [(None, {"id": -5, "t": 255}), (None, {"id": 7, "t": None})]


def test_a_partial_row_image_takes_the_library_path() -> None:
    body = _row(0, b"\x07\0\0\0")  # MINIMAL image: only the id
    images = RowDecoder(INT_COLUMNS).images(_event(body, LIBRARY, bitmap=b"\x01"), "d")
    assert images == [({"id": "from", "t": "the library"}, None)]


def test_rows_that_miss_the_event_end_take_the_library_path(caplog: Any) -> None:
    body = _row(0, b"\x07\0\0\0", b"\x01") + b"\0"  # a stray byte after the last row
    images = RowDecoder(INT_COLUMNS).images(_event(body, LIBRARY), "c")
    assert images == [(None, {"id": "from", "t": "the library"})]
    assert "compiled row decoder failed" in caplog.text
