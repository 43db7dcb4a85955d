"""Handlers the consumer benchmark runs (``handler = "bench.handlers:noop"``)."""

from __future__ import annotations

from typing import Any


def noop(event: dict[str, Any]) -> None:
    """Does nothing: what is left is the cost of the consumer itself."""
