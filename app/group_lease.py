"""Whether this worker is still a member of its Kafka group: the lease a relay publishes under.

A source's relay runs where its checkpoint partition is assigned, but an assignment is only
as good as the membership behind it. A worker that stops hearing from the group coordinator
(Kafka down, a network cut, the process paused) is expired by the broker after
``session_timeout``, and its partitions go to another worker, which starts the source's relay;
the first worker learns it only when it next reaches the coordinator, and until then two
relays would publish the same changes, the second from an older checkpoint.

So every answer of the coordinator that confirms the membership (a heartbeat, a completed
join, not while a rebalance is under way) is timed from when its request was sent, and a
relay publishes only while the last one is younger than
:func:`lease_limit`: well inside the session timeout, so that it has stopped before the
broker can give its partition away. A relay that finds the lease gone stops reading, lets
Kafka acknowledge what it already sent and saves its checkpoint; it reads again once the
group confirms this worker, or hands over to the worker that took the partition.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator

from app.errors import LibraryVersionError

CONFIRMED_AT = "aesop_confirmed_at"


def lease_limit(session_timeout: float, heartbeat_interval: float) -> float:
    """Seconds without a confirmation after which a relay stops: half the session timeout,
    but at least two heartbeat intervals (one late heartbeat is no reason to stop), and
    always one second inside the session timeout."""
    return max(session_timeout / 2, min(session_timeout - 1, 2 * heartbeat_interval))


def _confirm(coordinator: Any, sent_at: float) -> None:
    """The broker heard from this member at ``sent_at`` at the latest, and kept it, unless a
    rebalance is under way (which may still end without it)."""
    rejoin = getattr(coordinator, "_rejoin_needed_fut", None)
    if rejoin is not None and rejoin.done():
        return
    if sent_at > getattr(coordinator, CONFIRMED_AT, 0.0):
        setattr(coordinator, CONFIRMED_AT, sent_at)


def patch_coordinator(coordinator_class: Any = GroupCoordinator) -> None:
    """Time aiokafka's successful heartbeats and joins (once per process)."""
    if getattr(coordinator_class, "_aesop_timed", False):
        return
    try:
        heartbeat = coordinator_class._do_heartbeat
        rejoin = coordinator_class._do_rejoin_group
    except AttributeError:
        raise LibraryVersionError(
            "this aiokafka has no GroupCoordinator._do_heartbeat/_do_rejoin_group; install "
            "the versions of requirements.lock"
        ) from None

    async def _do_heartbeat(self: Any) -> bool:
        sent_at = time.monotonic()
        confirmed = bool(await heartbeat(self))
        if confirmed:
            _confirm(self, sent_at)
        return confirmed

    async def _do_rejoin_group(self: Any, subscription: Any) -> bool:
        sent_at = time.monotonic()
        joined = bool(await rejoin(self, subscription))
        if joined:
            _confirm(self, sent_at)
        return joined

    coordinator_class._do_heartbeat = _do_heartbeat
    coordinator_class._do_rejoin_group = _do_rejoin_group
    coordinator_class._aesop_timed = True


class GroupLease:
    """Whether the worker's consumer heard from its group coordinator recently enough."""

    def __init__(self, app: Any, session_timeout: float, heartbeat_interval: float) -> None:
        self.app = app
        self.limit = lease_limit(session_timeout, heartbeat_interval)

    def confirmed_at(self) -> float | None:
        """When (``time.monotonic``) the coordinator last confirmed the membership."""
        consumer = getattr(self.app, "_consumer", None)
        thread = getattr(consumer, "_thread", None)
        coordinator = getattr(getattr(thread, "_consumer", None), "_coordinator", None)
        value = getattr(coordinator, CONFIRMED_AT, None)
        return value if isinstance(value, float) else None

    def silence(self) -> float | None:
        """Seconds since the last confirmation; None before the first."""
        confirmed = self.confirmed_at()
        return None if confirmed is None else time.monotonic() - confirmed

    def held(self) -> bool:
        silence = self.silence()
        return silence is not None and silence < self.limit


def install(app: Any, session_timeout: float) -> GroupLease:
    patch_coordinator()
    return GroupLease(app, session_timeout, app.conf.broker_heartbeat_interval)
