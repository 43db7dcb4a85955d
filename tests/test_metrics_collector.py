"""AesopCollector from canned relay and consumer state, read through a Prometheus registry.

The fakes hold exactly what the collector reads: the relay manager's ``relays``, ``sources``
and ``unread_for``; a relay's counters, state and checkpoints; a consumer runner's ``stats``,
topics, applied table and its app's Kafka consumer (assignment and high watermarks).
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry

from agents.consumer import Stats
from metrics.collector import STATES, AesopCollector
from relay.source import FAILED, READING, RETRYING, STARTING, STOPPED, STOPPING
from tables.positions import Checkpoint, Position, SnapshotProgress

NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def checkpoint(scn: int, ts_ms: int) -> Checkpoint:
    return Checkpoint("mysql-bin.000001", 4, None, scn, 0, ts_ms)


def relay(**fields: Any) -> SimpleNamespace:
    """A SourceRelay as the collector reads it; nothing acknowledged unless given."""
    defaults: dict[str, Any] = {
        "published": Counter(),
        "reconnects": 0,
        "state": STARTING,
        "lag_s": None,
        "last_commit_ts": None,
        "acked": None,
        "saved": None,
    }
    return SimpleNamespace(**{**defaults, **fields})


class Relays:
    """The RelayManager: the relays it runs, every configured source, and unread seconds."""

    def __init__(
        self,
        relays: dict[str, SimpleNamespace] | None = None,
        sources: tuple[str, ...] = (),
        unread: dict[str, float] | None = None,
    ) -> None:
        self.relays = relays or {}
        self.sources = [SimpleNamespace(name=name) for name in sources]
        self.unread = unread or {}
        self.asked: list[tuple[str, float | None]] = []

    def unread_for(self, name: str, now: float | None = None) -> float | None:
        self.asked.append((name, now))
        return self.unread.get(name)


class KafkaConsumer:
    """The consumer app's Kafka consumer: its assignment and the partitions' high watermarks."""

    def __init__(self, assignment: set[TP], highwaters: dict[TP, int]) -> None:
        self._assignment = assignment
        self.highwaters = highwaters
        self.running = True

    def assignment(self) -> set[TP]:
        if not self.running:
            raise RuntimeError("consumer not started")
        return set(self._assignment)

    def highwater(self, tp: TP) -> int:
        return self.highwaters[tp]  # KeyError: not fetched from yet


def runner(
    name: str,
    topics: list[str],
    assignment: frozenset[TP] | set[TP] = frozenset(),
    highwaters: dict[TP, int] | None = None,
    applied: dict[str, dict[str, Any]] | None = None,
    stats: Stats | None = None,
) -> SimpleNamespace:
    """A ConsumerRunner as the collector reads it, its app started."""
    app = SimpleNamespace(
        started=True,
        should_stop=False,
        consumer=KafkaConsumer(set(assignment), highwaters or {}),
    )
    return SimpleNamespace(
        name=name,
        stats=stats or Stats(),
        app=app,
        consumer=SimpleNamespace(topics=topics),
        applied=SimpleNamespace(data=applied or {}),
    )


def position(scn: int, offset: int, ts: float, source: str | None = "shop") -> dict[str, Any]:
    """An applied table entry, as AppliedPosition.to_json writes it."""
    return {"scn": scn, "row": 0, "offset": offset, "ts_ms": int(ts * 1000), "source": source}


def registry_of(collector: AesopCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name``: its labels (sorted) -> value."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def labels(**given: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(given.items()))


FAMILIES = {
    "aesop_relay_events_published": "counter",
    "aesop_relay_reconnects": "counter",
    "aesop_relay_state": "gauge",
    "aesop_relay_lag_seconds": "gauge",
    "aesop_relay_last_event_timestamp_seconds": "gauge",
    "aesop_relay_scn": "gauge",
    "aesop_relay_checkpoint_age_seconds": "gauge",
    "aesop_consumer_events_consumed": "counter",
    "aesop_consumer_events_applied": "counter",
    "aesop_consumer_skipped": "counter",
    "aesop_consumer_dead_lettered": "counter",
    "aesop_consumer_retries": "counter",
    "aesop_consumer_applied_scn": "gauge",
    "aesop_consumer_lag_events": "gauge",
    "aesop_consumer_lag_seconds": "gauge",
    "aesop_source_unread_seconds": "gauge",
    "aesop_snapshot_running": "gauge",
    "aesop_snapshot_tables_left": "gauge",
    "aesop_snapshot_rows": "gauge",
    "aesop_snapshot_table_rows": "gauge",
    "aesop_snapshot_table_rows_estimate": "gauge",
    "aesop_snapshot_table_chunks": "gauge",
}


def test_describe_and_collect_name_the_same_families_with_their_types() -> None:
    collector = AesopCollector(Relays(), [], clock=Clock())
    described = {f.name: f.type for f in collector.describe()}
    collected = {f.name: f.type for f in collector.collect()}
    assert described == collected == FAMILIES
    assert all(f.documentation for f in collector.describe())
    assert STATES == (STARTING, READING, RETRYING, FAILED, STOPPING, STOPPED)


def test_nothing_to_report_gives_families_without_samples() -> None:
    registry = registry_of(AesopCollector(Relays(), [], clock=Clock()))
    families = list(registry.collect())
    assert {f.name for f in families} == set(FAMILIES)
    assert all(f.samples == [] for f in families)


def test_relay_series_from_what_kafka_acknowledged() -> None:
    shop = relay(
        published=Counter({("shop", "orders", "c"): 5, ("shop", "orders", "u"): 2,
                           ("shop", "items", "d"): 1}),
        reconnects=3,
        state=READING,
        lag_s=0.25,
        last_commit_ts=1_699_999_990,
        acked=checkpoint(scn=(1 << 32) | 1234, ts_ms=int((NOW - 1) * 1000)),
        saved=checkpoint(scn=(1 << 32) | 1000, ts_ms=int((NOW - 7.5) * 1000)),
    )  # fmt: skip
    registry = registry_of(AesopCollector(Relays({"shop": shop}, ("shop",)), [], clock=Clock()))

    assert samples(registry, "aesop_relay_events_published_total") == {
        labels(source="shop", table="shop.orders", op="c"): 5,
        labels(source="shop", table="shop.orders", op="u"): 2,
        labels(source="shop", table="shop.items", op="d"): 1,
    }
    assert samples(registry, "aesop_relay_reconnects_total") == {labels(source="shop"): 3}
    assert samples(registry, "aesop_relay_state") == {
        labels(source="shop", state=state): 1.0 if state == READING else 0.0 for state in STATES
    }
    get = registry.get_sample_value
    assert get("aesop_relay_lag_seconds", {"source": "shop"}) == 0.25
    assert get("aesop_relay_last_event_timestamp_seconds", {"source": "shop"}) == 1_699_999_990
    assert get("aesop_relay_scn", {"source": "shop"}) == (1 << 32) | 1234
    assert get("aesop_relay_checkpoint_age_seconds", {"source": "shop"}) == pytest.approx(7.5)


@pytest.mark.parametrize("state", [STARTING, READING, RETRYING, FAILED, STOPPED])
def test_exactly_one_relay_state_is_one(state: str) -> None:
    registry = registry_of(AesopCollector(Relays({"shop": relay(state=state)}), [], clock=Clock()))
    ones = [dict(k)["state"] for k, v in samples(registry, "aesop_relay_state").items() if v]
    assert ones == [state]
    assert len(samples(registry, "aesop_relay_state")) == len(STATES)


def test_a_relay_with_nothing_acknowledged_has_no_lag_timestamp_scn_or_age() -> None:
    registry = registry_of(AesopCollector(Relays({"new": relay()}), [], clock=Clock()))
    for name in (
        "aesop_relay_lag_seconds",
        "aesop_relay_last_event_timestamp_seconds",
        "aesop_relay_scn",
        "aesop_relay_checkpoint_age_seconds",
        "aesop_relay_events_published_total",
    ):
        assert samples(registry, name) == {}, name
    assert samples(registry, "aesop_relay_reconnects_total") == {labels(source="new"): 0}
    assert registry.get_sample_value("aesop_relay_state", {"source": "new", "state": STARTING})


def test_a_checkpoint_saved_after_the_clock_reads_is_no_negative_age() -> None:
    saved = checkpoint(scn=1, ts_ms=int((NOW + 3) * 1000))
    registry = registry_of(AesopCollector(Relays({"a": relay(saved=saved)}), [], clock=Clock()))
    assert registry.get_sample_value("aesop_relay_checkpoint_age_seconds", {"source": "a"}) == 0.0


def test_unread_seconds_for_every_configured_source_zero_when_read() -> None:
    relays = Relays({"shop": relay()}, sources=("shop", "billing", "crm"), unread={"billing": 42.0})
    registry = registry_of(AesopCollector(relays, [], clock=Clock()))
    assert samples(registry, "aesop_source_unread_seconds") == {
        labels(source="shop"): 0.0,
        labels(source="billing"): 42.0,
        labels(source="crm"): 0.0,
    }
    # Asked with the scrape's own clock.
    assert set(relays.asked) == {("shop", NOW), ("billing", NOW), ("crm", NOW)}


def test_relays_are_reported_for_the_relays_this_worker_runs_only() -> None:
    relays = Relays({"shop": relay(reconnects=1)}, sources=("shop", "billing"))
    registry = registry_of(AesopCollector(relays, [], clock=Clock()))
    assert samples(registry, "aesop_relay_reconnects_total") == {labels(source="shop"): 1}
    assert {dict(k)["source"] for k in samples(registry, "aesop_relay_state")} == {"shop"}


def test_consumer_counters() -> None:
    stats = Stats()
    stats.consumed = 100
    stats.applied.update({("shop", "shop.orders", "c"): 60, ("crm", "crm.people", "u"): 30})
    stats.skipped = 7
    stats.dead_lettered = 2
    stats.retries = 4
    registry = registry_of(
        AesopCollector(Relays(), [runner("replica", ["aesop.shop"], stats=stats)], clock=Clock())
    )
    get = registry.get_sample_value
    assert get("aesop_consumer_events_consumed_total", {"consumer": "replica"}) == 100
    assert samples(registry, "aesop_consumer_events_applied_total") == {
        labels(consumer="replica", source="shop", table="shop.orders", op="c"): 60,
        labels(consumer="replica", source="crm", table="crm.people", op="u"): 30,
    }
    assert get("aesop_consumer_skipped_total", {"consumer": "replica"}) == 7
    assert get("aesop_consumer_dead_lettered_total", {"consumer": "replica"}) == 2
    assert get("aesop_consumer_retries_total", {"consumer": "replica"}) == 4


def test_partition_series_from_the_applied_table_and_the_high_watermarks() -> None:
    t0, t1, t2 = TP("aesop.shop", 0), TP("aesop.shop", 1), TP("aesop.shop", 2)
    consumer = runner(
        "replica",
        ["aesop.shop"],
        assignment={t0, t1, t2},
        highwaters={t0: 11, t1: 50, t2: 3},
        applied={
            "aesop.shop/0": position(scn=900, offset=10, ts=NOW - 5),  # caught up
            "aesop.shop/1": position(scn=800, offset=39, ts=NOW - 5),  # 10 behind
            # partition 2: nothing applied yet, 3 messages waiting
        },
    )
    registry = registry_of(AesopCollector(Relays(), [consumer], clock=Clock()))

    def p(partition: int) -> dict[str, str]:
        return {"consumer": "replica", "topic": "aesop.shop", "partition": str(partition)}

    assert samples(registry, "aesop_consumer_applied_scn") == {
        labels(**p(0), source="shop"): 900,
        labels(**p(1), source="shop"): 800,
    }
    assert samples(registry, "aesop_consumer_lag_events") == {
        labels(**p(0)): 0,
        labels(**p(1)): 10,
        labels(**p(2)): 3,
    }
    # Waiting since the first scrape saw it (later than partition 1's last apply): 0 so far.
    assert samples(registry, "aesop_consumer_lag_seconds") == {
        labels(**p(0)): 0.0,
        labels(**p(1)): 0.0,
        labels(**p(2)): 0.0,
    }


def test_lag_seconds_counts_from_the_later_of_first_seen_waiting_and_last_applied() -> None:
    tp = TP("aesop.shop", 0)
    clock = Clock()
    applied: dict[str, dict[str, Any]] = {"aesop.shop/0": position(900, offset=4, ts=NOW - 60)}
    consumer = runner("r", ["aesop.shop"], {tp}, {tp: 10}, applied)
    registry = registry_of(AesopCollector(Relays(), [consumer], clock=clock))

    def lag() -> float | None:
        return registry.get_sample_value(
            "aesop_consumer_lag_seconds", {"consumer": "r", "topic": "aesop.shop", "partition": "0"}
        )

    assert lag() == 0.0  # first seen waiting now, though last applied a minute ago
    clock.now = NOW + 30
    assert lag() == pytest.approx(30.0)
    # It applied something 10 s ago and is still behind: counted from then.
    applied["aesop.shop/0"] = position(905, offset=6, ts=NOW + 20)
    assert lag() == pytest.approx(10.0)
    # Caught up: 0, and the next wait counts afresh.
    consumer.app.consumer.highwaters[tp] = 7
    clock.now = NOW + 40
    assert lag() == 0.0
    consumer.app.consumer.highwaters[tp] = 9
    clock.now = NOW + 100
    assert lag() == 0.0
    clock.now = NOW + 103
    assert lag() == pytest.approx(3.0)


def test_waiting_is_remembered_per_consumer_and_partition() -> None:
    a0, a1 = TP("aesop.a", 0), TP("aesop.a", 1)
    clock = Clock()
    first = runner("first", ["aesop.a"], {a0, a1}, {a0: 5, a1: 5})
    second = runner("second", ["aesop.a"], {a0}, {a0: 0})
    collector = AesopCollector(Relays(), [first, second], clock=clock)
    registry = registry_of(collector)
    list(registry.collect())
    second.app.consumer.highwaters[a0] = 5  # waiting from now on
    clock.now = NOW + 20
    lags = samples(registry, "aesop_consumer_lag_seconds")
    assert lags == {
        labels(consumer="first", topic="aesop.a", partition="0"): pytest.approx(20.0),
        labels(consumer="first", topic="aesop.a", partition="1"): pytest.approx(20.0),
        labels(consumer="second", topic="aesop.a", partition="0"): 0.0,
    }
    waiting = {("first", "aesop.a", 0), ("first", "aesop.a", 1), ("second", "aesop.a", 0)}
    assert set(collector._waiting_since) == waiting


def test_partitions_of_other_topics_are_left_out() -> None:
    mine, other = TP("aesop.shop", 0), TP("aesop.crm", 0)
    consumer = runner(
        "replica",
        ["aesop.shop"],
        assignment={mine, other},
        highwaters={mine: 1, other: 9},
        applied={"aesop.shop/0": position(5, 0, NOW), "aesop.crm/0": position(6, 0, NOW)},
    )
    registry = registry_of(AesopCollector(Relays(), [consumer], clock=Clock()))
    for name in ("aesop_consumer_applied_scn", "aesop_consumer_lag_events"):
        assert {dict(k)["topic"] for k in samples(registry, name)} == {"aesop.shop"}, name


def test_a_partition_without_a_high_watermark_has_its_scn_but_no_lag() -> None:
    known, unknown = TP("aesop.shop", 0), TP("aesop.shop", 1)
    consumer = runner(
        "replica",
        ["aesop.shop"],
        assignment={known, unknown},
        highwaters={known: 5},
        applied={"aesop.shop/0": position(5, 1, NOW), "aesop.shop/1": position(6, 2, NOW)},
    )
    registry = registry_of(AesopCollector(Relays(), [consumer], clock=Clock()))
    assert {dict(k)["partition"] for k in samples(registry, "aesop_consumer_applied_scn")} == {
        "0",
        "1",
    }
    for name in ("aesop_consumer_lag_events", "aesop_consumer_lag_seconds"):
        assert {dict(k)["partition"] for k in samples(registry, name)} == {"0"}, name


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"started": False}, id="app not started"),
        pytest.param({"should_stop": True}, id="app stopping"),
        pytest.param({"running": False}, id="kafka consumer not running"),
    ],
)
def test_a_consumer_not_running_reports_its_counters_but_no_partitions(
    change: dict[str, bool],
) -> None:
    tp = TP("aesop.shop", 0)
    consumer = runner(
        "replica", ["aesop.shop"], {tp}, {tp: 9}, {"aesop.shop/0": position(5, 1, NOW)}
    )
    consumer.stats.consumed = 3
    for attribute, value in change.items():
        target = consumer.app.consumer if attribute == "running" else consumer.app
        setattr(target, attribute, value)
    registry = registry_of(AesopCollector(Relays(), [consumer], clock=Clock()))

    assert (
        registry.get_sample_value("aesop_consumer_events_consumed_total", {"consumer": "replica"})
        == 3
    )
    for name in (
        "aesop_consumer_applied_scn",
        "aesop_consumer_lag_events",
        "aesop_consumer_lag_seconds",
    ):
        assert samples(registry, name) == {}, name


def test_a_position_read_from_the_mirror_has_an_empty_source_label() -> None:
    """A partition whose position came from ZooKeeper (which keeps no source) and has only
    skipped or dead-lettered messages since stores ``"source": None`` in the table."""
    tp = TP("aesop.shop", 0)
    consumer = runner(
        "replica", ["aesop.shop"], {tp}, {tp: 8}, {"aesop.shop/0": position(5, 7, NOW, None)}
    )
    registry = registry_of(AesopCollector(Relays(), [consumer], clock=Clock()))
    assert samples(registry, "aesop_consumer_applied_scn") == {
        labels(consumer="replica", topic="aesop.shop", partition="0", source=""): 5
    }


def test_snapshot_progress_from_the_saved_checkpoint() -> None:
    progress = SnapshotProgress("incremental", (("shop", "items"), ("shop", "orders")),
                                ("2048",), 2048, 5000, 1, 30_500)  # fmt: skip
    shop = relay(saved=Checkpoint.at(Position("mysql-bin.000001", 4), None, progress))
    idle = relay(saved=checkpoint(scn=1 << 32, ts_ms=int(NOW * 1000)))
    relays = Relays({"shop": shop, "idle": idle}, ("shop", "idle"))
    registry = registry_of(AesopCollector(relays, [], clock=Clock()))

    assert samples(registry, "aesop_snapshot_running") == {
        labels(source="shop", kind="initial"): 0.0,
        labels(source="shop", kind="incremental"): 1.0,
        labels(source="idle", kind="initial"): 0.0,
        labels(source="idle", kind="incremental"): 0.0,
    }
    assert samples(registry, "aesop_snapshot_tables_left") == {
        labels(source="shop"): 2.0, labels(source="idle"): 0.0,
    }  # fmt: skip
    assert samples(registry, "aesop_snapshot_rows") == {labels(source="shop"): 5000.0}
    table = labels(source="shop", table="shop.items")
    assert samples(registry, "aesop_snapshot_table_rows") == {table: 2048.0}
    assert samples(registry, "aesop_snapshot_table_chunks") == {table: 1.0}
    assert samples(registry, "aesop_snapshot_table_rows_estimate") == {table: 30_500.0}


def test_a_table_whose_estimate_is_not_read_yet_has_no_estimate_sample() -> None:
    progress = SnapshotProgress("initial", (("shop", "items"),))
    shop = relay(saved=Checkpoint.at(Position("mysql-bin.000001", 4), None, progress))
    registry = registry_of(AesopCollector(Relays({"shop": shop}, ("shop",)), [], clock=Clock()))
    assert samples(registry, "aesop_snapshot_table_rows") == {
        labels(source="shop", table="shop.items"): 0.0
    }
    assert samples(registry, "aesop_snapshot_table_rows_estimate") == {}
