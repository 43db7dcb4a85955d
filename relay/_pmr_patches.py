"""Fixes to python-mysql-replication 1.0.17 row decoding, applied once on import."""

from __future__ import annotations

import codecs
import datetime
from typing import Any

from pymysqlreplication.constants import NONE_SOURCE
from pymysqlreplication.row_event import RowsEvent, TableMapEvent

# pymysqlreplication's readers are name-mangled privates; we replace them with readers
# that return what the server stored, because the originals lose information:
#  - strings are decoded with Python codecs that differ from MySQL's (utf16/utf32/ucs2
#    are big-endian in MySQL, latin1 is cp1252 plus five C1 controls) and crash on them;
#  - zero and partial-zero dates come back as None, indistinguishable from NULL;
#  - a zero TIMESTAMP comes back as 1970-01-01 00:00:00;
#  - negative TIME values with a fraction are off by up to one second;
#  - ENUM and SET labels are decoded as UTF-8 whatever the column charset ("" on failure);
#  - an empty SET comes back as None.
# Temporal values are returned as the final text, which also skips building datetimes.

_TIMEF_INT_OFS = 0x800000
_TIMEF_OFS = 0x800000000000
_DATETIMEF_INT_OFS = 0x8000000000
_EPOCH = datetime.datetime(1970, 1, 1)
_TWO_POW_32 = datetime.timedelta(seconds=1 << 32)

# pymysqlreplication's Charset.encoding names (MySQL charset names, except utf8mb3/utf8mb4
# -> "utf8", latin1 -> "cp1252", koi8r/koi8u -> koi8_r/koi8_u) mapped to Python codecs.
_CODECS = {
    "utf8": "utf-8",
    "cp1252": "cp1252",
    "ucs2": "utf-16-be",
    "utf16": "utf-16-be",
    "utf16le": "utf-16-le",
    "utf32": "utf-32-be",
    "macce": "mac-latin2",
    "eucjpms": "euc-jp",
}
_MYSQL_LATIN1_ERRORS = "aesop-mysql-latin1"


def _mysql_latin1_errors(exc: UnicodeError) -> tuple[str, int]:
    # MySQL's latin1 is cp1252 with 0x81 0x8D 0x8F 0x90 0x9D mapped to the C1 controls.
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error(_MYSQL_LATIN1_ERRORS, _mysql_latin1_errors)


def text_decoder(encoding: str | None) -> tuple[str, str] | None:
    """Python (codec, errors) for a column's pymysqlreplication encoding; None for binary."""
    if encoding is None:
        return "utf-8", "replace"
    if encoding == "binary":
        return None
    codec = _CODECS.get(encoding, encoding)
    if codec == "cp1252":
        return codec, _MYSQL_LATIN1_ERRORS
    try:
        codecs.lookup(codec)
    except LookupError:
        # dec8, hp8, swe7, keybcs2, armscii8, geostd8: no Python codec; latin-1 keeps
        # every byte and ASCII right.
        return "latin-1", "strict"
    return codec, "replace"


def _fraction(us: int, fsp: int) -> str:
    return "." + f"{us:06d}"[:fsp] if fsp else ""


# Bytes and microsecond scale of a DATETIME2/TIMESTAMP2/TIME2 fraction, by fsp.
FRAC_BYTES = (0, 1, 1, 2, 2, 3, 3)
_FRAC_SCALE = (0, 10000, 10000, 100, 100, 1, 1)

# The *_text functions below turn a value's stored bytes into its final text. The readers
# patched into RowsEvent use them, and so does relay.decoder, which reads rows itself.


def date_text(v: int) -> str:
    """DATE from its 3-byte little-endian integer."""
    return f"{v >> 9:04d}-{(v >> 5) & 15:02d}-{v & 31:02d}"


def datetime2_text(raw: bytes, fsp: int) -> str:
    """DATETIME2 from its 5 bytes plus FRAC_BYTES[fsp]."""
    packed = int.from_bytes(raw[:5], "big") - _DATETIMEF_INT_OFS
    us = int.from_bytes(raw[5:], "big") * _FRAC_SCALE[fsp]
    ymd, hms = packed >> 17, packed & 0x1FFFF
    ym = ymd >> 5
    return (
        f"{ym // 13:04d}-{ym % 13:02d}-{ymd & 31:02d} "
        f"{hms >> 12:02d}:{(hms >> 6) & 63:02d}:{hms & 63:02d}{_fraction(us, fsp)}"
    )


def timestamp_text(time: datetime.datetime, us: int, fsp: int) -> str:
    """TIMESTAMP2 from its seconds (read as a signed int, as utcfromtimestamp) and fraction."""
    # 0 seconds is the zero TIMESTAMP (valid ones start at 1 second).
    if time == _EPOCH:
        return "0000-00-00 00:00:00" + _fraction(0, fsp)
    if time < _EPOCH:
        time += _TWO_POW_32
    return f"{time:%Y-%m-%d %H:%M:%S}{_fraction(us, fsp)}"


def timestamp2_text(raw: bytes, fsp: int) -> str:
    """TIMESTAMP2 from its 4 bytes plus FRAC_BYTES[fsp]."""
    seconds = int.from_bytes(raw[:4], "big", signed=True)
    us = int.from_bytes(raw[4:], "big") * _FRAC_SCALE[fsp]
    return timestamp_text(datetime.datetime.utcfromtimestamp(seconds), us, fsp)


def time2_text(raw: bytes, fsp: int) -> str:
    """TIME2 from its 3 bytes plus FRAC_BYTES[fsp].

    Mirrors MySQL's my_time_packed_from_binary: negative values store the fraction
    complemented, so the integer part is shifted by one.
    """
    if fsp == 0:
        packed = (int.from_bytes(raw, "big") - _TIMEF_INT_OFS) << 24
    elif fsp <= 4:
        intpart = int.from_bytes(raw[:3], "big") - _TIMEF_INT_OFS
        frac = int.from_bytes(raw[3:], "big")
        if intpart < 0 and frac:
            intpart += 1
            frac -= 0x100 if fsp <= 2 else 0x10000
        packed = (intpart << 24) + frac * _FRAC_SCALE[fsp]
    else:
        packed = int.from_bytes(raw, "big") - _TIMEF_OFS
    sign = "-" if packed < 0 else ""
    packed = abs(packed)
    hms, us = packed >> 24, packed & 0xFFFFFF
    return (
        f"{sign}{(hms >> 12) % 1024:02d}:{(hms >> 6) % 64:02d}:{hms % 64:02d}{_fraction(us, fsp)}"
    )


def _read_frac(packet: Any, fsp: int) -> int:
    """Microseconds of a non-negative DATETIME2/TIMESTAMP2 fraction."""
    return int.from_bytes(packet.read(FRAC_BYTES[fsp]), "big") * _FRAC_SCALE[fsp]


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
_TABLE_MAP_PATCHES = {
    "_read_type_values": _read_type_values,
    "_sync_column_info": _sync_column_info,
}


def _apply() -> None:
    for cls, patches in ((RowsEvent, _ROWS_EVENT_PATCHES), (TableMapEvent, _TABLE_MAP_PATCHES)):
        for name, function in patches.items():
            if not hasattr(cls, name):
                raise ImportError(
                    f"pymysqlreplication.{cls.__name__} has no {name}; relay/_pmr_patches.py "
                    "targets mysql-replication 1.0.17, pin that version or update the patches"
                )
            setattr(cls, name, function)


_apply()
