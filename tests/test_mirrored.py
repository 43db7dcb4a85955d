"""What ``aesop lag`` takes from the ZooKeeper mirror: typed positions, malformed ones left out."""

from __future__ import annotations

from typing import Any

import pytest

from tables.mirrored import _applied
from tables.positions import AppliedPosition


def test_a_mirrored_applied_position_is_typed() -> None:
    assert _applied({"scn": 5, "row": 1, "offset": 9, "ts_ms": 7}) == AppliedPosition(5, 1, 9, 7)


@pytest.mark.parametrize(
    "document",
    [
        {"offset": 9},
        {"scn": "x", "row": 0, "offset": 9},
        {"scn": 1, "row": 0, "offset": 9, "ts_ms": "soon"},
        {"scn": 1, "row": 0},
        [1, 2],
        None,
    ],
)
def test_a_node_that_is_no_applied_position_is_left_out(document: Any) -> None:
    assert _applied(document) is None
