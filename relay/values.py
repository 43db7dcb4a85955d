"""Column values of decoded binlog rows, turned into the JSON values of the change event."""

from __future__ import annotations

import base64
import datetime
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from pymysqlreplication.constants import FIELD_TYPE

from app.errors import DecodeError
from relay.mysql_text import text_decoder

if TYPE_CHECKING:
    from pymysqlreplication.column import Column

__all__ = [
    "convert_row",
    "converter_key",
    "float32",
    "mariadb_json_columns",
    "row_converter",
    "set_converter",
    "value_converter",
    "wkb_to_wkt",
]

RowConverter = Callable[[Mapping[str, Any]], dict[str, Any]]
ValueConverter = Callable[[Any], Any]

# MariaDB's JSON is LONGTEXT plus a column-level CHECK (json_valid(`col`)) named after the
# column; the binlog cannot tell it from LONGTEXT.
_MARIADB_JSON_COLUMNS_SQL = (
    "SELECT CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS"
    " WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s AND LEVEL = 'Column'"
    " AND CHECK_CLAUSE = CONCAT('json_valid(`', REPLACE(CONSTRAINT_NAME, '`', '``'), '`)')"
)

_F32 = struct.Struct("<f")
_ZERO_TIMESTAMP = datetime.datetime(1970, 1, 1)


def convert_row(
    columns: Sequence[Column],
    row: Mapping[str, Any],
    *,
    json_columns: Collection[str] = (),
) -> dict[str, Any]:
    """Turn one decoded row (column name -> value as pymysqlreplication returns it) into
    JSON-ready values per the spec, in column order."""
    return row_converter(columns, json_columns=json_columns)(row)


def row_converter(columns: Sequence[Column], *, json_columns: Collection[str] = ()) -> RowConverter:
    """Compile convert_row for one table map: dispatch on column types once, not per value."""
    names = [_column_name(column, i) for i, column in enumerate(columns)]
    plan = [
        (name, value_converter(column, name in json_columns))
        for name, column in zip(names, columns, strict=True)
    ]

    def convert(row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: value if (value := row[name]) is None or to_json is None else to_json(value)
            for name, to_json in plan
        }

    return convert


def converter_key(columns: Sequence[Column]) -> tuple[Any, ...]:
    """Everything row_converter reads from a table map: equal keys, interchangeable converters
    (for the same json_columns)."""
    return tuple(
        (
            column.name,
            column.type,
            column.character_set_name,
            getattr(column, "max_length", None),
            tuple(column.set_values or ()),
        )
        for column in columns
    )


def mariadb_json_columns(cursor: Any, schema: str, table: str) -> frozenset[str]:
    """The JSON columns of a MariaDB table, for row_converter's json_columns.

    MariaDB only: on MySQL the binlog types JSON columns itself and this query fails.
    """
    cursor.execute(_MARIADB_JSON_COLUMNS_SQL, (schema, table))
    return frozenset(name for (name,) in cursor.fetchall())


def _column_name(column: Column, index: int) -> str:
    # The same fallback pymysqlreplication uses when the table map carries no names.
    return column.name or f"UNKNOWN_COL{index}"


def value_converter(column: Column, is_json: bool) -> ValueConverter | None:
    """The converter for one column's non-NULL values; None where the value is final."""
    kind = column.type
    if kind in _IDENTITY_TYPES:
        return None
    if kind == FIELD_TYPE.YEAR:
        return _year
    if kind == FIELD_TYPE.FLOAT:
        return float32
    if kind == FIELD_TYPE.NEWDECIMAL:
        return _decimal
    if kind in _STRING_TYPES:
        return _string_converter(column, is_json)
    if kind == FIELD_TYPE.SET:
        return set_converter(column.set_values or [])
    if kind == FIELD_TYPE.TIMESTAMP:
        return _timestamp_v1
    if kind == FIELD_TYPE.JSON:
        return _mysql_json
    if kind == FIELD_TYPE.GEOMETRY:
        return wkb_to_wkt
    raise DecodeError(
        f"column {column.name!r} has binlog type {kind}, which aesop cannot decode; "
        "exclude the table or report the column type"
    )


# Integers and DOUBLE are already exact Python values; ENUM is its label; _pmr_patches
# reads BIT as an integer and temporal types as their final text.
_IDENTITY_TYPES = frozenset(
    {
        FIELD_TYPE.TINY,
        FIELD_TYPE.SHORT,
        FIELD_TYPE.INT24,
        FIELD_TYPE.LONG,
        FIELD_TYPE.LONGLONG,
        FIELD_TYPE.DOUBLE,
        FIELD_TYPE.ENUM,
        FIELD_TYPE.BIT,
        FIELD_TYPE.DATE,
        FIELD_TYPE.DATETIME,
        FIELD_TYPE.DATETIME2,
        FIELD_TYPE.TIME,
        FIELD_TYPE.TIME2,
        FIELD_TYPE.TIMESTAMP2,
    }
)
_STRING_TYPES = frozenset(
    {FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.BLOB}
)


def _year(value: int) -> int:
    # The binlog stores YEAR as value - 1900, and 0 for the year 0000.
    return 0 if value == 1900 else value


def float32(value: float) -> float:
    """The shortest decimal that reads back as the same FLOAT: 1.1, not 1.100000023841858.

    Up to 6 significant digits this is also what SELECT shows; beyond that SELECT rounds
    to 6 digits and loses the value, so we keep the digits needed to restore it.
    """
    target = _F32.pack(value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if _F32.pack(candidate) == target:
                return candidate
        except OverflowError:
            continue
    return value


def _decimal(value: Decimal) -> str:
    # pymysqlreplication builds the Decimal from all s stored digits, so "f" keeps them.
    return f"{value:f}"


def _timestamp_v1(value: datetime.datetime) -> str:
    # Pre-5.6 TIMESTAMP is read inline as utcfromtimestamp(seconds); 0 is the zero value.
    if value == _ZERO_TIMESTAMP:
        return "0000-00-00 00:00:00"
    return f"{value:%Y-%m-%d %H:%M:%S}"


def _string_converter(column: Column, is_json: bool) -> ValueConverter:
    decoder = text_decoder(column.character_set_name)
    if decoder is None:
        if column.type == FIELD_TYPE.STRING:
            # The binlog strips BINARY(n)'s trailing 0x00 padding; SELECT shows it.
            width = column.max_length
            return lambda value: base64.b64encode(value.ljust(width, b"\0")).decode("ascii")
        return _base64
    codec, errors = decoder
    if is_json:
        return lambda value: _json_text(value.decode(codec, errors))
    return lambda value: value.decode(codec, errors)


def _json_text(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # MariaDB's json_valid() accepts what orjson rejects (1E400, lone surrogate
        # escapes); the text itself is still lossless.
        return text


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def set_converter(labels: Sequence[str]) -> ValueConverter:
    order = tuple(labels)

    def convert(value: Collection[str]) -> list[str]:
        return [label for label in order if label in value]

    return convert


def _mysql_json(value: Any) -> Any:
    """MySQL binary JSON as pymysqlreplication decodes it (bytes keys and strings)."""
    if isinstance(value, dict):
        return {_mysql_json(k): _mysql_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mysql_json(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else str(value)
    return value


_WKT_NAMES = {
    1: "POINT",
    2: "LINESTRING",
    3: "POLYGON",
    4: "MULTIPOINT",
    5: "MULTILINESTRING",
    6: "MULTIPOLYGON",
    7: "GEOMETRYCOLLECTION",
}


def wkb_to_wkt(value: bytes) -> str:
    """MySQL's internal geometry (4-byte SRID + WKB) as the WKT that ST_AsText shows."""
    text, _ = _wkb(memoryview(value), 4)
    return text


def _wkb(data: memoryview, offset: int) -> tuple[str, int]:
    order = "<" if data[offset] == 1 else ">"
    (kind,) = struct.unpack_from(order + "I", data, offset + 1)
    offset += 5
    name = _WKT_NAMES.get(kind)
    if name is None:
        raise DecodeError(f"unknown WKB geometry type {kind}; report the GEOMETRY value")
    if kind == 1:
        body, offset = _points(data, offset, order, 1)
        return f"POINT({body})", offset
    if kind == 2:
        body, offset = _counted_points(data, offset, order)
        return f"LINESTRING({body})", offset
    if kind == 3:
        body, offset = _rings(data, offset, order)
        return f"POLYGON({body})", offset
    (count,) = struct.unpack_from(order + "I", data, offset)
    offset += 4
    parts = []
    for _ in range(count):
        part, offset = _wkb(data, offset)
        # Inside MULTI* the members drop their own type name: MULTIPOINT(1 1,2 2).
        parts.append(part if kind == 7 else part[part.index("(") :])
    if kind == 4:
        parts = [p[1:-1] for p in parts]
    if not parts:
        return f"{name} EMPTY", offset
    return f"{name}({','.join(parts)})", offset


def _points(data: memoryview, offset: int, order: str, count: int) -> tuple[str, int]:
    coords = struct.unpack_from(f"{order}{2 * count}d", data, offset)
    pairs = (
        f"{_wkt_number(coords[i])} {_wkt_number(coords[i + 1])}" for i in range(0, len(coords), 2)
    )
    return ",".join(pairs), offset + 16 * count


def _counted_points(data: memoryview, offset: int, order: str) -> tuple[str, int]:
    (count,) = struct.unpack_from(order + "I", data, offset)
    return _points(data, offset + 4, order, count)


def _rings(data: memoryview, offset: int, order: str) -> tuple[str, int]:
    (count,) = struct.unpack_from(order + "I", data, offset)
    offset += 4
    rings = []
    for _ in range(count):
        ring, offset = _counted_points(data, offset, order)
        rings.append(f"({ring})")
    return ",".join(rings), offset


def _wkt_number(value: float) -> str:
    """A coordinate as MariaDB prints it: shortest digits, plain notation for 1e-15..<1e15."""
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    while len(digits) > 1 and digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    magnitude = len(digits) + exponent - 1
    prefix = "-" if sign else ""
    if -15 <= magnitude < 15:
        return prefix + f"{Decimal((0, digits, exponent)):f}"
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{prefix}{mantissa}e{magnitude}"
