"""The consumer core without a broker: a real ConsumerRunner, with a fake handler, a fake
applied table, dead-letter topic, Kafka consumer and ZooKeeper mirror at its borders.

What one batch does: the in-order check and the seek back, the skip by ``(scn, row)`` and by
the destination's recorded offset, the retry of a transient failure, the dead letter of a
rejected change or a message that is no change event, and the position recorded per
partition (counted as processed, so committable, only once its write is acked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.types import TP

from agents import consumer as consumer_module
from agents import dead_letters as dead_letters_module
from agents.consumer import ConsumerRunner
from agents.fetch import Round, RoundApp
from agents.handlers import Applied, Change, EventFailed, Handler
from app.settings import load
from tables import applied as applied_module

TOPIC = "aesop.shop"
TP0 = TP(TOPIC, 0)

CONFIG = """
[aesop]
id = "core"
kafka = "kafka://127.0.0.1:1"
zookeeper = ""

[[consumer]]
name = "core-test"
topics = ["aesop.shop"]
handler = "tests.sample_handlers:record"
"""


def event(scn: int, row: int, op: str = "c", source: str = "shop") -> bytes:
    return orjson.dumps(
        {
            "op": op,
            "source": {"name": source, "db": "d", "table": "t"},
            "scn": scn,
            "row": row,
            "key": {"id": row},
            "before": None,
            "after": {"id": row},
        }
    )


def record(offset: int, value: bytes | None) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=b"k", value=value, topic=TOPIC, partition=0)


class FakeHandler(Handler):
    """Records each batch handed to it; raises the scripted failures, one per call."""

    def __init__(self, failures: Sequence[EventFailed | None] = (), held: Applied | None = None):
        self.calls: list[list[tuple[int, int]]] = []
        self.failures = list(failures)
        self.held = held

    async def apply(self, changes: Sequence[Change]) -> None:
        self.calls.append([(c.head.scn, c.head.row) for c in changes])
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure

    async def applied(self, topic: str, partition: int) -> Applied | None:
        return self.held


class FakeTable:
    """The applied table: data in memory, each changelog write acked when ``ack`` is set."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.writes: list[tuple[int, str, dict[str, Any]]] = []
        self.pending: list[asyncio.Future[None]] = []

    def send_changelog(self, partition: int, key: str, value: dict[str, Any]) -> Any:
        self.writes.append((partition, key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future

    def ack(self) -> None:
        for future in self.pending:
            future.set_result(None)
        self.pending.clear()


class FakeKafkaConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[TP, int]] = []
        self.fetches_started = 7

    async def seek_now(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


class FakeDeadLetters:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, dict[str, bytes]]] = []

    async def send(self, key: bytes | None, value: bytes | None, headers: Any) -> Any:
        self.sent.append((value, dict(headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def get_topic_name(self) -> str:
        return "core-test.dlq"


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConsumerRunner:
    path = tmp_path / "aesop.toml"
    path.write_text(CONFIG)
    settings = load(path, env={})
    mirror = SimpleNamespace(enabled=False, publish=lambda path, document: None)
    made = ConsumerRunner(settings, settings.consumers[0], mirror)  # type: ignore[arg-type]
    made.handler = FakeHandler()
    made.applied = made.positions.table = FakeTable()  # type: ignore[assignment]
    made.dlq = made.dead_letters.topic = FakeDeadLetters()  # type: ignore[assignment]
    kafka = FakeKafkaConsumer()
    monkeypatch.setattr(RoundApp, "round_consumer", property(lambda app: kafka))
    no_wait = SimpleNamespace(delays=lambda: iter([0.0] * 9))
    for module in (consumer_module, dead_letters_module, applied_module):
        monkeypatch.setattr(module, "RECONNECT", no_wait)
    return made


def batch(*records: SimpleNamespace, serial: int = 1) -> Round:
    return Round(1, serial, {TP0: list(records)})


async def test_every_change_goes_to_the_handler_in_order_and_its_position_is_recorded(
    runner: ConsumerRunner,
) -> None:
    await runner.process(
        batch(record(0, event(10, 0)), record(1, event(10, 1)), record(2, event(11, 0)))
    )
    handler = runner.handler
    assert isinstance(handler, FakeHandler)
    assert handler.calls == [[(10, 0), (10, 1), (11, 0)]]
    table = runner.applied
    assert isinstance(table, FakeTable)
    ((partition, key, document),) = table.writes
    assert (partition, key) == (0, f"{TOPIC}/0")
    assert {k: document[k] for k in ("scn", "row", "offset", "source")} == {
        "scn": 11,
        "row": 0,
        "offset": 2,
        "source": "shop",
    }
    assert runner._processed == {}, "not processed (committable) before the write is acked"
    table.ack()
    for _ in range(10):  # the gathered acks reach the callback a few loop turns later
        await asyncio.sleep(0)
    assert runner._processed == {TP0: 3}


async def test_changes_at_or_below_the_recorded_scn_and_row_are_skipped(
    runner: ConsumerRunner,
) -> None:
    runner.applied.data[f"{TOPIC}/0"] = {"scn": 10, "row": 1, "offset": 4, "source": "shop"}
    # A relay re-published 10/0 and 10/1 after a crash, at new offsets: they are skipped.
    await runner.process(
        batch(record(5, event(10, 0)), record(6, event(10, 1)), record(7, event(10, 2)))
    )
    assert runner.handler.calls == [[(10, 2)]]  # type: ignore[attr-defined]
    assert runner.stats.skipped == 2


async def test_what_the_destination_recorded_as_applied_is_skipped_by_offset_and_identity(
    runner: ConsumerRunner,
) -> None:
    # The table lost its last write in a crash; the destination holds offset 6, (10, 2).
    runner.applied.data[f"{TOPIC}/0"] = {"scn": 10, "row": 0, "offset": 4, "source": "shop"}
    runner.handler = FakeHandler(held=Applied(6, "shop", 10, 2))
    await runner.process(
        batch(
            record(5, event(10, 1)),
            record(6, event(10, 2)),
            record(7, event(10, 2)),
            record(8, event(10, 3)),
        )
    )
    # 5 and 6 by offset; 7, a re-published (10, 2), by the destination's identity.
    assert runner.handler.calls == [[(10, 3)]]
    assert runner.stats.skipped == 3


async def test_offsets_that_do_not_run_on_are_read_again_from_the_one_expected(
    runner: ConsumerRunner,
) -> None:
    runner.sequence._next[TP0] = 5
    await runner.process(batch(record(7, event(10, 0)), record(8, event(10, 1))))
    assert runner.handler.calls == []  # type: ignore[attr-defined]
    assert runner.app.round_consumer.seeks == [(TP0, 5)]  # type: ignore[attr-defined]
    assert runner.sequence._sought == {TP0: 7}
    # Read again from 5: processed in order.
    await runner.process(batch(record(5, event(9, 0)), record(6, event(9, 1)), serial=8))
    assert runner.handler.calls == [[(9, 0), (9, 1)]]  # type: ignore[attr-defined]
    assert runner.sequence._next[TP0] == 7 and TP0 not in runner.sequence._sought


async def test_a_transient_failure_is_retried_from_the_failed_change_and_nothing_is_skipped(
    runner: ConsumerRunner,
) -> None:
    down = EventFailed(1, ConnectionError("destination down"), transient=True)
    runner.handler = FakeHandler(failures=[down])
    await runner.process(
        batch(record(0, event(10, 0)), record(1, event(10, 1)), record(2, event(10, 2)))
    )
    assert runner.handler.calls == [[(10, 0), (10, 1), (10, 2)], [(10, 1), (10, 2)]]
    assert runner.stats.retries == 1
    assert runner.stats.dead_lettered == 0
    # The change before the failure was recorded before the retry, the rest after it.
    offsets = [document["offset"] for _, _, document in runner.applied.writes]  # type: ignore[attr-defined]
    assert offsets == [0, 2]


async def test_a_rejected_change_is_dead_lettered_and_the_rest_applied(
    runner: ConsumerRunner,
) -> None:
    rejected = EventFailed(0, ValueError("bad value for column x"), transient=False)
    runner.handler = FakeHandler(failures=[rejected])
    await runner.process(batch(record(0, event(10, 0)), record(1, event(10, 1))))
    assert runner.handler.calls == [[(10, 0), (10, 1)], [(10, 1)]]
    ((value, headers),) = runner.dlq.sent  # type: ignore[attr-defined]
    assert value == event(10, 0)
    assert headers["aesop.error.class"] == b"ValueError"
    assert headers["aesop.offset"] == b"0"
    assert runner.stats.dead_lettered == 1


async def test_a_message_that_is_no_change_event_is_dead_lettered_with_the_reason(
    runner: ConsumerRunner,
) -> None:
    await runner.process(batch(record(0, b"not json"), record(1, None), record(2, event(10, 0))))
    assert runner.handler.calls == [[(10, 0)]]  # type: ignore[attr-defined]
    reasons = [headers["aesop.error"].decode() for _, headers in runner.dlq.sent]  # type: ignore[attr-defined]
    assert reasons[0].startswith("not JSON") and reasons[1].startswith("null value")
    ((_, _, document),) = runner.applied.writes  # type: ignore[attr-defined]
    assert document["offset"] == 2, "the dead-lettered messages count as processed"


async def test_a_stop_while_a_transient_failure_is_retried_abandons_the_batch(
    runner: ConsumerRunner,
) -> None:
    runner.handler = FakeHandler(failures=[EventFailed(0, TimeoutError("slow"), transient=True)])
    runner._stopping = True
    with pytest.raises(consumer_module.Abandoned):
        await runner.process(batch(record(0, event(10, 0))))
    assert runner.applied.writes == []  # type: ignore[attr-defined]


async def test_offsets_that_jump_inside_a_batch_are_read_again_from_the_jump(
    runner: ConsumerRunner,
) -> None:
    # Two fetch rounds merged into one batch, with offsets 7 and 8 missing between them
    # (a round dropped on the way): 5 and 6 are applied, 9 and 10 wait for 7 and 8.
    runner.sequence._next[TP0] = 5
    await runner.process(
        batch(
            record(5, event(10, 0)),
            record(6, event(10, 1)),
            record(9, event(12, 0)),
            record(10, event(12, 1)),
        )
    )
    assert runner.handler.calls == [[(10, 0), (10, 1)]]  # type: ignore[attr-defined]
    assert runner.app.round_consumer.seeks == [(TP0, 7)]  # type: ignore[attr-defined]
    assert runner.sequence._next[TP0] == 7
    await runner.process(
        batch(record(7, event(11, 0)), record(8, event(11, 1)), record(9, event(12, 0)), serial=8)
    )
    assert runner.handler.calls[1] == [(11, 0), (11, 1), (12, 0)]  # type: ignore[attr-defined]


async def test_offsets_that_go_back_inside_a_batch_are_processed_and_skipped_by_identity(
    runner: ConsumerRunner,
) -> None:
    runner.sequence._next[TP0] = 5
    await runner.process(
        batch(record(5, event(10, 0)), record(6, event(10, 1)), record(5, event(10, 0)))
    )
    assert runner.handler.calls == [[(10, 0), (10, 1)]]  # type: ignore[attr-defined]
    assert runner.app.round_consumer.seeks == []  # type: ignore[attr-defined]


async def test_offsets_still_missing_after_several_reads_again_are_gone_on_from(
    runner: ConsumerRunner,
) -> None:
    runner.sequence._next[TP0] = 5
    gap = batch(record(7, event(10, 0)), record(8, event(10, 1)))
    await runner.process(gap)  # fetched before any seek: read again from 5
    for serial in (8, 9):  # fetched after the seek and still from 7: read again
        await runner.process(batch(*gap.records[TP0], serial=serial))
    assert runner.handler.calls == []  # type: ignore[attr-defined]
    assert runner.app.round_consumer.seeks == [(TP0, 5)] * 3  # type: ignore[attr-defined]
    await runner.process(batch(*gap.records[TP0], serial=10))  # the third time: gone on from
    assert runner.handler.calls == [[(10, 0), (10, 1)]]  # type: ignore[attr-defined]
    assert (
        runner.sequence._next[TP0] == 9
        and not runner.sequence._sought
        and not runner.sequence._rereads
    )
