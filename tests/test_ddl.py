"""new_table_names: the tables a logged DDL statement creates or renames something to."""

from __future__ import annotations

import pytest

from relay.ddl import new_table_names


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("CREATE TABLE t (id INT PRIMARY KEY)", [("shop", "t")]),
        ("create table if not exists `other`.`we``ird` (id int)", [("other", "we`ird")]),
        ("CREATE OR REPLACE TABLE shop.t2 SELECT * FROM shop.t", [("shop", "t2")]),
        ("/* made by a tool */ CREATE TABLE `t3` LIKE t", [("shop", "t3")]),
        ("CREATE TABLE `shop` . `t4`(id INT)", [("shop", "t4")]),
        ("RENAME TABLE old.a TO shop.a, b TO `x`.`b`", [("shop", "a"), ("x", "b")]),
        ("RENAME TABLE a WAIT 5 TO a_new", [("shop", "a_new")]),
        ("ALTER TABLE old.a RENAME TO shop.a", [("shop", "a")]),
        ("ALTER TABLE a ADD COLUMN c INT, RENAME AS `b`", [("shop", "b")]),
        ("ALTER TABLE a ADD COLUMN renamed INT", []),
        ("ALTER TABLE a RENAME COLUMN x TO y", []),
        ("CREATE TEMPORARY TABLE tmp (id INT)", []),
        ("CREATE DATABASE shop2", []),
        ("CREATE INDEX i ON t (c)", []),
        ("DROP TABLE t", []),
        ("INSERT INTO t VALUES (1)", []),
    ],
)
def test_new_table_names(query: str, expected: list[tuple[str, str]]) -> None:
    assert new_table_names(query, "shop") == expected
