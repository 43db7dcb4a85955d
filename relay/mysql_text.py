"""MySQL's stored forms of strings and temporal values, as text: pure functions.

The python-mysql-replication readers patched in ``relay._pmr_patches`` use them, and so does
``relay.decoder``, which reads rows itself; nothing here imports that library.
"""

from __future__ import annotations

import codecs
import datetime

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
FRAC_SCALE = (0, 10000, 10000, 100, 100, 1, 1)


def date_text(v: int) -> str:
    """DATE from its 3-byte little-endian integer."""
    return f"{v >> 9:04d}-{(v >> 5) & 15:02d}-{v & 31:02d}"


def datetime2_text(raw: bytes, fsp: int) -> str:
    """DATETIME2 from its 5 bytes plus FRAC_BYTES[fsp]."""
    packed = int.from_bytes(raw[:5], "big") - _DATETIMEF_INT_OFS
    us = int.from_bytes(raw[5:], "big") * FRAC_SCALE[fsp]
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
    us = int.from_bytes(raw[4:], "big") * FRAC_SCALE[fsp]
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
        packed = (intpart << 24) + frac * FRAC_SCALE[fsp]
    else:
        packed = int.from_bytes(raw, "big") - _TIMEF_OFS
    sign = "-" if packed < 0 else ""
    packed = abs(packed)
    hms, us = packed >> 24, packed & 0xFFFFFF
    return (
        f"{sign}{(hms >> 12) % 1024:02d}:{(hms >> 6) % 64:02d}:{hms % 64:02d}{_fraction(us, fsp)}"
    )
