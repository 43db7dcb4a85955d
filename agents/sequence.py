"""The in-order check: nothing in a partition is passed by.

A consumer skips a change at or below the last ``(scn, row)`` it applied in its partition,
which is only correct if it sees every change in offset order. So per partition taken, the
offset that must come next is known, and each batch is checked against it: records that run
on from it (or go back before it: read again, to be skipped) are processed; records that
start after it make the partition be read again from it (a seek back), and records that jump
forward inside a batch (fetch rounds merged, one of them cut short on the way) are processed
up to the jump, the rest read again. A gap that is still there after ``REREADS`` reads that
began after the seek is taken as removed by Kafka (retention, compaction, transaction
markers): a warning, then the partition goes on from what Kafka has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from faust.types import TP

log = logging.getLogger(__name__)

REREADS = 3  # reads from an offset sought back to, begun after the seek, before it is gone


class Seeker(Protocol):
    """The consumer that fetches the rounds (``agents.fetch.RoundConsumer``)."""

    fetches_started: int

    async def seek_now(self, tp: TP, offset: int) -> None: ...


def first_jump(records: list[Any]) -> int | None:
    """The index of the first record whose offset does not follow the one before it but
    lies beyond it (a record passed by); None when the offsets only run on or go back."""
    previous = records[0].offset
    for index in range(1, len(records)):
        offset = records[index].offset
        if offset > previous + 1:
            return index
        previous = offset
    return None


class OffsetSequence:
    """Per partition taken: the offset expected next, and the seek back under way."""

    def __init__(self, name: str, seeker: Callable[[], Seeker]) -> None:
        self.name = name
        self._seeker = seeker
        self._next: dict[TP, int] = {}
        self._sought: dict[TP, int] = {}  # the fetch serial at which a seek back was made
        self._rereads: dict[TP, int] = {}  # reads from the sought offset begun after it

    @property
    def seeking(self) -> bool:
        """Whether some partition is being read again from an offset passed by."""
        return bool(self._sought)

    def expected(self, tp: TP) -> int | None:
        return self._next.get(tp)

    async def admit(
        self, tp: TP, records: list[Any], serial: int, expected: int | None
    ) -> list[Any]:
        """The records of the partition that may be processed now, from a round fetched
        at ``serial``; ``expected`` is the offset due next when this taking has not
        processed any yet (from the applied position), else it is known here."""
        expected = self._next.get(tp, expected)
        first = records[0].offset
        if expected is not None and first > expected:
            sought = self._sought.get(tp)
            stale = sought is None or serial <= sought  # fetched before the seek back
            if not stale:
                self._rereads[tp] = self._rereads.get(tp, 0) + 1
            if stale or self._rereads[tp] < REREADS:
                if sought is None:
                    log.warning(
                        "consumer %s: %s/%d: expected offset %d next, got %d; reading "
                        "again from %d", self.name, tp.topic, tp.partition, expected, first,
                        expected,
                    )  # fmt: skip
                await self._seek(tp, expected)
                return []
            # Read again from there, several times, and still not there: Kafka no longer
            # has them (a round lost on the way would have come the second time).
            log.warning(
                "consumer %s: %s/%d offsets %d to %d are no longer in Kafka (retention or "
                "compaction removed them); going on from %d",
                self.name, tp.topic, tp.partition, expected, first - 1, first,
            )  # fmt: skip
        self._sought.pop(tp, None)
        self._rereads.pop(tp, None)
        if records[-1].offset - first + 1 != len(records):
            jump = first_jump(records)
            if jump is not None:
                resume = records[jump - 1].offset + 1
                log.warning(
                    "consumer %s: %s/%d: offsets jump from %d to %d inside a batch; reading "
                    "again from %d", self.name, tp.topic, tp.partition, resume - 1,
                    records[jump].offset, resume,
                )  # fmt: skip
                await self._seek(tp, resume)
                records = records[:jump]
        self._next[tp] = records[-1].offset + 1
        return records

    async def _seek(self, tp: TP, offset: int) -> None:
        seeker = self._seeker()
        await seeker.seek_now(tp, offset)
        self._sought[tp] = seeker.fetches_started

    def restart_at(self, tp: TP, offset: int) -> None:
        """The partition is read again from ``offset`` (a seek made by the caller)."""
        self._next[tp] = offset
        self._sought.pop(tp, None)
        self._rereads.pop(tp, None)

    def forget(self, tp: TP) -> None:
        """The partition was revoked."""
        for state in (self._next, self._sought, self._rereads):
            state.pop(tp, None)
