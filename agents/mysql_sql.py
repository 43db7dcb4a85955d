"""The destination side of ``handler = "mysql"``, as pure functions: its tables and columns,
what each change does to them, and the SQL text for that. No connection here: values are
turned into SQL literals by an ``escape`` function (the connection's, when applying).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from agents.handlers import Change
from app.errors import AesopError

STATEMENT_BYTES = 1 << 20  # well under every max_allowed_packet default

BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
GEOMETRY_TYPES = frozenset(
    {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
     "multipolygon", "geometrycollection", "geomcollection"}
)  # fmt: skip
TEXT_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext"})


class DestinationError(AesopError):
    """The destination cannot take a change as it is (missing table or column, bad value)."""


def quote(name: str) -> str:
    """An identifier in backticks, backticks inside it doubled."""
    return "`" + name.replace("`", "``") + "`"


@dataclass(frozen=True, slots=True)
class Column:
    """How to write one destination column: its SQL value and its row-matching condition."""

    name: str
    kind: str  # information_schema DATA_TYPE, or "json" for MariaDB's JSON
    charset: str | None

    def convert(self, value: Any) -> Any:
        """The JSON form of the change event back to what PyMySQL escapes for this column."""
        if value is None:
            return None
        kind = self.kind
        if kind in BINARY_TYPES:
            return base64.b64decode(value, validate=True)
        if kind == "set" and isinstance(value, list):
            return ",".join(value)
        if kind == "json":
            return orjson.dumps(value).decode()
        return value

    def value_sql(self, literal: str) -> str:
        if self.kind in GEOMETRY_TYPES:
            return f"ST_GeomFromText({literal})"
        return literal

    def match_sql(self, literal: str, exact: bool) -> str:
        """``column = value``; ``exact`` compares text case- and accent-sensitively (for
        tables without a primary key, where the collation must not pick another row)."""
        column = quote(self.name)
        value = self.value_sql(literal)
        if literal == "NULL":
            pass
        elif self.kind == "float":
            # A FLOAT column holds the single-precision value; compare with one, not a double.
            value = f"CAST({literal} AS FLOAT)"
        elif self.kind == "json" and self.charset is None:
            value = f"CAST({literal} AS JSON)"  # MySQL's JSON type compares as JSON
        elif exact and self.kind in TEXT_TYPES and self.charset:
            cs = self.charset
            value = f"CONVERT({literal} USING {cs}) COLLATE {cs}_bin"
        return f"{column} <=> {value}"


@dataclass(frozen=True, slots=True)
class Table:
    """A destination table: its qualified name and its columns by name."""

    name: str  # `db`.`table`
    columns: dict[str, Column]

    def column(self, name: str) -> Column:
        column = self.columns.get(name)
        if column is None:
            raise DestinationError(f"destination table {self.name} has no column {quote(name)}")
        return column


# One statement-to-be: what kind, on which table, and a signature that tells which
# consecutive steps can share one statement.
Step = tuple[str, Table, tuple[str, ...], dict[str, Any]]


Escape = Callable[[Any], str]


def table_of(db: str, name: str, rows: Iterable[tuple[str, str, str | None]],
             json_columns: set[str]) -> Table:  # fmt: skip
    """A table from its information_schema COLUMNS rows (name, DATA_TYPE, charset);
    ``json_columns``: MariaDB's JSON columns (LONGTEXT with a json_valid check)."""
    qualified = f"{quote(db)}.{quote(name)}"
    columns = {}
    for column, kind, charset in rows:
        if column in json_columns:
            kind = "json"
        # A MySQL JSON column has no charset; MariaDB's (LONGTEXT) has one.
        columns[column] = Column(column, kind.lower(), charset)
    if not columns:
        raise DestinationError(f"destination table {qualified} does not exist; create it")
    return Table(qualified, columns)


def steps(
    changes: Sequence[Change], table: Callable[[str, str], Table], database: str | None
) -> list[Step]:
    """What each change does, in order: upserts, deletes by key, row deletes, inserts.
    ``table(db, name)`` gives the destination table; ``database`` overrides the source's."""
    found: list[Step] = []
    for change in changes:
        event = change.event
        source = event["source"]
        target = table(database or source["db"], source["table"])
        op, key, before, after = event["op"], event.get("key"), event["before"], event["after"]
        if key is None:
            if op == "r" and event["txn"]["seq"] == 0:
                # A keyless table's snapshot is the whole table, read at once: its first row
                # replaces what the destination holds (a re-read after a crash, or a later
                # snapshot of the table, would otherwise add every row again).
                found.append(("clear", target, (), {}))
            if op in "ud" and before is not None:
                found.append(("delete_row", target, tuple(before), before))
            if op in "cur" and after is not None:
                found.append(("insert", target, tuple(after), after))
            continue
        names = tuple(key)
        if op == "d":
            found.append(("delete", target, names, {k: before[k] for k in names}))
            continue
        if op == "u" and before is not None and any(before[k] != after[k] for k in names):
            found.append(("delete", target, names, {k: before[k] for k in names}))
        found.append(("upsert", target, tuple(after), after))
    return found


def statements(steps: list[Step], escape: Escape) -> list[str]:
    """SQL for the steps, consecutive steps of one kind, table and columns sharing one
    statement (a row delete never shares: LIMIT 1 is per row)."""
    found: list[str] = []
    group: list[Step] = []
    size = 0
    for step in steps:
        first = group[0] if group else None
        if first is not None and (
            step[0] != first[0]
            or step[1] is not first[1]  # tables are cached: one object per table
            or step[2] != first[2]
            or step[0] in ("delete_row", "clear")
            or size > STATEMENT_BYTES
        ):
            found.append(statement(group, escape))
            group, size = [], 0
        group.append(step)
        size += sum(len(v) if isinstance(v, str) else 8 for v in step[3].values())
    if group:
        found.append(statement(group, escape))
    return found


def statement(group: list[Step], escape: Escape) -> str:
    """One INSERT (``upsert``: ON DUPLICATE KEY UPDATE) or DELETE for steps of one kind."""
    kind, table, names, _ = group[0]
    if kind == "clear":
        return f"DELETE FROM {table.name}"
    columns = [table.column(name) for name in names]

    def literals(values: dict[str, Any]) -> list[str]:
        return [escape(c.convert(values[c.name])) for c in columns]

    if kind in ("upsert", "insert"):
        rows = ",".join(
            "(" + ",".join(c.value_sql(v) for c, v in zip(columns, literals(s[3]), strict=True))
            + ")"
            for s in group
        )  # fmt: skip
        sql = f"INSERT INTO {table.name} ({','.join(quote(n) for n in names)}) VALUES {rows}"
        if kind == "upsert":
            updates = ",".join(f"{quote(n)}=VALUES({quote(n)})" for n in names)
            sql += f" ON DUPLICATE KEY UPDATE {updates}"
        return sql
    exact = kind == "delete_row"
    where = " OR ".join(
        "(" + " AND ".join(
            c.match_sql(v, exact) for c, v in zip(columns, literals(s[3]), strict=True)
        ) + ")"
        for s in group
    )  # fmt: skip
    return f"DELETE FROM {table.name} WHERE {where}" + (" LIMIT 1" if exact else "")


def record_offsets_sql(
    offsets_table: str, consumer: str, changes: Sequence[Change], escape: Escape
) -> str | None:
    """The upsert of each partition's last change of ``changes`` into ``aesop_offsets``;
    None for no changes. The position columns follow the offset only when it moves on."""
    if not changes:
        return None
    last: dict[tuple[str, int], Change] = {}
    for change in changes:
        last[(change.topic, change.partition)] = change
    name = escape(consumer)
    rows = ",".join(
        f"({name},{escape(topic)},{partition},{change.offset},"
        f"{escape(change.head.source.name)},{change.head.scn},{change.head.row})"
        for (topic, partition), change in last.items()
    )
    # They are assigned first: each assignment sees the ones before it.
    newer = "VALUES(last_offset) > last_offset"
    return (
        f"INSERT INTO {offsets_table} (consumer, topic, part, last_offset, source, scn,"
        f" scn_row) VALUES {rows} ON DUPLICATE KEY UPDATE"
        f" source = IF({newer}, VALUES(source), source),"
        f" scn = IF({newer}, VALUES(scn), scn),"
        f" scn_row = IF({newer}, VALUES(scn_row), scn_row),"
        " last_offset = GREATEST(last_offset, VALUES(last_offset))"
    )
