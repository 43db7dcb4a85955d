"""start_waiting: a client start that Kafka refuses is tried again with a new client, one
warning line per attempt, until it starts or the service stops."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from app.kafka_start import start_waiting


class FakeClient:
    def __init__(self, fails: list[bool]) -> None:
        self.fails = fails
        self.stopped = False

    async def start(self) -> None:
        if self.fails.pop(0):
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9)]")

    async def stop(self) -> None:
        self.stopped = True


class FakeService:
    def __init__(self, stop_after_sleeps: int | None = None) -> None:
        self.slept: list[float] = []
        self.stop_after = stop_after_sleeps

    @property
    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.slept) >= self.stop_after

    async def sleep(self, n: float) -> None:
        self.slept.append(n)


def test_a_refused_start_is_retried_with_a_new_client(caplog: pytest.LogCaptureFixture) -> None:
    outcomes = [True, True, False]
    made: list[FakeClient] = []

    def make() -> FakeClient:
        made.append(FakeClient(outcomes))
        return made[-1]

    service = FakeService()
    with caplog.at_level(logging.WARNING):
        client = asyncio.run(start_waiting(service, make, "consumer", "127.0.0.1:9"))
    assert client is made[2] and not client.stopped
    assert [c.stopped for c in made[:2]] == [True, True]
    assert len(service.slept) == 2 and 0.3 <= service.slept[0] <= 0.7
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("kafka 127.0.0.1:9: consumer: KafkaConnectionError")
    assert "; waiting for it, next attempt in" in lines[0]


def test_a_stop_while_waiting_returns_no_client() -> None:
    made: list[FakeClient] = []

    def make() -> FakeClient:
        made.append(FakeClient([True]))
        return made[-1]

    service = FakeService(stop_after_sleeps=3)
    assert asyncio.run(start_waiting(service, make, "producer", "127.0.0.1:9")) is None
    assert len(made) == 3 and all(c.stopped for c in made)


def test_other_errors_are_not_waited_for() -> None:
    class Broken(FakeClient):
        async def start(self) -> None:
            raise ValueError("bad config")

    with pytest.raises(ValueError):
        asyncio.run(start_waiting(FakeService(), lambda: Broken([]), "consumer", "x:1"))


def test_the_worker_and_every_consumer_app_start_their_consumer_through_the_waiting_loop() -> None:
    """The worker's app gets its WaitingConsumer from install(); each [[consumer]] app from
    its transport (agents.fetch): both run a WaitingConsumerThread."""
    from agents import fetch
    from agents.fetch import RoundTransport
    from app.kafka_start import WaitingConsumer, WaitingConsumerThread

    assert issubclass(RoundTransport.Consumer, WaitingConsumer)
    made: list[tuple[Any, dict[str, Any]]] = []

    class Recorder:
        def __init__(self, consumer: Any, **kwargs: Any) -> None:
            made.append((consumer, kwargs))

    consumer = SimpleNamespace(loop="loop", beacon="beacon")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fetch, "RoundConsumerThread", Recorder)
        assert isinstance(RoundTransport.Consumer._new_consumer_thread(consumer), Recorder)
    assert made == [(consumer, {"loop": "loop", "beacon": "beacon"})]
    assert issubclass(fetch.RoundConsumerThread, WaitingConsumerThread)


def test_a_consumer_apps_fetch_is_held_by_kafka_at_most_100_ms() -> None:
    """faust asks Kafka to hold a fetch up to 1.5 s; a consumer app's thread creates its
    aiokafka consumer with FETCH_MAX_WAIT_MS, the worker's own keeps faust's setting."""
    from agents.fetch import FETCH_MAX_WAIT_MS, RoundConsumerThread
    from app.errors import LibraryVersionError
    from app.kafka_start import WaitingConsumerThread

    def made_by(thread_class: type, consumer: Any) -> Any:
        thread = thread_class.__new__(thread_class)
        thread._create_consumer = lambda loop: consumer
        thread.thread_loop = None
        return thread._new_aiokafka_consumer()

    assert FETCH_MAX_WAIT_MS == 100
    held = made_by(RoundConsumerThread, SimpleNamespace(_fetch_max_wait_ms=1500))
    assert held._fetch_max_wait_ms == 100
    own = made_by(WaitingConsumerThread, SimpleNamespace(_fetch_max_wait_ms=1500))
    assert own._fetch_max_wait_ms == 1500
    with pytest.raises(LibraryVersionError, match="_fetch_max_wait_ms"):
        made_by(RoundConsumerThread, SimpleNamespace())
