"""Rows read by SELECT for a snapshot, as the same JSON values the binlog path gives.

A snapshot reads each table in primary-key chunks (``SELECT ... WHERE pk > last ORDER BY pk
LIMIT n``). Its ``op: "r"`` events must carry exactly the values a ``c`` event of the same
row would (spec, "Column values"), so each column is selected in a form whose text protocol
rendering converts losslessly, through the converters the binlog path uses where they apply:

- the text protocol already shows most types as the spec wants them (DECIMAL with its scale,
  dates and times with their fraction digits and zero dates, TIMESTAMP in the session's
  time zone, which the snapshot connection sets to UTC, ENUM labels, SET labels in definition
  order); strings come converted by the server from the column's charset;
- FLOAT is selected as ``col + 0e0`` (the exact single-precision value, as a double) and put
  through ``values.float32``, because SELECT rounds FLOAT itself to 6 significant digits;
- BIT, the binary string types and GEOMETRY come as the stored bytes (the connection returns
  bytes for binary-charset fields), turned into an integer, base64 and WKT as in the binlog.

Nothing here runs a query: ``describe`` takes a cursor (on a thread: PyMySQL blocks).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from app.errors import DecodeError, SourceError
from relay import values

__all__ = ["MissingTable", "SnapshotTable", "describe", "quote"]

Raw = bytes | str
Convert = Callable[[Raw], Any]

_COLUMNS_SQL = (
    "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS"
    " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION"
)
_PRIMARY_KEY_SQL = (
    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = %s"
    " AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION"
)
_ESTIMATE_SQL = (
    "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
)
# MySQL 8 answers information_schema.TABLES from statistics cached for a day by default: a
# table filled since would show 0 rows. Where the variable exists, ask for fresh ones.
FRESH_STATISTICS = "SET SESSION information_schema_stats_expiry = 0"


def estimated_rows(cursor: Any, db: str, table: str) -> int | None:
    """The server's estimate of the table's rows (InnoDB's is within tens of percent); None
    where it has none."""
    cursor.execute(_ESTIMATE_SQL, (db, table))
    found = cursor.fetchone()
    return None if found is None or found[0] is None else int(found[0])


# Session settings of a snapshot connection: TIMESTAMP shown in UTC, as the binlog path
# renders it.
SESSION = ("SET time_zone = '+00:00'",)


def _text(raw: Raw) -> str:
    return raw.decode("ascii") if isinstance(raw, bytes) else raw


def _integer(raw: Raw) -> int:
    return int(raw)


def _double(raw: Raw) -> float:
    return float(raw)


def _float(raw: Raw) -> float:
    return values.float32(float(raw))


def _year(raw: Raw) -> int:
    return int(raw)


def _bit(raw: Raw) -> int:
    data = raw if isinstance(raw, bytes) else raw.encode("latin-1")
    return int.from_bytes(data, "big")


def _bytes(raw: Raw) -> str:
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def _string(raw: Raw) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def _set(raw: Raw) -> list[str]:
    text = _string(raw)
    return text.split(",") if text else []


def _mysql_json(raw: Raw) -> Any:
    return orjson.loads(raw)


def _mariadb_json(raw: Raw) -> Any:
    text = _string(raw)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # as the binlog path: json_valid() accepts what orjson rejects


def _geometry(raw: Raw) -> str:
    data = raw if isinstance(raw, bytes) else raw.encode("latin-1")
    return values.wkb_to_wkt(data)


_INTEGERS = ("tinyint", "smallint", "mediumint", "int", "integer", "bigint")
_TEXTS = ("char", "varchar", "tinytext", "text", "mediumtext", "longtext")
_BINARIES = ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob")
_TEMPORALS = ("date", "datetime", "timestamp", "time")
_GEOMETRIES = (
    "geometry",
    "point",
    "linestring",
    "polygon",
    "multipoint",
    "multilinestring",
    "multipolygon",
    "geometrycollection",
    "geomcollection",
)
_CONVERTERS: dict[str, Convert] = {
    **dict.fromkeys(_INTEGERS, _integer),
    **dict.fromkeys(_TEXTS, _string),
    **dict.fromkeys(_BINARIES, _bytes),
    **dict.fromkeys(_TEMPORALS, _text),
    **dict.fromkeys(_GEOMETRIES, _geometry),
    "decimal": _text,
    "numeric": _text,
    "float": _float,
    "double": _double,
    "real": _double,
    "bit": _bit,
    "enum": _string,
    "set": _set,
    "year": _year,
    "json": _mysql_json,
}


class MissingTable(SourceError):
    """The table to snapshot does not exist (any more), or this user cannot see it."""


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True)
class SnapshotTable:
    """How to read one table's rows in key order, and turn them into change-event rows."""

    db: str
    table: str
    columns: tuple[str, ...]
    pk: tuple[str, ...]
    converters: tuple[Convert, ...]
    select: str  # SELECT <columns> FROM <table>, without WHERE, ORDER BY or LIMIT

    @property
    def keyed(self) -> bool:
        return bool(self.pk)

    def chunk_sql(self, after: Sequence[Any] | None, limit: int) -> tuple[str, list[Any]]:
        """The next chunk: up to ``limit`` rows whose key sorts after ``after`` (the last
        chunk's last key, as ``key_of`` gave it; None for the first chunk).

        Written as ``a > x OR (a = x AND b > y)`` rather than a row constructor, which not
        every server version turns into an index range."""
        if not self.pk:
            return self.select, []
        order = ", ".join(quote(name) for name in self.pk)
        if after is None:
            return f"{self.select} ORDER BY {order} LIMIT {int(limit)}", []
        terms, args = [], []
        for i, name in enumerate(self.pk):
            equal = [f"{quote(prior)} = %s" for prior in self.pk[:i]]
            terms.append("(" + " AND ".join([*equal, f"{quote(name)} > %s"]) + ")")
            args.extend([*after[:i], after[i]])
        where = " OR ".join(terms)
        return f"{self.select} WHERE {where} ORDER BY {order} LIMIT {int(limit)}", args

    def row(self, raw: Sequence[Raw | None]) -> dict[str, Any]:
        """One fetched row as the change event's ``after``."""
        return {
            name: None if value is None else convert(value)
            for name, convert, value in zip(self.columns, self.converters, raw, strict=True)
        }

    def key_of(self, raw: Sequence[Raw | None]) -> list[Any]:
        """The values to continue after this row, as the server compares them: the raw
        fetched values of the key columns (text, or bytes for binary keys)."""
        index = {name: i for i, name in enumerate(self.columns)}
        return [raw[index[name]] for name in self.pk]


def describe(cursor: Any, db: str, table: str, mariadb: bool) -> SnapshotTable:
    """Read the table's columns and primary key; fail in one line on a type we cannot
    render as the binlog path does."""
    cursor.execute(_COLUMNS_SQL, (db, table))
    found = [(str(name), str(kind).lower()) for name, kind in cursor.fetchall()]
    if not found:
        raise MissingTable(f"snapshot: table {db}.{table} does not exist or cannot be read")
    cursor.execute(_PRIMARY_KEY_SQL, (db, table))
    pk = tuple(str(name) for (name,) in cursor.fetchall())
    json_columns = values.mariadb_json_columns(cursor, db, table) if mariadb else frozenset()
    converters: list[Convert] = []
    expressions: list[str] = []
    for name, kind in found:
        convert = _CONVERTERS.get(kind)
        if convert is None:
            raise DecodeError(
                f"snapshot: column {db}.{table}.{name} has type {kind}, which aesop cannot "
                "snapshot; exclude the table from the snapshot or report the type"
            )
        if name in json_columns:
            convert = _mariadb_json
        converters.append(convert)
        expressions.append(f"({quote(name)} + 0e0)" if kind == "float" else quote(name))
    select = f"SELECT {', '.join(expressions)} FROM {quote(db)}.{quote(table)}"
    return SnapshotTable(db, table, tuple(n for n, _ in found), pk, tuple(converters), select)
