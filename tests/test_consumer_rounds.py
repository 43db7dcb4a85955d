"""The consumer agent's handling of fetch rounds around a rebalance, and its stall watch, with
a fake app, stream and Kafka consumer.

A round of the current generation must never be dropped: Faust's seek to the committed
offsets may already be done when it arrives, and if no more changes come nothing would read
its records again (the consumer would stall with changes waiting). A round of an earlier
generation is dropped: that rebalance's seek reads it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from agents.consumer import ConsumerRunner
from agents.fetch import Round
from agents.sequence import OffsetSequence


class FakeApp:
    def __init__(self, generation: int, rebalancing: bool) -> None:
        self.consumer_generation_id = generation
        self.rebalancing = rebalancing
        self.flow_control = SimpleNamespace(is_active=lambda: True)
        self.consumer: FakeConsumer | None = None

    @property
    def round_consumer(self) -> FakeConsumer | None:
        return self.consumer


class Rounds:
    """A stream yielding the given rounds, as the agent's RoundTopic stream does."""

    def __init__(self, *rounds: Round) -> None:
        self.rounds = list(rounds)
        self.channel = SimpleNamespace(queue=asyncio.Queue())

    async def __aiter__(self) -> AsyncIterator[Round]:
        for batch in self.rounds:
            yield batch


class Agent:
    """ConsumerRunner's agent loop, around a fake app and a process() that records."""

    _agent = ConsumerRunner._agent
    _in_force = ConsumerRunner._in_force

    def __init__(self, app: FakeApp) -> None:
        self.app = app
        self._stopping = False
        self._idle = asyncio.Event()
        self.processed: list[Round] = []

    def _with_queued(self, queue: Any, batch: Round) -> Round:
        return batch

    async def process(self, batch: Round) -> None:
        self.processed.append(batch)


def round_of(generation: int) -> Round:
    return Round(generation, 1, {})


def run(agent: Agent, stream: Rounds, after: float, change: dict[str, Any]) -> None:
    """Run the agent over the stream; ``after`` seconds in, set ``change`` on the app."""

    async def main() -> None:
        asyncio.get_running_loop().call_later(
            after, lambda: [setattr(agent.app, k, v) for k, v in change.items()]
        )
        await asyncio.wait_for(agent._agent(stream), 5)

    asyncio.run(main())


def test_a_round_of_the_current_generation_waits_out_the_rebalance_and_is_processed() -> None:
    agent = Agent(FakeApp(generation=3, rebalancing=True))
    batch = round_of(3)
    run(agent, Rounds(batch), 0.2, {"rebalancing": False})
    assert agent.processed == [batch]


def test_a_round_whose_rebalance_ends_in_a_new_generation_is_dropped() -> None:
    agent = Agent(FakeApp(generation=3, rebalancing=True))
    run(agent, Rounds(round_of(3)), 0.2, {"rebalancing": False, "consumer_generation_id": 4})
    assert agent.processed == []


def test_a_round_of_an_earlier_generation_is_dropped_and_the_next_one_processed() -> None:
    agent = Agent(FakeApp(generation=4, rebalancing=False))
    current = round_of(4)
    run(agent, Rounds(round_of(3), current), 0.0, {})
    assert agent.processed == [current]


def test_a_stop_during_the_rebalance_drops_the_round() -> None:
    agent = Agent(FakeApp(generation=3, rebalancing=True))

    async def main() -> None:
        asyncio.get_running_loop().call_later(0.2, setattr, agent, "_stopping", True)
        await asyncio.wait_for(agent._agent(Rounds(round_of(3))), 5)

    asyncio.run(main())
    assert agent.processed == []


TP0 = TP("t", 0)


class FakeConsumer:
    def __init__(self, highwater: int) -> None:
        self.high = highwater
        self.committed: dict[TP, int] = {}
        self.seeks: list[tuple[TP, int]] = []

    def committed_offset(self, tp: TP) -> int | None:
        return self.committed.get(tp)

    def assignment(self) -> set[TP]:
        return {TP0, TP("other-topic", 0)}

    def highwater(self, tp: TP) -> int:
        return self.high

    async def seek_now(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


class Watched:
    """ConsumerRunner's stall watch, around a fake app and consumer."""

    stalled = ConsumerRunner.stalled
    check_stalls = ConsumerRunner.check_stalls
    _stalled_partitions = ConsumerRunner._stalled_partitions
    _position_of = ConsumerRunner._position_of
    name = "c"

    def __init__(self, highwater: int, processed: int) -> None:
        self.app = FakeApp(generation=1, rebalancing=False)
        self.app.consumer = FakeConsumer(highwater)
        self.settings = SimpleNamespace(lag=SimpleNamespace(stalled_seconds=5.0))
        self.consumer = SimpleNamespace(topics=["t"])
        self.positions = SimpleNamespace(stored=lambda tp: None)
        self._stopping = False
        self._moved_at: dict[TP, float] = {}
        self._retrying: str | None = None
        self._stalled: set[TP] = set()
        self._processed = {TP0: processed}
        self.sequence = OffsetSequence("c", lambda: self.app.consumer)
        self.sequence._next = {TP0: highwater}
        self.sequence._sought = {TP0: 3}
        self._idle = asyncio.Event()
        self._idle.set()

    def age(self, seconds: float) -> None:
        """As if the partition had not moved on for ``seconds``."""
        self._moved_at[TP0] = time.monotonic() - seconds


def test_a_partition_with_changes_waiting_is_not_stalled_before_stalled_seconds() -> None:
    watched = Watched(highwater=10, processed=4)
    asyncio.run(watched.check_stalls())  # first seen waiting: the count starts
    watched.age(4.0)
    asyncio.run(watched.check_stalls())
    assert watched.stalled() == [] and watched.app.consumer.seeks == []


def test_a_stalled_partition_with_no_batch_in_hand_is_read_again_from_where_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watched = Watched(highwater=10, processed=4)
    watched.age(6.0)
    assert watched.stalled() == ["consumer c: t/0: 6 changes waiting, none processed for 6s"]
    asyncio.run(watched.check_stalls())
    assert watched.app.consumer.seeks == [(TP0, 4)]
    assert watched.sequence._next[TP0] == 4 and TP0 not in watched.sequence._sought
    assert "; reading it again from offset 4" in caplog.text
    assert watched.stalled() == [], "a full period before it is judged again"


def test_a_partition_waiting_on_a_retried_failure_is_reported_not_sought(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    watched = Watched(highwater=10, processed=4)
    watched._retrying = "OperationalError: x"
    watched._idle.clear()
    watched.age(7.0)
    asyncio.run(watched.check_stalls())
    assert watched.app.consumer.seeks == []
    assert watched.stalled() == [
        "consumer c: t/0: 6 changes waiting, none processed for 7s; retrying: OperationalError: x"
    ]
    watched.app.consumer.high = 4  # all processed
    asyncio.run(watched.check_stalls())
    assert watched.stalled() == [] and "t/0 moves again" in caplog.text


def test_no_partition_is_judged_during_a_rebalance() -> None:
    watched = Watched(highwater=10, processed=4)
    watched.age(60.0)
    watched.app.rebalancing = True
    assert watched.stalled() == [] and watched._moved_at == {}
