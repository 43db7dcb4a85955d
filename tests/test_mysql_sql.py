"""The mysql handler's SQL, rendered without a connection (escape: PyMySQL's own)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pymysql.converters import escape_item

from agents.event import Change
from agents.mysql_sql import (
    Column,
    DestinationError,
    Table,
    record_offsets_sql,
    statements,
    steps,
    table_of,
)


def escape(value: Any) -> str:
    return str(escape_item(value, "utf8mb4"))


def change(op: str, key: dict[str, Any] | None, before: Any, after: Any, **at: Any) -> Change:
    event = {
        "op": op,
        "source": {"name": "shop", "db": "src", "table": "t"},
        "scn": at.get("scn", 10),
        "row": at.get("row", 0),
        "key": key,
        "before": before,
        "after": after,
        "txn": {"seq": at.get("seq", 0), "last": True},
    }
    return Change.of(
        orjson.dumps(event),
        topic=at.get("topic", "aesop.shop"),
        partition=at.get("partition", 0),
        offset=at.get("offset", 0),
    )


TABLE = table_of(
    "dst", "t", [("id", "INT", None), ("name", "VARCHAR", "utf8mb4"), ("doc", "json", None)], set()
)


def render(
    *changes: Change, database: str | None = "dst", asked: list[Any] | None = None
) -> list[str]:
    def table(db: str, name: str) -> Table:
        if asked is not None:
            asked.append((db, name))
        return TABLE

    return statements(steps(changes, table, database), escape)


def test_inserts_of_one_table_and_columns_share_one_upsert() -> None:
    rows = [change("c", {"id": i}, None, {"id": i, "name": f"n{i}", "doc": None}) for i in (1, 2)]
    assert render(*rows) == [
        "INSERT INTO `dst`.`t` (`id`,`name`,`doc`) VALUES (1,'n1',NULL),(2,'n2',NULL)"
        " ON DUPLICATE KEY UPDATE `id`=VALUES(`id`),`name`=VALUES(`name`),`doc`=VALUES(`doc`)"
    ]


def test_an_update_that_changes_the_key_deletes_the_old_key_first() -> None:
    moved = change("u", {"id": 1}, {"id": 1, "name": "a"}, {"id": 2, "name": "a"})
    assert render(moved) == [
        "DELETE FROM `dst`.`t` WHERE (`id` <=> 1)",
        "INSERT INTO `dst`.`t` (`id`,`name`) VALUES (2,'a')"
        " ON DUPLICATE KEY UPDATE `id`=VALUES(`id`),`name`=VALUES(`name`)",
    ]


def test_a_keyless_update_removes_one_equal_row_exactly_then_inserts() -> None:
    keyless = change("u", None, {"id": 1, "name": "a"}, {"id": 1, "name": "b"})
    assert render(keyless) == [
        "DELETE FROM `dst`.`t` WHERE (`id` <=> 1 AND `name` <=> CONVERT('a' USING utf8mb4)"
        " COLLATE utf8mb4_bin) LIMIT 1",
        "INSERT INTO `dst`.`t` (`id`,`name`) VALUES (1,'b')",
    ]
    two = [change("d", None, {"id": i}, None) for i in (1, 2)]
    assert len(render(*two)) == 2, "LIMIT 1 is per row: row deletes never share a statement"


def test_a_keyless_tables_snapshot_replaces_its_rows_from_its_first_row() -> None:
    first, second = (change("r", None, None, {"id": i, "name": "x"}, seq=i) for i in (0, 1))
    assert render(first, second) == [
        "DELETE FROM `dst`.`t`",
        "INSERT INTO `dst`.`t` (`id`,`name`) VALUES (0,'x'),(1,'x')",
    ]
    # A batch that starts inside the snapshot (the rest of it) keeps what came before.
    assert render(second) == ["INSERT INTO `dst`.`t` (`id`,`name`) VALUES (1,'x')"]
    keyed = change("r", {"id": 0}, None, {"id": 0, "name": "x"}, seq=0)
    assert not any(sql.startswith("DELETE") for sql in render(keyed))


def test_json_values_are_written_compact_and_the_source_database_is_used_without_one() -> None:
    row = change("c", {"id": 1}, None, {"id": 1, "doc": {"a": [1, 2]}})
    asked: list[Any] = []
    render(row, database=None, asked=asked)
    assert asked == [("src", "t")]
    (sql,) = render(row, asked=asked)
    assert asked[-1] == ("dst", "t")
    assert "VALUES (1,'{\\\"a\\\":[1,2]}')" in sql


def test_a_missing_column_or_table_is_a_destination_error() -> None:
    with pytest.raises(DestinationError, match=r"^destination table `dst`.`t` has no column `x`$"):
        render(change("c", {"id": 1}, None, {"id": 1, "x": 2}))
    with pytest.raises(DestinationError, match=r"`dst`.`gone` does not exist; create it$"):
        table_of("dst", "gone", [], set())


def test_mariadb_json_columns_and_float_and_geometry_render_as_their_types() -> None:
    table = table_of("d", "g", [("j", "LONGTEXT", "utf8mb4"), ("f", "FLOAT", None)], {"j"})
    assert table.columns["j"] == Column("j", "json", "utf8mb4")
    assert table.column("f").match_sql("1.5", exact=False) == "`f` <=> CAST(1.5 AS FLOAT)"
    shape = Column("p", "point", None)
    assert shape.value_sql("'POINT(1 2)'") == "ST_GeomFromText('POINT(1 2)')"
    assert isinstance(table, Table)


def test_the_offsets_upsert_keeps_each_partitions_last_change() -> None:
    changes = [
        change("c", {"id": 1}, None, {"id": 1}, partition=0, offset=5, scn=100, row=0),
        change("c", {"id": 2}, None, {"id": 2}, partition=0, offset=6, scn=100, row=1),
        change("c", {"id": 3}, None, {"id": 3}, partition=3, offset=9, scn=101, row=0),
    ]
    sql = record_offsets_sql("`dst`.aesop_offsets", "replica", changes, escape)
    assert sql is not None
    rows = "('replica','aesop.shop',0,6,'shop',100,1),('replica','aesop.shop',3,9,'shop',101,0)"
    assert f"VALUES {rows} ON DUPLICATE KEY UPDATE" in sql
    assert sql.endswith("last_offset = GREATEST(last_offset, VALUES(last_offset))")
    assert record_offsets_sql("`dst`.aesop_offsets", "replica", [], escape) is None
