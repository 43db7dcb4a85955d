"""Row images straight from a rows event's bytes, by a decoder compiled per table map.

python-mysql-replication decodes a row column by column through a chain of generic
readers (a type dispatch, a bitmap lookup and a packet read per value), and relay.values
then converts what it returns. That was most of the reader thread's CPU. Here each table
map layout gets one generated Python function that reads a whole row image from the
event's buffer: offsets advance by known widths, fixed-width values come from
precompiled ``struct`` readers, and every value is produced directly in its final JSON
form (the same functions relay.mysql_text and relay.values use, or the same
expressions).

A layout with a column type not handled here (MySQL's binary JSON, pre-5.6 temporal
types), an event with a partial column bitmap (binlog_row_image other than FULL), or a
row that does not decode to exactly the event's length, takes the library's path:
``event.rows`` and relay.values.row_converter, as before.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from pymysqlreplication.constants import FIELD_TYPE

from relay import values
from relay.mysql_text import (
    FRAC_BYTES,
    date_text,
    datetime2_text,
    text_decoder,
    time2_text,
    timestamp2_text,
)

if TYPE_CHECKING:
    from pymysqlreplication.column import Column

__all__ = ["RowDecoder", "decimal_reader", "layout_key"]

log = logging.getLogger(__name__)

Image = dict[str, Any]
# One row image from (buffer, offset): the image and the offset just past it.
ImageReader = Callable[[bytes, int], tuple[Image, int]]
Images = list[tuple[Image | None, Image | None]]

_FIXED = {
    # type: (struct code signed, struct code unsigned)
    FIELD_TYPE.TINY: ("b", "B"),
    FIELD_TYPE.SHORT: ("h", "H"),
    FIELD_TYPE.LONG: ("i", "I"),
    FIELD_TYPE.LONGLONG: ("q", "Q"),
    FIELD_TYPE.DOUBLE: ("d", "d"),
    FIELD_TYPE.FLOAT: ("f", "f"),
}
_STRUCT_SIZE = {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "q": 8, "Q": 8, "d": 8, "f": 4}
_LENGTH_PREFIXED = (FIELD_TYPE.BLOB, FIELD_TYPE.GEOMETRY)
_TEMPORAL = {
    FIELD_TYPE.DATETIME2: (5, datetime2_text),
    FIELD_TYPE.TIMESTAMP2: (4, timestamp2_text),
    FIELD_TYPE.TIME2: (3, time2_text),
}


def layout_key(columns: Sequence[Column]) -> tuple[Any, ...]:
    """Everything a compiled decoder (and row_converter) reads from a table map's columns."""
    return tuple(
        (
            column.name,
            column.type,
            column.unsigned,
            column.character_set_name,
            getattr(column, "max_length", None),
            getattr(column, "length_size", None),
            getattr(column, "fsp", None),
            getattr(column, "precision", None),
            getattr(column, "decimals", None),
            getattr(column, "bytes", None),
            getattr(column, "size", None),
            tuple(column.enum_values) if column.enum_values is not None else None,
            tuple(column.set_values) if column.set_values is not None else None,
        )
        for column in columns
    )


class RowDecoder:
    """Row images of one table map layout, as the change event's JSON values."""

    def __init__(self, columns: Sequence[Column], json_columns: Collection[str] = ()) -> None:
        self.convert = values.row_converter(columns, json_columns=json_columns)
        self.columns = len(columns)
        # The columns-present bitmap of a full row image: MariaDB leaves the last byte's
        # unused bits clear, MySQL sets them, so both forms count as full.
        self._full = frozenset({_full_bitmap(len(columns)), _padded_bitmap(len(columns))})
        self.read_image: ImageReader | None = compile_image_reader(columns, json_columns)
        self._warned = False

    def images(self, event: Any, op: str) -> Images:
        """(before, after) per row of a rows event, converted; None for the missing image."""
        body = self._body(event, op)
        if body is not None:
            try:
                return self._decode(*body, op)
            except Exception:  # the library's path decides, and raises
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "%s.%s: compiled row decoder failed; using the library's decoder",
                        event.schema,
                        event.table,
                        exc_info=True,
                    )
        return self._library_images(event, op)

    def _body(self, event: Any, op: str) -> tuple[bytes, int, int] | None:
        """The event's row data as (buffer, start, end), if the compiled reader applies."""
        if self.read_image is None or not event.complete:
            return None
        if (
            event.number_of_columns != self.columns
            or event.columns_present_bitmap not in self._full
        ):
            return None
        if op == "u" and event.columns_present_bitmap2 not in self._full:
            return None
        wrapper = event.packet
        if wrapper._BinLogPacketWrapper__data_buffer:  # bytes pushed back by a reader
            return None
        packet = wrapper.packet
        start = packet._position
        return packet._data, start, start + event.event_size - wrapper.read_bytes

    def _decode(self, data: bytes, p: int, end: int, op: str) -> Images:
        read = self.read_image
        assert read is not None
        images: Images = []
        append = images.append
        if op == "u":
            while p < end:
                before, p = read(data, p)
                after, p = read(data, p)
                append((before, after))
        elif op == "c":
            while p < end:
                after, p = read(data, p)
                append((None, after))
        else:
            while p < end:
                before, p = read(data, p)
                append((before, None))
        if p != end:
            raise ValueError(f"row images end at {p}, the event at {end}")
        return images

    def _library_images(self, event: Any, op: str) -> Images:
        convert = self.convert
        if op == "u":
            return [(convert(r["before_values"]), convert(r["after_values"])) for r in event.rows]
        if op == "c":
            return [(None, convert(r["values"])) for r in event.rows]
        return [(convert(r["values"]), None) for r in event.rows]


def _full_bitmap(count: int) -> bytes:
    bits = (1 << count) - 1
    return bits.to_bytes((count + 7) // 8, "little")


def _padded_bitmap(count: int) -> bytes:
    """Every bit of the bitmap's bytes set, as MySQL writes a full row image's."""
    return b"\xff" * ((count + 7) // 8)


def compile_image_reader(
    columns: Sequence[Column], json_columns: Collection[str] = ()
) -> ImageReader | None:
    """A function reading one full row image; None if a column type is not handled here."""
    names = [column.name for column in columns]
    if not all(names) or len(set(names)) != len(names):
        return None
    namespace: dict[str, Any] = {}
    nulls = (len(columns) + 7) // 8
    lines = ["def read_image(data, p):"]
    if nulls == 1:
        lines.append("    nulls = data[p]")
    else:
        lines.append(f"    nulls = int.from_bytes(data[p:p + {nulls}], 'little')")
    lines.append(f"    p += {nulls}")
    for i, column in enumerate(columns):
        body = _value_code(column, i, column.name in json_columns, namespace)
        if body is None:
            return None
        lines.append(f"    if nulls & {1 << i}:")
        lines.append(f"        v{i} = None")
        lines.append("    else:")
        lines.extend("        " + line for line in body)
    for i, name in enumerate(names):
        namespace[f"K{i}"] = name
    image = ", ".join(f"K{i}: v{i}" for i in range(len(columns)))
    lines.append(f"    return {{{image}}}, p")
    exec("\n".join(lines), namespace)  # our own code: names and labels stay in namespace
    return namespace["read_image"]


def _value_code(column: Column, i: int, is_json: bool, ns: dict[str, Any]) -> list[str] | None:
    """Lines that set v{i} to column i's non-NULL value at data[p:] and move p past it."""
    kind = column.type
    v = f"v{i}"
    if kind in _FIXED:
        code = _FIXED[kind][1 if column.unsigned else 0]
        ns[f"U{i}"] = struct.Struct("<" + code).unpack_from
        read = f"U{i}(data, p)[0]"
        if kind == FIELD_TYPE.FLOAT:
            ns["float32"] = values.float32
            read = f"float32({read})"
        return [f"{v} = {read}", f"p += {_STRUCT_SIZE[code]}"]
    if kind == FIELD_TYPE.INT24:
        return [f"{v} = int.from_bytes(data[p:p + 3], 'little', signed={not column.unsigned})",
                "p += 3"]  # fmt: skip
    if kind == FIELD_TYPE.YEAR:
        # Stored as year - 1900, and 0 for the year 0000 (values.year).
        return [f"{v} = data[p] and data[p] + 1900", "p += 1"]
    if kind == FIELD_TYPE.BIT:
        return [f"{v} = int.from_bytes(data[p:p + {column.bytes}], 'big')", f"p += {column.bytes}"]
    if kind == FIELD_TYPE.DATE:
        ns["date_text"] = date_text
        return [f"{v} = date_text(int.from_bytes(data[p:p + 3], 'little'))", "p += 3"]
    if kind in _TEMPORAL:
        width, text = _TEMPORAL[kind]
        width += FRAC_BYTES[column.fsp]
        ns[f"T{i}"] = text
        return [f"{v} = T{i}(data[p:p + {width}], {column.fsp})", f"p += {width}"]
    if kind == FIELD_TYPE.NEWDECIMAL:
        ns[f"D{i}"] = decimal_reader(column.precision, column.decimals)
        return [f"{v}, p = D{i}(data, p)"]
    if kind == FIELD_TYPE.ENUM:
        if column.size not in (1, 2):
            return None
        ns[f"L{i}"] = column.enum_values
        index = f"int.from_bytes(data[p:p + {column.size}], 'little')"
        # Without labels in the table map the library reads past the value and returns None.
        read = f"L{i}[{index}]" if column.enum_values else "None"
        return [f"{v} = {read}", f"p += {column.size}"]
    if kind == FIELD_TYPE.SET:
        ns[f"S{i}"] = _set_reader(column.set_values or [])
        return [f"{v} = S{i}(int.from_bytes(data[p:p + {column.size}], 'little'))",
                f"p += {column.size}"]  # fmt: skip
    if kind in (FIELD_TYPE.VARCHAR, FIELD_TYPE.STRING) or kind in _LENGTH_PREFIXED:
        if kind in _LENGTH_PREFIXED:
            width = column.length_size
        else:
            width = 2 if column.max_length > 255 else 1
        if width not in (1, 2, 3, 4):
            return None
        lines = [f"n = int.from_bytes(data[p:p + {width}], 'little')", f"p += {width}"]
        raw = "data[p:p + n]"
        decoder = text_decoder(column.character_set_name)
        if kind == FIELD_TYPE.GEOMETRY:
            ns["wkb_to_wkt"] = values.wkb_to_wkt
            read = f"wkb_to_wkt({raw})"
        elif decoder is not None and not is_json:
            ns[f"C{i}"], ns[f"E{i}"] = decoder
            read = f"{raw}.decode(C{i}, E{i})"
        else:
            converter = values.value_converter(column, is_json)
            ns[f"X{i}"] = converter
            read = f"X{i}({raw})"
        return [*lines, f"{v} = {read}", "p += n"]
    return None


def _set_reader(labels: Sequence[str]) -> Callable[[int], list[str]]:
    # As the library builds it (a set of the labels whose bit is on), then relay.values.
    convert = values.set_converter(labels)

    def read(mask: int) -> list[str]:
        return convert({label for bit, label in enumerate(labels) if mask & (1 << bit)})

    return read


_DIGITS_PER_INTEGER = 9
_COMPRESSED_BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def decimal_reader(precision: int, decimals: int) -> Callable[[bytes, int], tuple[str, int]]:
    """DECIMAL(precision, decimals) at data[p:]: its text with exactly ``decimals`` digits.

    The storage format is the library's __read_new_decimal (groups of 9 digits in 4
    big-endian bytes, the leftover digits in 1-4 bytes, all complemented when negative, the
    sign in the top bit); the text is what ``f"{Decimal(text):f}"`` makes of its string.
    """
    integral = precision - decimals
    uncomp_integral, comp_integral = divmod(integral, _DIGITS_PER_INTEGER)
    uncomp_fractional, comp_fractional = divmod(decimals, _DIGITS_PER_INTEGER)
    head = _COMPRESSED_BYTES[comp_integral]
    tail = _COMPRESSED_BYTES[comp_fractional]
    groups = struct.Struct(f">{uncomp_integral + uncomp_fractional}I")
    tail_at = head + groups.size
    size = tail_at + tail
    sign_bit = 0x80 << (8 * size - 8)
    all_ones = (1 << (8 * size)) - 1
    from_bytes = int.from_bytes
    group_text = "{:09d}".format
    tail_text = f"{{:0{comp_fractional}d}}".format

    def read(data: bytes, p: int) -> tuple[str, int]:
        raw = data[p : p + size]
        if len(raw) != size:
            raise ValueError("DECIMAL past the end of the event")
        # Flip the sign bit; a negative value is stored complemented: undo it.
        stored = from_bytes(raw, "big")
        positive = stored & sign_bit
        stored ^= sign_bit if positive else all_ones ^ sign_bit
        raw = stored.to_bytes(size, "big")
        parts = groups.unpack_from(raw, head)
        digits = str(from_bytes(raw[:head], "big")) if head else ""
        digits += "".join(map(group_text, parts[:uncomp_integral]))
        text = ("" if positive else "-") + (digits.lstrip("0") or "0")
        if decimals:
            text += "." + "".join(map(group_text, parts[uncomp_integral:]))
            if tail:
                text += tail_text(from_bytes(raw[tail_at:], "big"))
        return text, p + size

    return read
