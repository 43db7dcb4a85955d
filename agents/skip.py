"""Which records of a partition go to the handler: the skip by offset and by ``(scn, row)``.

An event at or below the last applied ``(scn, row)`` of its partition is skipped: a relay
re-publishes what follows its checkpoint after a crash, at new offsets, with the same
identity. The destination's own record, if its handler keeps one (``Handler.applied``), is
consulted too: records at or below the offset it recorded are skipped, and its ``(scn, row)``
is the one to skip by when it is later than the table's (the table's write was lost in a
crash). A message that is no change event is set aside for the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from agents.event import Change
from agents.handlers import Applied
from app.change_event import BadMessage, decode_head, fast_decode_head
from tables.applied import AppliedPosition


@dataclass(slots=True)
class Selected:
    """What ``select`` found in one partition's records, beside the changes it appended."""

    skipped: int = 0
    bad: list[tuple[Any, BadMessage]] = field(default_factory=list)  # (record, why)
    several_sources: bool = False  # changes of another source than the position's


def select(
    tp: TP,
    records: list[Any],
    position: AppliedPosition | None,
    held: Applied | None,
    changes: list[Change],
) -> Selected:
    """Append to ``changes`` the records to apply, in order; count the ones skipped."""
    found = Selected()
    scn: int | None = None  # what to skip at or below; None: nothing applied yet
    row = 0
    source: str | None = None
    if position is not None:
        scn, row, source = position.scn, position.row, position.source
    if held is not None:
        if held.scn is not None and (
            position is None or held.offset > (-1 if position.offset is None else position.offset)
        ):
            scn, row, source = held.scn, held.row or 0, held.source
        if records[0].offset <= held.offset:
            kept = [r for r in records if r.offset > held.offset]
            found.skipped += len(records) - len(kept)
            records = kept
    topic, partition = tp.topic, tp.partition
    append = changes.append
    skipped = 0
    for record in records:
        value = record.value
        try:
            head = fast_decode_head(value)
        except Exception:
            try:
                head = decode_head(value)  # the reason, in our words
            except BadMessage as exc:
                found.bad.append((record, exc))
                continue
        if scn is not None:
            if source is None or head.source.name == source:
                if head.scn < scn or (head.scn == scn and head.row <= row):
                    skipped += 1
                    continue
            else:
                found.several_sources = True
        scn, row, source = head.scn, head.row, head.source.name
        append(Change(head, record.key, value, topic, partition, record.offset))
    found.skipped += skipped
    return found
