"""User handlers (``handler = "tests.sample_handlers:<name>"``) that the consumer tests run.

Each appends what it saw to the JSON-lines file named by ``AESOP_TEST_RECORD``, one line per
call, so a test can check what the handler received, in which order, and how many times.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

import orjson

from agents.handlers import Change, Handler, Transient


def _append(event: dict[str, Any], how: str) -> None:
    line = orjson.dumps({"how": how, **event}) + b"\n"
    with open(os.environ["AESOP_TEST_RECORD"], "ab") as out:
        out.write(line)


def record(event: dict[str, Any]) -> None:
    _append(event, "sync")


async def record_async(event: dict[str, Any]) -> None:
    await asyncio.sleep(0)
    _append(event, "async")


def reject_bad(event: dict[str, Any]) -> None:
    """Raises on rows whose ``note`` is "bad" (dead-lettered); records the rest."""
    if (event["after"] or {}).get("note") == "bad":
        raise ValueError(f"row {event['key']} is marked bad")
    _append(event, "sync")


def flaky(event: dict[str, Any]) -> None:
    """Raises Transient while the file named by ``AESOP_TEST_GATE`` exists."""
    if os.path.exists(os.environ["AESOP_TEST_GATE"]):
        raise Transient("destination gate closed")
    _append(event, "flaky")


class RecordBatches(Handler):
    """A Handler subclass: gets whole batches; records each change's event as ``batch``,
    after checking that its decoded head agrees with the event."""

    async def apply(self, changes: Sequence[Change]) -> None:
        for change in changes:
            event, head = change.event, change.head
            assert (head.op, head.scn, head.row, head.source.name) == (
                event["op"],
                event["scn"],
                event["row"],
                event["source"]["name"],
            ), change
            _append(event, "batch")
