"""The chaos soak's recovery times: counted from when every service was back."""

from __future__ import annotations

from bench.soak import CRASH_TARGET_S, OUTAGE_TARGET_S, recovery_target
from bench.soak_check import (
    Event,
    Verdict,
    all_clear,
    check_duplicates,
    check_partition_order,
    clear_through,
    seconds_to,
    seconds_to_flow,
)
from bench.soak_faults import FaultRecord, PlannedFault
from bench.soak_load import Committed


def outage(kind: str, started: float, back: float) -> FaultRecord:
    return FaultRecord(PlannedFault(kind, 0.0, down=back - started), started=started, back=back)


def kill(at: float, relay_owner: bool | None = None) -> FaultRecord:
    return FaultRecord(PlannedFault("kill9", 0.0, slot="a"), started=at, back=at, crashed_at=at,
                       relay_owner=relay_owner)  # fmt: skip


def test_only_a_crash_of_the_relays_worker_explains_a_duplicate() -> None:
    def event(received: float, offset: int) -> Event:
        return Event(received, 0, offset, {"id": 1}, {"scn": 7, "row": 0, "op": "c"})

    events = [event(10.0, 0), event(40.0, 1)]  # the same (scn, row) twice
    for faults, unexplained in [
        ([kill(30.0, relay_owner=True)], 0),
        ([kill(30.0, relay_owner=False)], 1),  # another worker: its crash re-publishes nothing
        ([kill(30.0, relay_owner=True), kill(35.0, relay_owner=False)], 0),
        ([], 1),
    ]:
        verdict = Verdict()
        check_duplicates(events, faults, verdict)
        assert (verdict.duplicates, verdict.duplicates_without_crash) == (1, unexplained)
        assert bool(verdict.failures) == bool(unexplained)


def test_recovery_counts_from_the_end_of_every_outage_under_way() -> None:
    mariadb = outage("mariadb", 10.0, 16.0)
    kafka = outage("kafka", 12.0, 40.0)  # began during the MariaDB outage, ended later
    zookeeper = outage("zookeeper", 39.0, 60.0)  # began before Kafka was back
    alone = outage("mariadb", 100.0, 105.0)
    faults = [mariadb, kafka, zookeeper, alone]
    assert all_clear(mariadb, faults) == 60.0
    assert all_clear(kafka, faults) == 60.0
    assert all_clear(zookeeper, faults) == 60.0
    assert all_clear(alone, faults) == 105.0
    assert all_clear(FaultRecord(PlannedFault("kafka", 0.0)), faults) is None


def test_an_outage_that_begins_before_changes_flow_again_moves_the_start_on() -> None:
    crash = kill(50.0)
    kafka = outage("kafka", 55.0, 80.0)  # began 5 s after the kill, before the takeover
    late = outage("mariadb", 200.0, 205.0)  # after changes flowed again: not counted
    faults = [crash, kafka, late]
    committed = [Committed(txn, "t", 1, at) for txn, at in enumerate((49.0, 51.0, 81.0, 201.0))]
    seen = {0: 49.5, 1: 85.0, 2: 86.0, 3: 207.0}  # txn 1 reached Kafka only after the outage
    assert clear_through(all_clear(crash, faults), faults, committed, seen) == 80.0
    seen[1] = 53.0  # flowed again before Kafka stopped: counted from the kill
    assert clear_through(all_clear(crash, faults), faults, committed, seen) == 50.0
    del seen[1]  # never reached Kafka: nothing to move past
    assert clear_through(50.0, faults, committed, seen) == 50.0


def test_an_outage_is_held_to_the_crash_target_when_a_worker_went_in_its_chain() -> None:
    kafka = outage("kafka", 100.0, 125.0)
    zookeeper = outage("zookeeper", 120.0, 140.0)
    stopped = kill(110.0)  # inside the Kafka outage: its member stays until its session ends
    alone = outage("mariadb", 300.0, 306.0)
    later = kill(309.0)  # before changes flowed again after the MariaDB outage
    quiet = outage("mariadb", 400.0, 406.0)
    times = [
        (kafka, 140.0, 30.0, 31.0),
        (zookeeper, 140.0, 30.0, 31.0),
        (stopped, 140.0, 30.0, 31.0),
        (alone, 306.0, 4.0, 4.5),
        (later, 309.0, 3.0, 3.0),
        (quiet, 406.0, 2.0, 2.5),
    ]
    assert recovery_target(kafka, 140.0, 30.0, times) == CRASH_TARGET_S
    assert recovery_target(zookeeper, 140.0, 30.0, times) == CRASH_TARGET_S
    assert recovery_target(alone, 306.0, 4.0, times) == CRASH_TARGET_S
    assert recovery_target(quiet, 406.0, 2.0, times) == OUTAGE_TARGET_S == 10.0
    assert recovery_target(stopped, 140.0, 30.0, times) == CRASH_TARGET_S == 35.0


def test_seconds_to_the_first_transaction_after_the_all_clear_that_was_seen() -> None:
    committed = [Committed(txn, "t", 1, at) for txn, at in enumerate((10.0, 20.0, 30.0))]
    seen = {0: 11.0, 1: 24.5}
    assert seconds_to(15.0, committed, seen) == 9.5  # txn 1, committed at 20, seen at 24.5
    assert seconds_to(25.0, committed, seen) is None  # txn 2 never seen
    assert seconds_to(35.0, committed, seen) is None  # nothing committed after
    assert seconds_to(None, committed, seen) is None


def test_changes_flow_again_when_any_arrives_after_the_all_clear() -> None:
    seen = {0: 9.0, 1: 21.5, 2: 24.5}  # the backlog's first change arrives 1.5 s after
    assert seconds_to_flow(20.0, seen) == 1.5
    assert seconds_to_flow(25.0, seen) is None
    assert seconds_to_flow(None, seen) is None


def _events(*placed: tuple[int, int, int, int]) -> list[Event]:
    """(partition, offset, scn, row) each; events in (partition, offset) order."""
    return [
        Event(0.0, p, o, {"id": o}, {"scn": scn, "row": row, "source": {"table": "t"}})
        for p, o, scn, row in sorted(placed)
    ]


def test_a_re_published_run_keeps_each_partition_in_order() -> None:
    verdict = Verdict()
    # Partition 0: 10..12, then a relay restart re-publishes 11..12 and goes on with 13;
    # partition 1 interleaves freely with it.
    check_partition_order(
        _events(
            (0, 0, 10, 0),
            (0, 1, 11, 0),
            (0, 2, 12, 0),
            (0, 3, 11, 0),
            (0, 4, 12, 0),
            (0, 5, 13, 0),
            (1, 0, 12, 1),
            (1, 1, 14, 0),
        ),
        verdict,
    )
    assert verdict.partition_order_violations == 0 and not verdict.failures


def test_a_first_copy_below_a_later_change_of_its_partition_fails() -> None:
    verdict = Verdict()
    # 12 reached partition 0 before 11 ever did: a consumer skips every copy of 11.
    check_partition_order(
        _events((0, 0, 10, 0), (0, 1, 12, 0), (0, 2, 11, 0), (0, 3, 12, 0), (1, 0, 11, 1)),
        verdict,
    )
    assert verdict.partition_order_violations == 1
    assert "p0 offset 2: first copy of (11, 0) after (12, 0)" in verdict.failures[0]


def test_a_row_only_the_replica_has_is_traced_to_its_events() -> None:
    """A keyless row applied twice leaves a copy only the replica has: the post-mortem names
    the events that hold it, by partition, offset and (scn, row)."""
    from collections import Counter

    from bench.soak_check import COLUMNS, canonical, differing_rows_in_kafka

    def note(n: int) -> dict[str, object]:
        return {"tag": 7, "n": n, "body": "b", "meta": {"v": 1}}

    def event(offset: int, scn: int, op: str, before: object, after: object) -> Event:
        value = {"op": op, "scn": scn, "row": 0, "source": {"table": "notes"},
                 "before": before, "after": after}  # fmt: skip
        return Event(0.0, 2, offset, None, value)

    events = [event(10, 100, "c", None, note(1)), event(11, 101, "u", note(1), note(2)),
              event(12, 102, "d", note(2), None)]  # fmt: skip
    empty: dict[str, Counter[tuple[object, ...]]] = {t: Counter() for t in COLUMNS}
    # As read back with SQL: the JSON column is text.
    stray = canonical("notes", {"tag": 7, "n": 2, "body": "b", "meta": '{"v": 1}'}, True)
    replica = {**empty, "notes": Counter({stray: 1})}
    lines = differing_rows_in_kafka(events, empty, replica)
    assert lines[0].startswith("notes row only in the replica x1: (7, 2, 'b'")
    assert lines[1:] == ["  p2@11(101, 0) u (after)", "  p2@12(102, 0) d (before)"]
    assert differing_rows_in_kafka(events, empty, empty) == []
