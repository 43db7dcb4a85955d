"""Column values read from a real server's binlog come out as the spec's JSON values."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pymysql
import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from relay import _pmr_patches
from relay.binlog_status import binary_log_status
from relay.decoder import RowDecoder
from relay.values import convert_row, converter_key, mariadb_json_columns, row_converter

EMOJI = "\U0001f600"
SET64 = ",".join(f"'l{i}'" for i in range(64))


@dataclass(frozen=True)
class Case:
    """One column type and value: the DDL, the SQL literal, and the JSON value we expect.

    `select` is the SQL expression (over column `v`) whose result, put through `shown`,
    must equal the expected value too: the spec's "as MySQL's own SELECT shows them".
    None where SELECT deliberately differs (FLOAT beyond 6 significant digits).
    """

    id: str
    type: str
    literal: str
    expected: Any
    select: str | None = "v"
    shown: Callable[[Any], Any] = field(default=lambda value: value)


def _as_list(value: str) -> list[str]:
    return value.split(",") if value else []


CHAR = "CAST(v AS CHAR)"
CASES = [
    # Integers, exact at both ends, signed and UNSIGNED.
    Case("tinyint", "TINYINT", "-128", -128),
    Case("tinyint-unsigned", "TINYINT UNSIGNED", "255", 255),
    Case("smallint", "SMALLINT", "-32768", -32768),
    Case("smallint-unsigned", "SMALLINT UNSIGNED", "65535", 65535),
    Case("mediumint", "MEDIUMINT", "-8388608", -8388608),
    Case("mediumint-unsigned", "MEDIUMINT UNSIGNED", "16777215", 16777215),
    Case("int", "INT", "-2147483648", -2147483648),
    Case("int-unsigned", "INT UNSIGNED", "4294967295", 4294967295),
    Case("bigint-min", "BIGINT", "-9223372036854775808", -9223372036854775808),
    Case("bigint-max", "BIGINT", "9223372036854775807", 9223372036854775807),
    Case("bigint-unsigned", "BIGINT UNSIGNED", "18446744073709551615", 18446744073709551615),
    # DECIMAL(p,s): a string with exactly s decimals.
    Case("decimal", "DECIMAL(10,2)", "10.5", "10.50", CHAR),
    Case("decimal-negative", "DECIMAL(10,2)", "-0.01", "-0.01", CHAR),
    Case("decimal-scale-only", "DECIMAL(2,2)", "-0.5", "-0.50", CHAR),
    Case("decimal-no-scale", "DECIMAL(5,0)", "99999", "99999", CHAR),
    Case(
        "decimal-65-30",
        "DECIMAL(65,30)",
        "12345678901234567890123456789012345.123456789012345678901234567890",
        "12345678901234567890123456789012345.123456789012345678901234567890",
        CHAR,
    ),
    Case("decimal-65-30-zero", "DECIMAL(65,30)", "0", "0." + "0" * 30, CHAR),
    Case("decimal-65-30-negative", "DECIMAL(65,30)", "-1.5", "-1.5" + "0" * 29, CHAR),
    # FLOAT as SELECT shows it, DOUBLE exact.
    Case("float", "FLOAT", "1.1", 1.1),
    Case("float-tenth", "FLOAT", "0.1", 0.1),
    Case("float-max", "FLOAT", "-3.4e38", -3.4e38),
    Case("float-scaled", "FLOAT(7,3)", "3.14159", 3.142),
    # SELECT rounds FLOAT to 6 digits (123457000); we keep the digits that restore it.
    Case("float-7-digits", "FLOAT", "123456789", 123456790.0, None),
    Case("double", "DOUBLE", "1.1", 1.1),
    Case("double-sum", "DOUBLE", "0.1e0 + 0.2e0", 0.30000000000000004),
    Case("double-max", "DOUBLE", "-1.7976931348623157e308", -1.7976931348623157e308),
    Case("double-tiny", "DOUBLE", "2.2250738585072014e-308", 2.2250738585072014e-308),
    # Text in the column's charset.
    Case("utf8mb4", "VARCHAR(20) CHARACTER SET utf8mb4", f"'x{EMOJI}é'", f"x{EMOJI}é"),
    Case("utf8mb4-empty", "TEXT CHARACTER SET utf8mb4", "''", ""),
    Case("utf8mb3", "CHAR(4) CHARACTER SET utf8mb3", "'ab  '", "ab"),
    Case("latin1", "VARCHAR(10) CHARACTER SET latin1", "'café€'", "café€"),
    # MySQL's latin1 maps 0x81 to U+0081, where Python's cp1252 has no character.
    Case("latin1-c1", "VARCHAR(10) CHARACTER SET latin1", "_latin1 x'8141'", "\x81A"),
    Case("latin1-long", "VARCHAR(300) CHARACTER SET latin1", "REPEAT('ñ', 300)", "ñ" * 300),
    Case("gbk", "TEXT CHARACTER SET gbk", "'中文'", "中文"),
    Case("big5", "MEDIUMTEXT CHARACTER SET big5", "'中文'", "中文"),
    Case("sjis", "LONGTEXT CHARACTER SET sjis", "'ｶﾀｶﾅ日本'", "ｶﾀｶﾅ日本"),
    Case("euckr", "VARCHAR(10) CHARACTER SET euckr", "'한국'", "한국"),
    Case("cp1251", "TINYTEXT CHARACTER SET cp1251", "'Привет'", "Привет"),
    Case("latin2", "VARCHAR(10) CHARACTER SET latin2", "'Łódź'", "Łódź"),
    Case("ucs2", "CHAR(5) CHARACTER SET ucs2", "'héllo'", "héllo"),
    Case("utf16", "VARCHAR(10) CHARACTER SET utf16", f"'é{EMOJI}'", f"é{EMOJI}"),
    Case("utf16le", "VARCHAR(10) CHARACTER SET utf16le", f"'é{EMOJI}'", f"é{EMOJI}"),
    Case("utf32", "VARCHAR(10) CHARACTER SET utf32", f"'é{EMOJI}'", f"é{EMOJI}"),
    # Bytes as base64; BINARY(n) keeps its 0x00 padding, as SELECT does.
    Case("binary", "BINARY(4)", "x'ff00'", "/wAAAA==", "TO_BASE64(v)"),
    Case("binary-zeros", "BINARY(3)", "x'000000'", "AAAA", "TO_BASE64(v)"),
    Case("varbinary", "VARBINARY(10)", "x'fffe00'", "//4A", "TO_BASE64(v)"),
    Case("tinyblob-empty", "TINYBLOB", "x''", "", "TO_BASE64(v)"),
    Case("blob", "BLOB", "x'80'", "gA==", "TO_BASE64(v)"),
    Case("mediumblob", "MEDIUMBLOB", "x'c328'", "wyg=", "TO_BASE64(v)"),
    Case("longblob", "LONGBLOB", "x'00ff'", "AP8=", "TO_BASE64(v)"),
    # BIT(n) as an integer.
    Case("bit-1", "BIT(1)", "b'1'", 1, "v + 0"),
    Case("bit-8", "BIT(8)", "b'10000001'", 129, "v + 0"),
    Case("bit-10", "BIT(10)", "b'1000000001'", 513, "v + 0"),
    Case("bit-64", "BIT(64)", "b'" + "1" * 64 + "'", 18446744073709551615, "v + 0"),
    Case("bit-64-zero", "BIT(64)", "b'0'", 0, "v + 0"),
    # ENUM label; SET labels in definition order.
    Case("enum", "ENUM('a','b','c')", "'b'", "b"),
    Case("enum-invalid", "ENUM('a','b')", "'zz'", ""),
    Case("enum-emoji", "ENUM('x','😀') CHARACTER SET utf8mb4", f"'{EMOJI}'", EMOJI),
    Case("enum-latin1", "ENUM('café','ñ') CHARACTER SET latin1", "'café'", "café"),
    Case("enum-ucs2", "ENUM('é','ü') CHARACTER SET ucs2", "'ü'", "ü"),
    Case("set", "SET('x','y','z')", "'z,x'", ["x", "z"], shown=_as_list),
    Case("set-empty", "SET('x','y','z')", "''", [], shown=_as_list),
    Case("set-latin1", "SET('é','ü') CHARACTER SET latin1", "'ü,é'", ["é", "ü"], shown=_as_list),
    Case("set-64", f"SET({SET64})", "'l63,l0'", ["l0", "l63"], shown=_as_list),
    # Dates and times as the text SELECT shows, zero dates included.
    Case("date", "DATE", "'2024-02-29'", "2024-02-29", CHAR),
    Case("date-min", "DATE", "'1000-01-01'", "1000-01-01", CHAR),
    Case("date-max", "DATE", "'9999-12-31'", "9999-12-31", CHAR),
    Case("date-zero", "DATE", "'0000-00-00'", "0000-00-00", CHAR),
    Case("date-zero-month", "DATE", "'2020-00-15'", "2020-00-15", CHAR),
    Case("datetime", "DATETIME", "'2024-02-29 23:59:59'", "2024-02-29 23:59:59", CHAR),
    Case("datetime-3", "DATETIME(3)", "'2024-02-29 23:59:59.12'", "2024-02-29 23:59:59.120", CHAR),
    Case(
        "datetime-6-max",
        "DATETIME(6)",
        "'9999-12-31 23:59:59.999999'",
        "9999-12-31 23:59:59.999999",
        CHAR,
    ),
    Case("datetime-zero", "DATETIME", "'0000-00-00 00:00:00'", "0000-00-00 00:00:00", CHAR),
    Case("datetime-2-zero", "DATETIME(2)", "0", "0000-00-00 00:00:00.00", CHAR),
    Case(
        "datetime-zero-day", "DATETIME(1)", "'2020-05-00 01:02:03.4'", "2020-05-00 01:02:03.4", CHAR
    ),
    # TIMESTAMP is written at +05:00 and must come out in UTC.
    Case("timestamp", "TIMESTAMP", "'2024-01-01 05:00:00'", "2024-01-01 00:00:00", CHAR),
    Case("timestamp-min", "TIMESTAMP", "'1970-01-01 05:00:01'", "1970-01-01 00:00:01", CHAR),
    Case(
        "timestamp-6-max",
        "TIMESTAMP(6)",
        "'2038-01-19 08:14:07.999999'",
        "2038-01-19 03:14:07.999999",
        CHAR,
    ),
    Case("timestamp-zero", "TIMESTAMP", "0", "0000-00-00 00:00:00", CHAR),
    Case("timestamp-3-zero", "TIMESTAMP(3)", "0", "0000-00-00 00:00:00.000", CHAR),
    Case("time", "TIME", "'12:34:56'", "12:34:56", CHAR),
    Case("time-zero", "TIME", "'00:00:00'", "00:00:00", CHAR),
    Case("time-min", "TIME", "'-838:59:59'", "-838:59:59", CHAR),
    Case("time-max", "TIME", "'838:59:59'", "838:59:59", CHAR),
    Case("time-6-min", "TIME(6)", "'-838:59:59.000000'", "-838:59:59.000000", CHAR),
    Case("time-1-over-24h", "TIME(1)", "'100:00:00.5'", "100:00:00.5", CHAR),
    Case("time-1-negative", "TIME(1)", "'-00:00:00.1'", "-00:00:00.1", CHAR),
    Case("time-2-negative", "TIME(2)", "'-01:00:00.25'", "-01:00:00.25", CHAR),
    Case("time-3-negative", "TIME(3)", "'-00:00:00.001'", "-00:00:00.001", CHAR),
    Case("time-4-negative", "TIME(4)", "'-12:34:56.7891'", "-12:34:56.7891", CHAR),
    Case("time-5-negative", "TIME(5)", "'-00:00:01.00001'", "-00:00:01.00001", CHAR),
    Case("time-6-negative", "TIME(6)", "'-00:00:01.000001'", "-00:00:01.000001", CHAR),
    Case("time-6", "TIME(6)", "'23:59:59.999999'", "23:59:59.999999", CHAR),
    # YEAR as an integer; 0000 is 0.
    Case("year", "YEAR", "2024", 2024),
    Case("year-min", "YEAR", "1901", 1901),
    Case("year-max", "YEAR", "2155", 2155),
    Case("year-zero", "YEAR", "0000", 0),
    # JSON as the value itself.
    Case(
        "json-object",
        "JSON",
        f"""'{{"a": [1, 2.5, "é{EMOJI}", null, true], "b": {{"c": 18446744073709551615}}}}'""",
        {"a": [1, 2.5, f"é{EMOJI}", None, True], "b": {"c": 18446744073709551615}},
        shown=json.loads,
    ),
    Case("json-array", "JSON", "'[[], {}, \"x\"]'", [[], {}, "x"], shown=json.loads),
    Case("json-string", "JSON", "'\"\\\\u00e9\"'", "é", shown=json.loads),
    Case("json-number", "JSON", "'-1.5e3'", -1500.0, shown=json.loads),
    Case("json-bool", "JSON", "'false'", False, shown=json.loads),
    # GEOMETRY as the WKT that ST_AsText shows.
    Case("point", "POINT", "POINT(1.5, -2)", "POINT(1.5 -2)", "ST_AsText(v)"),
    Case(
        "point-srid",
        "GEOMETRY",
        "ST_GeomFromText('POINT(0.1 1e20)', 4326)",
        "POINT(0.1 1e20)",
        "ST_AsText(v)",
    ),
    Case(
        "point-notation",
        "POINT",
        "POINT(1e15, -0.0000001)",
        "POINT(1e15 -0.0000001)",
        "ST_AsText(v)",
    ),
    Case(
        "linestring",
        "LINESTRING",
        "ST_GeomFromText('LINESTRING(0 0,1 1,2.5 3)')",
        "LINESTRING(0 0,1 1,2.5 3)",
        "ST_AsText(v)",
    ),
    Case(
        "polygon",
        "POLYGON",
        "ST_GeomFromText('POLYGON((0 0,4 0,4 4,0 0),(1 1,2 1,2 2,1 1))')",
        "POLYGON((0 0,4 0,4 4,0 0),(1 1,2 1,2 2,1 1))",
        "ST_AsText(v)",
    ),
    Case(
        "multipoint",
        "MULTIPOINT",
        "ST_GeomFromText('MULTIPOINT(1 1,2 2)')",
        "MULTIPOINT(1 1,2 2)",
        "ST_AsText(v)",
    ),
    Case(
        "multilinestring",
        "MULTILINESTRING",
        "ST_GeomFromText('MULTILINESTRING((0 0,1 1),(2 2,3 3))')",
        "MULTILINESTRING((0 0,1 1),(2 2,3 3))",
        "ST_AsText(v)",
    ),
    Case(
        "multipolygon",
        "MULTIPOLYGON",
        "ST_GeomFromText('MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))')",
        "MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((5 5,6 5,6 6,5 5)))",
        "ST_AsText(v)",
    ),
    Case(
        "geometrycollection",
        "GEOMETRYCOLLECTION",
        "ST_GeomFromText('GEOMETRYCOLLECTION(POINT(1 1),LINESTRING(0 0,1 1))')",
        "GEOMETRYCOLLECTION(POINT(1 1),LINESTRING(0 0,1 1))",
        "ST_AsText(v)",
    ),
    Case(
        "geometrycollection-empty",
        "GEOMETRY",
        "ST_GeomFromText('GEOMETRYCOLLECTION EMPTY')",
        "GEOMETRYCOLLECTION EMPTY",
        "ST_AsText(v)",
    ),
]


@dataclass
class Server:
    """Where the tests' MySQL/MariaDB listens (AESOP_TEST_MYSQL), and one database on it."""

    host: str
    port: int
    user: str
    password: str
    db: str

    def connect(self) -> pymysql.Connection:
        conn = pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.db,
            charset="utf8mb4",
            autocommit=True,
        )
        with conn.cursor() as cur:
            # Zero dates and invalid ENUM values need a lax mode; TIMESTAMP literals are
            # written at +05:00 so that UTC output is visible.
            cur.execute("SET SESSION sql_mode = ''")
            cur.execute("SET SESSION time_zone = '+05:00'")
        return conn


@dataclass
class Change:
    """One row of a row event: its kind, the table map's columns and the decoded image(s)."""

    kind: type
    columns: Any
    row: dict[str, Any]


OPS = {WriteRowsEvent: "c", UpdateRowsEvent: "u", DeleteRowsEvent: "d"}


def _changes_checking_compiled(event: Any, server: Server) -> list[Change]:
    """The event's rows as the library decodes them, after checking that relay.decoder's
    compiled reader (which reads the same bytes without consuming them) agrees with
    the library plus relay.values on every row, JSON columns included."""
    with server.connect() as conn, conn.cursor() as cur:
        json_columns = mariadb_json_columns(cur, server.db, event.table)
    decoder = RowDecoder(event.columns, json_columns)
    op = OPS[type(event)]
    assert decoder.read_image is not None, f"no compiled reader for {event.table}"
    body = decoder._body(event, op)
    assert body is not None
    compiled = decoder._decode(*body, op)
    changes = [Change(type(event), event.columns, row) for row in event.rows]
    assert compiled == decoder._library_images(event, op)
    for (before, after), (lib_before, lib_after) in zip(
        compiled, decoder._library_images(event, op), strict=True
    ):
        for image, library in ((before, lib_before), (after, lib_after)):
            if image is not None and library is not None:
                assert list(image) == list(library)
                assert [type(v) for v in image.values()] == [type(v) for v in library.values()]
    return changes


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    url = urlsplit(os.environ.get("AESOP_TEST_MYSQL", "mysql://root@127.0.0.1:3306"))
    db = f"aesop_values_{uuid.uuid4().hex[:10]}"
    srv = Server(
        url.hostname or "127.0.0.1",
        url.port or 3306,
        unquote(url.username or "root"),
        unquote(url.password or ""),
        db,
    )
    admin = pymysql.connect(
        host=srv.host, port=srv.port, user=srv.user, password=srv.password, autocommit=True
    )
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    try:
        yield srv
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE `{db}`")
        admin.close()


@pytest.fixture
def run_sql(server: Server) -> Callable[..., list[Change]]:
    """Run statements and return the row changes they wrote to the binlog, in order."""

    _pmr_patches.apply()  # as a worker does at start: these tests read with the library

    def run(*statements: str) -> list[Change]:
        with server.connect() as conn, conn.cursor() as cur:
            log_file, log_pos = binary_log_status(cur)[:2]
            for statement in statements:
                cur.execute(statement)
        reader = BinLogStreamReader(
            connection_settings={
                "host": server.host,
                "port": server.port,
                "user": server.user,
                "password": server.password,
            },
            server_id=100000 + uuid.uuid4().int % 100000,
            resume_stream=True,
            log_file=log_file,
            log_pos=log_pos,
            blocking=False,
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
            only_schemas=[server.db],
        )
        try:
            return [change for ev in reader for change in _changes_checking_compiled(ev, server)]
        finally:
            reader.close()

    return run


def _select(server: Server, expression: str, table: str, row_id: int) -> Any:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        cur.execute(f"SELECT {expression} FROM `{table}` WHERE id = %s", (row_id,))
        (value,) = cur.fetchone()
    return value


def _json_columns(server: Server, table: str) -> frozenset[str]:
    with server.connect() as conn, conn.cursor() as cur:
        return mariadb_json_columns(cur, server.db, table)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_value_in_every_row_event(
    case: Case, server: Server, run_sql: Callable[..., list[Change]]
) -> None:
    table = f"t_{case.id.replace('-', '_')}"
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE `{table}` (id INT PRIMARY KEY, v {case.type} NULL)")
    changes = run_sql(
        f"INSERT INTO `{table}` VALUES (1, {case.literal}), (2, NULL)",
        f"UPDATE `{table}` SET id = 3 WHERE id = 1",
        f"DELETE FROM `{table}` WHERE id = 2",
    )
    json_columns = _json_columns(server, table)

    def convert(values: dict[str, Any]) -> dict[str, Any]:
        return convert_row(changes[0].columns, values, json_columns=json_columns)

    assert [c.kind for c in changes] == [
        WriteRowsEvent,
        WriteRowsEvent,
        UpdateRowsEvent,
        DeleteRowsEvent,
    ]
    inserted, inserted_null, updated, deleted = (c.row for c in changes)
    expected = {"id": 1, "v": case.expected}
    assert convert(inserted["values"]) == expected
    assert convert(inserted_null["values"]) == {"id": 2, "v": None}
    assert convert(updated["before_values"]) == expected
    assert convert(updated["after_values"]) == {"id": 3, "v": case.expected}
    assert convert(deleted["values"]) == {"id": 2, "v": None}
    # The event carries these values as they are: orjson must take them unchanged.
    value = convert(inserted["values"])["v"]
    assert orjson.loads(orjson.dumps(value)) == case.expected
    assert type(value) is type(case.expected)
    if case.select is not None:
        assert case.shown(_select(server, case.select, table, 3)) == case.expected


def test_signedness_skips_no_numeric_column(run_sql: Callable[..., list[Change]]) -> None:
    """UNSIGNED flags come per numeric column; a miscount would shift them to other columns."""
    changes = run_sql(
        "CREATE TABLE signs (d DECIMAL(5,2), f FLOAT, w DOUBLE, y YEAR, b BIT(8), e ENUM('a'),"
        " u1 TINYINT UNSIGNED, s1 TINYINT, u8 BIGINT UNSIGNED, s8 BIGINT)",
        "INSERT INTO signs VALUES (-1.5, -2, -3, 2000, b'11111111', 'a',"
        " 255, -1, 18446744073709551615, -1)",
    )
    assert convert_row(changes[0].columns, changes[0].row["values"]) == {
        "d": "-1.50",
        "f": -2.0,
        "w": -3.0,
        "y": 2000,
        "b": 255,
        "e": "a",
        "u1": 255,
        "s1": -1,
        "u8": 18446744073709551615,
        "s8": -1,
    }


def test_charsets_follow_their_columns(run_sql: Callable[..., list[Change]]) -> None:
    """Charsets come as one list over the text columns; geometry and ENUM must not shift it."""
    changes = run_sql(
        "CREATE TABLE texts (g GEOMETRY, a VARCHAR(5) CHARACTER SET latin1,"
        " e ENUM('é') CHARACTER SET latin1, b BLOB, c TEXT CHARACTER SET gbk,"
        " s SET('ü') CHARACTER SET ucs2, d CHAR(3) CHARACTER SET utf32, `prénom` VARCHAR(5))",
        "INSERT INTO texts VALUES (POINT(1, 2), 'é', 'é', x'e9', '中', 'ü', 'é', 'Zoë')",
    )
    out = convert_row(changes[0].columns, changes[0].row["values"])
    assert out == {
        "g": "POINT(1 2)",
        "a": "é",
        "e": "é",
        "b": "6Q==",
        "c": "中",
        "s": ["ü"],
        "d": "é",
        "prénom": "Zoë",
    }
    assert list(out) == ["g", "a", "e", "b", "c", "s", "d", "prénom"]


def test_row_converter_is_convert_row_compiled(run_sql: Callable[..., list[Change]]) -> None:
    changes = run_sql(
        "CREATE TABLE mixed (id BIGINT UNSIGNED PRIMARY KEY, amount DECIMAL(8,2),"
        " at DATETIME(3), tags SET('a','b'), raw VARBINARY(4), note TEXT)",
        "INSERT INTO mixed VALUES (1, 2.5, '2024-01-02 03:04:05.6', 'b,a', x'00', 'n'),"
        " (2, NULL, NULL, NULL, NULL, NULL)",
    )
    convert = row_converter(changes[0].columns)
    rows = [change.row["values"] for change in changes]
    assert [convert(row) for row in rows] == [convert_row(changes[0].columns, r) for r in rows]
    assert convert(rows[0]) == {
        "id": 1,
        "amount": "2.50",
        "at": "2024-01-02 03:04:05.600",
        "tags": ["a", "b"],
        "raw": "AA==",
        "note": "n",
    }
    assert converter_key(changes[0].columns) == converter_key(changes[1].columns)


def test_alter_table_mid_stream_keeps_names_right(run_sql: Callable[..., list[Change]]) -> None:
    """Each row event is named by its own table map, so rows written before and after an
    ALTER keep their own column names and order."""
    changes = run_sql(
        "CREATE TABLE evolving (id INT PRIMARY KEY, a VARCHAR(5), b INT)",
        "INSERT INTO evolving VALUES (1, 'one', 10)",
        "ALTER TABLE evolving ADD COLUMN c DATE AFTER id",
        "INSERT INTO evolving VALUES (2, '2024-01-02', 'two', 20)",
        "ALTER TABLE evolving DROP COLUMN a",
        "INSERT INTO evolving VALUES (3, '2024-01-03', 30)",
        "ALTER TABLE evolving RENAME COLUMN b TO bee",
        "INSERT INTO evolving VALUES (4, '2024-01-04', 40)",
        "ALTER TABLE evolving MODIFY COLUMN bee INT FIRST",
        "INSERT INTO evolving VALUES (50, 5, '2024-01-05')",
        "UPDATE evolving SET bee = 51 WHERE id = 5",
    )
    converted = [
        list(convert_row(c.columns, c.row.get("values") or c.row["after_values"]).items())
        for c in changes
    ]
    assert converted == [
        [("id", 1), ("a", "one"), ("b", 10)],
        [("id", 2), ("c", "2024-01-02"), ("a", "two"), ("b", 20)],
        [("id", 3), ("c", "2024-01-03"), ("b", 30)],
        [("id", 4), ("c", "2024-01-04"), ("bee", 40)],
        [("bee", 50), ("id", 5), ("c", "2024-01-05")],
        [("bee", 51), ("id", 5), ("c", "2024-01-05")],
    ]


def test_mariadb_json_columns_are_the_json_ones(server: Server) -> None:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE docs (id INT PRIMARY KEY, j JSON, `we``ird` JSON NOT NULL,"
            " checked LONGTEXT CHECK (json_valid(checked)), plain LONGTEXT,"
            " other TEXT CHECK (other <> ''))"
        )
    assert _json_columns(server, "docs") == {"j", "we`ird", "checked"}


def test_mariadb_json_without_hint_stays_text(run_sql: Callable[..., list[Change]]) -> None:
    """Without json_columns a MariaDB JSON column is its LONGTEXT: the text, not parsed."""
    changes = run_sql(
        "CREATE TABLE loose (j JSON)",
        """INSERT INTO loose VALUES ('{"a": 1}')""",
    )
    assert convert_row(changes[0].columns, changes[0].row["values"]) == {"j": '{"a": 1}'}
    assert convert_row(changes[0].columns, changes[0].row["values"], json_columns={"j"}) == {
        "j": {"a": 1}
    }


def test_compiled_decoder_matches_library_on_random_rows(
    run_sql: Callable[..., list[Change]],
) -> None:
    """Random values and NULLs in a wide table (a 3-byte NULL bitmap): run_sql checks the
    compiled reader against the library on every row image, inserts, updates, deletes."""
    rng = random.Random(5)

    def sign() -> str:
        return rng.choice("-+")

    def digits(count: int) -> str:
        return f"{rng.randrange(10**count):0{count}d}"

    def when() -> str:
        return f"'{rng.randint(1000, 9999)}-03-04 05:06:07.{digits(4)}'"

    def hours() -> str:
        return f"'{sign()}{rng.randint(0, 838)}:{rng.randint(0, 59)}:59.{digits(5)}'"

    columns: dict[str, tuple[str, Callable[[], str]]] = {
        "d1": ("DECIMAL(10,2)", lambda: f"{sign()}{rng.randrange(10**8)}.{digits(2)}"),
        "d2": ("DECIMAL(65,30)", lambda: f"{sign()}{rng.randrange(10**35)}.{digits(30)}"),
        "d3": ("DECIMAL(5,5)", lambda: f"{sign()}0.{digits(5)}"),
        "d4": ("DECIMAL(18,0)", lambda: f"{sign()}{rng.randrange(10**18)}"),
        "d5": ("DECIMAL(19,10)", lambda: f"{sign()}{rng.randrange(10**9)}.{digits(10)}"),
        "t1": ("TINYINT", lambda: str(rng.randint(-128, 127))),
        "t2": ("SMALLINT UNSIGNED", lambda: str(rng.randint(0, 65535))),
        "t3": ("MEDIUMINT", lambda: str(rng.randint(-(2**23), 2**23 - 1))),
        "t4": ("INT UNSIGNED", lambda: str(rng.randint(0, 2**32 - 1))),
        "t5": ("BIGINT", lambda: str(rng.randint(-(2**63), 2**63 - 1))),
        "f": ("FLOAT", lambda: repr(rng.uniform(-1e6, 1e6))),
        "w": ("DOUBLE", lambda: repr(rng.uniform(-1e300, 1e300))),
        "s": ("VARCHAR(300)", lambda: f"'{'é' * rng.randint(0, 300)}'"),
        "b": ("VARBINARY(20)", lambda: f"x'{rng.randbytes(rng.randint(0, 20)).hex()}'"),
        "dt": ("DATETIME(4)", when),
        "ts": ("TIMESTAMP(2) NULL", lambda: f"FROM_UNIXTIME({rng.randint(1, 2**31 - 1)})"),
        "tm": ("TIME(5)", hours),
        "y": ("YEAR", lambda: str(rng.choice([0, *range(1901, 2156)]))),
        "e": ("ENUM('a','b','c')", lambda: rng.choice(["'a'", "'b'", "'c'"])),
        "st": ("SET('a','b','c')", lambda: rng.choice(["''", "'a'", "'c,b'", "'a,b,c'"])),
        "bt": ("BIT(13)", lambda: str(rng.randrange(2**13))),
        "j": ("JSON", lambda: rng.choice(["'[1, \"x\"]'", "'{\"k\": null}'", "'1.5'"])),
    }
    ddl = ", ".join(f"`{name}` {kind}" for name, (kind, _) in columns.items())
    names = ", ".join(f"`{name}`" for name in columns)

    def row(row_id: int) -> str:
        literals = [make() if rng.random() > 0.2 else "NULL" for _, make in columns.values()]
        return f"({row_id}, {', '.join(literals)})"

    changes = run_sql(
        f"CREATE TABLE wide (id INT PRIMARY KEY, {ddl})",
        f"INSERT INTO wide (id, {names}) VALUES {', '.join(row(i) for i in range(1, 201))}",
        f"REPLACE INTO wide (id, {names}) VALUES {', '.join(row(i) for i in range(1, 101))}",
        "UPDATE wide SET t1 = -t1, s = CONCAT(s, 'x'), d1 = NULL WHERE id % 3 = 0",
        "DELETE FROM wide WHERE id % 2 = 0",
    )
    kinds = [change.kind for change in changes]
    assert kinds.count(WriteRowsEvent) == 200
    assert (
        kinds.count(UpdateRowsEvent) == 100 + 66
    )  # REPLACE of rows 1-100, then every third of 200
    assert kinds.count(DeleteRowsEvent) == 100
