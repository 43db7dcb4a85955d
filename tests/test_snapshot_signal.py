"""Snapshot requests read from signal-table rows (no server needed)."""

from __future__ import annotations

import logging

import orjson
import pytest

from app.settings import MySQLURL, SourceSettings
from relay.include import TableFilter
from relay.snapshot import snapshot_request

SOURCE = SourceSettings("shop", MySQLURL("127.0.0.1", 3306, "root", "", None), 1,
                        ("shop.*",), ("shop.audit",), "latest", "aesop.shop")  # fmt: skip
WANTS = TableFilter.of(SOURCE)


def row(data: object, kind: str = "execute-snapshot") -> dict[str, object]:
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    return {"id": "s1", "type": kind, "data": text}


def test_a_request_names_the_tables_this_source_publishes() -> None:
    asked = row({"data-collections": ["shop.orders", "shop.items"], "source": "shop"})
    assert snapshot_request(SOURCE, asked, WANTS) == [("shop", "orders"), ("shop", "items")]
    anyone = row({"data-collections": ["shop.orders"]})  # no source: every source reading it
    assert snapshot_request(SOURCE, anyone, WANTS) == [("shop", "orders")]


def test_another_sources_request_and_other_signals_are_not_ours() -> None:
    assert (
        snapshot_request(SOURCE, row({"data-collections": ["shop.a"], "source": "b"}), WANTS) == []
    )
    assert snapshot_request(SOURCE, row({"data-collections": ["shop.a"]}, "log"), WANTS) == []


@pytest.mark.parametrize("data", ["not json", "[]", '{"data-collections": "shop.a"}', "{}", ""])
def test_a_malformed_request_is_logged_and_ignored(
    data: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert snapshot_request(SOURCE, row(data), WANTS) == []
    assert "is not a snapshot request" in caplog.text


def test_tables_it_does_not_publish_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    asked = row({"data-collections": ["shop.audit", "other.t", "nodot", "shop.ok"]})
    with caplog.at_level(logging.WARNING):
        assert snapshot_request(SOURCE, asked, WANTS) == [("shop", "ok")]
    assert caplog.text.count("is not a table this source publishes") == 3
