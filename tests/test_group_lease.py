"""The group lease a relay publishes under: timed confirmations of the group membership, a
relay that drops what it holds once the lease lapsed, and a source given to this worker that
waits for the previous reader to stop (fakes in place of Kafka and ZooKeeper)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from app.errors import LibraryVersionError
from app.group_lease import CONFIRMED_AT, GroupLease, lease_limit, patch_coordinator
from relay.handoff import Batch, Handoff, SerializedChange
from relay.service import HANDED_OVER_AFTER_S, RelayManager
from relay.source import STOPPING, SourceRelay


@pytest.mark.parametrize(
    ("session", "heartbeat", "limit"),
    [(20, 3, 10), (45, 3, 22.5), (10, 3, 6), (6, 3, 5), (6, 1, 3)],
)
def test_the_lease_lapses_inside_the_session_and_after_two_heartbeats(
    session: float, heartbeat: float, limit: float
) -> None:
    assert lease_limit(session, heartbeat) == limit
    assert lease_limit(session, heartbeat) < session


class Coordinator:
    """aiokafka's GroupCoordinator, as far as the patch sees it."""

    answers: list[bool] = []

    async def _do_heartbeat(self) -> bool:
        return self.answers.pop(0)

    async def _do_rejoin_group(self, subscription: Any) -> bool:
        return self.answers.pop(0)


def test_only_a_successful_heartbeat_or_join_confirms_the_membership() -> None:
    patch_coordinator(Coordinator)
    patch_coordinator(Coordinator)  # once per process: a second call wraps nothing again
    coordinator = Coordinator()

    def confirmed_after(call: Any, answer: bool) -> float | None:
        Coordinator.answers = [answer]
        assert asyncio.run(call()) is answer  # the answer itself is passed on
        return getattr(coordinator, CONFIRMED_AT, None)

    assert confirmed_after(coordinator._do_heartbeat, False) is None
    first = confirmed_after(coordinator._do_heartbeat, True)
    assert first is not None
    assert confirmed_after(coordinator._do_heartbeat, False) == first
    assert confirmed_after(lambda: coordinator._do_rejoin_group(None), False) == first
    rejoined = confirmed_after(lambda: coordinator._do_rejoin_group(None), True)
    assert rejoined is not None and rejoined > first


class SlowCoordinator:
    """Answers after a while; a rebalance may be under way (``_rejoin_needed_fut`` done)."""

    def __init__(self, rebalancing: bool) -> None:
        self._rejoin_needed_fut = SimpleNamespace(done=lambda: rebalancing)

    async def _do_heartbeat(self) -> bool:
        await asyncio.sleep(0.2)
        return True

    async def _do_rejoin_group(self, subscription: Any) -> bool:
        return True


def test_a_confirmation_counts_from_when_its_request_was_sent_and_not_during_a_rebalance() -> None:
    patch_coordinator(SlowCoordinator)
    steady = SlowCoordinator(rebalancing=False)
    before = time.monotonic()
    asyncio.run(steady._do_heartbeat())
    stamped = getattr(steady, CONFIRMED_AT)
    assert before <= stamped < before + 0.1, "stamped when the answer came, not when sent"
    rebalancing = SlowCoordinator(rebalancing=True)
    asyncio.run(rebalancing._do_heartbeat())
    asyncio.run(rebalancing._do_rejoin_group(None))
    assert getattr(rebalancing, CONFIRMED_AT, None) is None


def test_a_library_without_the_timed_calls_is_refused_in_one_line() -> None:
    class Other:
        pass

    with pytest.raises(LibraryVersionError, match=r"requirements\.lock"):
        patch_coordinator(Other)


def app_confirmed(at: float | None) -> Any:
    coordinator = SimpleNamespace(**({} if at is None else {CONFIRMED_AT: at}))
    kafka = SimpleNamespace(_coordinator=coordinator)
    return SimpleNamespace(_consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=kafka)))


def test_the_lease_is_held_while_the_last_confirmation_is_recent() -> None:
    assert not GroupLease(SimpleNamespace(), 20, 3).held()  # no consumer yet
    assert not GroupLease(app_confirmed(None), 20, 3).held()  # never confirmed
    assert GroupLease(app_confirmed(time.monotonic() - 9), 20, 3).held()
    lapsed = GroupLease(app_confirmed(time.monotonic() - 11), 20, 3)
    assert not lapsed.held()
    assert 11 <= lapsed.silence() < 12  # type: ignore[operator]


class Lease:
    limit = 10.0
    session_timeout = 20.0

    def __init__(self) -> None:
        self.holds = True
        self.silent_for = 12.0

    def held(self) -> bool:
        return self.holds

    def silence(self) -> float | None:
        return 3.0 if self.holds else self.silent_for


def test_a_relay_whose_lease_lapsed_publishes_nothing_it_holds_and_stops_reading() -> None:
    lease = Lease()
    source = SimpleNamespace(name="shop", topic="aesop.shop")
    relay = SourceRelay(SimpleNamespace(producer=None), source, None, lease)  # type: ignore[arg-type]
    stopped: list[bool] = []
    relay._reader = SimpleNamespace(stop=lambda: stopped.append(True))  # type: ignore[assignment]

    async def pump() -> BaseException | None:
        loop = asyncio.get_running_loop()
        handoff = Handoff(loop, 2)
        never = loop.create_future()
        done = loop.create_future()
        lease.holds = False
        for n in range(2):  # the handoff's whole capacity
            change = SerializedChange(b"k", b"v", 1, n)
            handoff.put(Batch([change]), SimpleNamespace(is_set=lambda: False))  # type: ignore[arg-type]
        pumping = asyncio.ensure_future(relay._pump(handoff, done, never))
        await asyncio.sleep(0.05)
        # Dropped, and their room given back: the reader, stopping, never waits for it.
        handoff.put(Batch(), SimpleNamespace(is_set=lambda: False))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        done.set_result(None)
        return await asyncio.wait_for(pumping, 5)

    assert asyncio.run(pump()) is None
    assert not relay._in_flight, "a batch was published without the lease"
    assert relay.fenced and relay.halted and stopped
    assert relay.state == STOPPING and "no answer from the Kafka group for 12s" in str(relay.reason)


class Mirror:
    """The ZooKeeper mirror: a heartbeat document per source."""

    enabled = True
    connected = True

    def __init__(self, beat: dict[str, Any] | None) -> None:
        self.beat = beat

    async def read(self, path: str, timeout: float = 0) -> Any:
        return self.beat


def manager(beat: dict[str, Any] | None, session_timeout: float = 20) -> RelayManager:
    app = SimpleNamespace(conf=SimpleNamespace(web_port=6066))
    store = SimpleNamespace(zk=Mirror(beat))
    return RelayManager(app, (), store, session_timeout=session_timeout)  # type: ignore[arg-type]


def beat(worker: str, state: str, age: float) -> dict[str, Any]:
    return {"worker": worker, "state": state, "ts_ms": int((time.time() - age) * 1000)}


def test_a_source_given_here_waits_until_the_previous_reader_stopped() -> None:
    async def free(beat: dict[str, Any] | None) -> bool:
        return await manager(beat)._free("shop")

    assert asyncio.run(free(None))  # never read anywhere
    assert asyncio.run(free(beat("other:6066 (pid 1)", "stopped", 0.5)))
    assert asyncio.run(free(beat("other:6066 (pid 1)", "reading", HANDED_OVER_AFTER_S + 1)))
    assert not asyncio.run(free(beat("other:6066 (pid 1)", "reading", 0.5)))
    assert not asyncio.run(free(beat("other:6066 (pid 1)", "stopping", 0.5)))

    async def own() -> bool:
        relays = manager(None)
        relays.store.zk.beat = beat(relays.worker, "reading", 0.5)
        return await relays._free("shop")

    assert asyncio.run(own())


def test_a_reader_that_never_stops_is_waited_for_no_longer_than_the_session_and_a_drain() -> None:
    async def waits() -> list[bool]:
        relays = manager(beat("other:6066 (pid 1)", "stopping", 0.5), session_timeout=6)
        first = await relays._free("shop")
        relays._waiting_since["shop"] -= relays.handover_wait + 1
        return [first, await relays._free("shop"), "shop" in relays._waiting_since]

    assert asyncio.run(waits()) == [False, True, False]


def test_without_zookeeper_nothing_is_waited_for() -> None:
    async def free() -> bool:
        relays = manager(beat("other:6066 (pid 1)", "reading", 0.5))
        relays.store.zk.enabled = False
        return await relays._free("shop")

    assert asyncio.run(free())
