"""app.assignor: a topic missing from the leader's metadata is looked up again until it shows."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import app.assignor as assignor
from app.assignor import WholeAssignor


class Cluster:
    """Metadata that lists ``topics``; ``appear`` joins them at the ``after``-th refresh."""

    def __init__(self, topics: set[str], appear: set[str], after: int) -> None:
        self.topics = set(topics)
        self.appear = appear
        self.after = after
        self.refreshes = 0

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0, 1} if topic in self.topics else None

    async def refresh(self) -> None:
        self.refreshes += 1
        if self.refreshes >= self.after:
            self.topics |= self.appear


def whole_assignor(cluster: Cluster) -> WholeAssignor:
    client = SimpleNamespace(force_metadata_update=cluster.refresh)
    consumer = SimpleNamespace(_client=client)
    thread = SimpleNamespace(_ensure_consumer=lambda: consumer)
    app = SimpleNamespace(tables=None, consumer=SimpleNamespace(_thread=thread))
    return WholeAssignor(app)


def members(*subscriptions: list[str]) -> dict[str, Any]:
    return {f"m{i}": SimpleNamespace(subscription=s) for i, s in enumerate(subscriptions)}


async def test_a_missing_topic_is_refreshed_until_the_metadata_lists_it(monkeypatch) -> None:
    monkeypatch.setattr(assignor, "REFRESH_EVERY_S", 0.01)
    cluster = Cluster({"events"}, appear={"x-source_to_checkpoint-changelog"}, after=3)
    whole = whole_assignor(cluster)
    whole.watch_missing(
        cluster, members(["events"], ["events", "x-source_to_checkpoint-changelog"])
    )
    assert whole._refreshing is not None
    await asyncio.wait_for(whole._refreshing, 5)
    assert cluster.refreshes == 3, "refreshed until the topic showed up, then stopped"
    # The next assignment sees every topic: nothing more to refresh.
    whole.watch_missing(cluster, members(["events", "x-source_to_checkpoint-changelog"]))
    await asyncio.wait_for(whole._refreshing, 5)
    assert cluster.refreshes == 3


async def test_a_complete_metadata_costs_no_refresh() -> None:
    cluster = Cluster({"a", "b"}, appear=set(), after=1)
    whole = whole_assignor(cluster)
    whole.watch_missing(cluster, members(["a"], ["b"]))
    assert whole._refreshing is None and cluster.refreshes == 0


async def test_refreshing_gives_up_after_its_time(monkeypatch) -> None:
    monkeypatch.setattr(assignor, "REFRESH_EVERY_S", 0.01)
    monkeypatch.setattr(assignor, "REFRESH_FOR_S", 0.1)
    cluster = Cluster(set(), appear=set(), after=1)
    whole = whole_assignor(cluster)
    whole.watch_missing(cluster, members(["gone"]))
    assert whole._refreshing is not None
    await asyncio.wait_for(whole._refreshing, 5)
    assert 3 <= cluster.refreshes <= 20
