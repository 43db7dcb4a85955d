"""Handlers the consumer benchmark runs (``handler = "bench.handlers:Noop"``, ``...:noop``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.handlers import Change, Handler


def noop(event: dict[str, Any]) -> None:
    """Does nothing: what is left is the cost of the consumer itself."""


class Noop(Handler):
    """Takes each batch and does nothing: what is left is the cost of the consumer itself
    (fetch, check every event, order, skip, record positions, commit)."""

    async def apply(self, changes: Sequence[Change]) -> None:
        return None
