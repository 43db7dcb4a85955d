"""relay._pmr_patches on the library's table map, without a server (the stack tier's
tests/test_values.py reads real tables on each server of the matrix)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.row_event import TableMapEvent

from relay import _pmr_patches


def _unsigned_flags(dbms: str, types: list[int], bits: int) -> list[bool]:
    """The library's UNSIGNED flag per column, from a SIGNEDNESS metadata byte ``bits``."""
    _pmr_patches.apply()
    table_map: Any = SimpleNamespace(
        dbms=dbms,
        columns=[SimpleNamespace(type=kind) for kind in types],
        column_count=len(types),
        packet=SimpleNamespace(read=lambda size: bytes([bits])),
    )
    table_map._is_numeric_column = lambda kind: TableMapEvent._is_numeric_column(table_map, kind)
    flags = TableMapEvent._read_bool_list(table_map, 1, True)
    return list(TableMapEvent._convert_include_non_numeric_column(table_map, flags))


@pytest.mark.parametrize(
    ("dbms", "bits", "expected"),
    [
        # MySQL gives YEAR no bit: the first bit is the TINYINT's, the second the BIGINT's.
        ("mysql", 0b1000_0000, [False, False, True, False]),
        # MariaDB gives YEAR one: YEAR, TINYINT, BIGINT in turn.
        ("mariadb", 0b0100_0000, [False, False, True, False]),
    ],
)
def test_unsigned_flags_after_a_year_column_stay_on_their_columns(
    dbms: str, bits: int, expected: list[bool]
) -> None:
    types = [FIELD_TYPE.YEAR, FIELD_TYPE.VARCHAR, FIELD_TYPE.TINY, FIELD_TYPE.LONGLONG]
    assert _unsigned_flags(dbms, types, bits) == expected
