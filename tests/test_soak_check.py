"""The chaos soak's recovery times: counted from when every service was back."""

from __future__ import annotations

from bench.soak import CRASH_TARGET_S, OUTAGE_TARGET_S, recovery_target
from bench.soak_check import all_clear, clear_through, seconds_to
from bench.soak_faults import FaultRecord, PlannedFault
from bench.soak_load import Committed


def outage(kind: str, started: float, back: float) -> FaultRecord:
    return FaultRecord(PlannedFault(kind, 0.0, down=back - started), started=started, back=back)


def kill(at: float) -> FaultRecord:
    return FaultRecord(PlannedFault("kill9", 0.0, slot="a"), started=at, back=at, crashed_at=at)


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
