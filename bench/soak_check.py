"""The soak's verdict: Kafka against the binlog and the ledger, the replica against the source.

Oracles, all independent of the relay: the server's own listing of its binlog (which rows
events of which table each transaction wrote), the ledger table (which transactions
committed and how many change events each must produce), and the final source tables.
Events are identified by ``(scn, row)``, as the contract says.
"""

from __future__ import annotations

import datetime
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from bench.soak_faults import CRASHES, FaultRecord
from bench.soak_kafka import Record
from bench.soak_load import (
    COLUMNS,
    DECIMAL_COLUMNS,
    JSON_COLUMNS,
    PRIMARY_KEYS,
    Committed,
    connect,
    first_after,
)
from tests.support.mysql import binlog_transactions

DUPLICATE_WINDOW_S = 180.0  # a crash's re-published events arrive within this of the kill
EXAMPLES = 5


@dataclass
class Event:
    received: float
    partition: int
    offset: int
    key: Any
    value: dict[str, Any]

    @property
    def ident(self) -> tuple[int, int]:
        return (self.value["scn"], self.value["row"])

    @property
    def table(self) -> str:
        return str(self.value["source"]["table"])


@dataclass
class Verdict:
    """Numbers and problems; ``failures`` make the run fail, ``notes`` are printed only."""

    committed_txns: int = 0
    expected_events: int = 0
    kafka_messages: int = 0
    distinct_events: int = 0
    missing_events: int = 0
    missing_txns: list[int] = field(default_factory=list)
    duplicates: int = 0
    duplicates_without_crash: int = 0
    duplicates_by_fault: Counter[str] = field(default_factory=Counter)
    wrong_table: int = 0
    order_violations: int = 0
    partition_order_violations: int = 0
    replica_equal: bool = False
    dlq: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(message)


# -- rows as comparable values ----------------------------------------------------------


def _json(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def canonical(table: str, row: dict[str, Any], from_sql: bool) -> tuple[Any, ...]:
    """A row's values in column order: JSON as sorted compact JSON (parsed first when read
    with SQL, where it is text), DECIMAL as its exact text."""
    out: list[Any] = []
    for column in COLUMNS[table]:
        value = row[column]
        if value is not None and column in JSON_COLUMNS:
            value = _json(orjson.loads(value) if from_sql else value)
        elif value is not None and column in DECIMAL_COLUMNS:
            value = str(value) if isinstance(value, Decimal) or from_sql else value
        out.append(value)
    return tuple(out)


def read_tables(database: str) -> dict[str, Counter[tuple[Any, ...]]]:
    """Every table's rows as a multiset of canonical rows (the ledger without applied_at)."""
    found: dict[str, Counter[tuple[Any, ...]]] = {}
    with connect(database, autocommit=True, read_timeout=120) as conn, conn.cursor() as cur:
        for table, columns in COLUMNS.items():
            cur.execute(f"SELECT {', '.join(columns)} FROM {table}")
            found[table] = Counter(
                canonical(table, dict(zip(columns, row, strict=True)), True)
                for row in cur.fetchall()
            )
    return found


def ledger_counts(database: str) -> tuple[int, int]:
    with connect(database, autocommit=True, connect_timeout=5) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*), COALESCE(MAX(txn), 0) FROM ledger")
        count, top = cur.fetchone()
        return int(count), int(top)


def applied_at(replica: str, txns: Iterable[int]) -> dict[int, float]:
    """When the consumer first wrote each of these ledger rows (wall time)."""
    wanted = sorted(set(txns))
    if not wanted:
        return {}
    with connect(replica, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT txn, applied_at FROM ledger WHERE txn IN ({','.join(map(str, wanted))})"
        )
        return {int(txn): at.replace(tzinfo=datetime.UTC).timestamp() for txn, at in cur.fetchall()}


def differences(
    want: dict[str, Counter[tuple[Any, ...]]],
    got: dict[str, Counter[tuple[Any, ...]]],
    tables: Iterable[str] = COLUMNS,
) -> dict[str, str]:
    """Per table that differs: how many rows each side has that the other lacks."""
    lines = {}
    for table in tables:
        only_want = want[table] - got[table]
        only_got = got[table] - want[table]
        if only_want or only_got:
            examples = [repr(r)[:160] for r in list(only_want)[:2]] + [
                repr(r)[:160] for r in list(only_got)[:2]
            ]
            lines[table] = (
                f"{table}: {sum(only_want.values())} rows only in the source,"
                f" {sum(only_got.values())} only in the other side; e.g. {examples}"
            )
    return lines


# -- Kafka --------------------------------------------------------------------------------


def decode(records: list[Record], verdict: Verdict) -> list[Event]:
    events = []
    for r in records:
        try:
            key = orjson.loads(r.key) if r.key is not None else None
            value = orjson.loads(r.value) if r.value is not None else None
        except orjson.JSONDecodeError:
            verdict.fail(f"partition {r.partition} offset {r.offset}: not JSON")
            continue
        if not isinstance(value, dict) or "scn" not in value:
            verdict.fail(f"partition {r.partition} offset {r.offset}: not a change event")
            continue
        events.append(Event(r.received, r.partition, r.offset, key, value))
    return sorted(events, key=lambda e: (e.partition, e.offset))


def _without_build_time(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if k != "ts_ms"}


def check_duplicates(
    events: list[Event], faults: list[FaultRecord], verdict: Verdict
) -> dict[tuple[int, int], Event]:
    """The first copy of each (scn, row); extra copies must follow a crash, and equal it."""
    first: dict[tuple[int, int], Event] = {}
    # Only the relay's own worker re-publishes after a crash: the next one resumes from
    # its last saved checkpoint. A crash of any other worker must cause no duplicate.
    crashes = sorted(
        f.crashed_at for f in faults if f.crashed_at is not None and f.relay_owner is not False
    )
    started = sorted((f.started, f.kind) for f in faults if f.started is not None)
    unexplained: list[str] = []
    for event in sorted(events, key=lambda e: (e.received, e.partition, e.offset)):
        seen = first.get(event.ident)
        if seen is None:
            first[event.ident] = event
            continue
        verdict.duplicates += 1
        if (
            _without_build_time(seen.value) != _without_build_time(event.value)
            or seen.key != event.key
        ):
            verdict.fail(f"(scn, row) {event.ident} published twice with different content")
        before = [kind for at, kind in started if at <= event.received]
        verdict.duplicates_by_fault[before[-1] if before else "no fault"] += 1
        if not any(c <= event.received <= c + DUPLICATE_WINDOW_S for c in crashes):
            verdict.duplicates_without_crash += 1
            if len(unexplained) < EXAMPLES:
                unexplained.append(
                    f"{event.ident} at p{event.partition}@{event.offset} (first at"
                    f" p{seen.partition}@{seen.offset}), last fault before it:"
                    f" {before[-1] if before else 'none'}"
                )
    if verdict.duplicates_without_crash:
        verdict.fail(
            f"{verdict.duplicates_without_crash} duplicate events with no kill -9 of the"
            f" relay's worker in the {DUPLICATE_WINDOW_S:.0f}s before them, e.g. {unexplained}"
        )
    return first


def check_tables(events: Iterable[Event], database: str, scn_tables: dict[int, str],
                 verdict: Verdict) -> None:  # fmt: skip
    """Each event's key, columns and table agree with the table's schema and the binlog."""
    examples: list[str] = []
    for event in events:
        value, key, table = event.value, event.key, event.table
        problems = []
        if value["source"]["db"] != database or table not in COLUMNS:
            problems.append(f"names {value['source']['db']}.{table}")
        else:
            image = value["after"] if value["after"] is not None else value["before"]
            pk = PRIMARY_KEYS[table]
            if image is None or tuple(image) != COLUMNS[table]:
                problems.append(f"columns {list(image or ())} are not {table}'s")
            expected_key = {c: image[c] for c in pk} if pk and image else None
            if value["key"] != expected_key:
                problems.append(f"key {value['key']} is not {table}'s key of the row")
            if key != {"db": database, "table": table, "pk": value["key"]}:
                problems.append(f"message key {key} does not match the event")
        binlog_table = scn_tables.get(value["scn"])
        if binlog_table is None:
            problems.append(f"scn {value['scn']} is no rows event of {database} in the binlog")
        elif binlog_table != table:
            problems.append(f"the binlog has {binlog_table} at scn {value['scn']}")
        if problems:
            verdict.wrong_table += 1
            if len(examples) < EXAMPLES:
                examples.append(f"{event.ident} ({table}): {'; '.join(problems)}")
    if verdict.wrong_table:
        verdict.fail(f"{verdict.wrong_table} events under the wrong table or key: {examples}")


def check_transactions(
    distinct: list[Event], ledger: dict[int, int], binlog: list[Any], verdict: Verdict
) -> None:
    """Every committed transaction in Kafka, whole: its binlog rows events, its ledger row,
    as many events as the ledger says, ``txn.seq`` 0..n-1 and ``last`` on the last."""
    by_gtid: dict[str | None, list[Event]] = defaultdict(list)
    for event in distinct:
        by_gtid[event.value["source"]["gtid"]].append(event)
    in_kafka_txns: dict[int, int] = {}  # ledger txn -> distinct events of its transaction
    problems: list[str] = []
    for gtid, group in by_gtid.items():
        ledger_rows = [e for e in group if e.table == "ledger" and e.value["op"] == "c"]
        seqs = sorted(e.value["txn"]["seq"] for e in group)
        lasts = [e.value["txn"]["seq"] for e in group if e.value["txn"]["last"]]
        if len(ledger_rows) != 1:
            problems.append(f"gtid {gtid}: {len(ledger_rows)} ledger events in {len(group)}")
            continue
        txn = ledger_rows[0].value["after"]["txn"]
        in_kafka_txns[txn] = len(group)
        if seqs != list(range(len(group))) or lasts != [len(group) - 1]:
            gaps = sorted(set(range(max(seqs) + 1)) - set(seqs))
            problems.append(
                f"txn {txn} (gtid {gtid}): {len(group)} events, txn.seq gaps {gaps[:10]},"
                f" last on {lasts}"
            )
    for txn, expected in ledger.items():
        found = in_kafka_txns.get(txn)
        if found is None:
            verdict.missing_txns.append(txn)
        elif found != expected:
            problems.append(f"txn {txn}: {found} events in Kafka, the ledger says {expected}")
    kafka_scns = {e.value["scn"] for e in distinct}
    kafka_gtids = set(by_gtid)
    lost_scns = [
        (t.gtid, r.scn, r.table) for t in binlog for r in t.rows if r.scn not in kafka_scns
    ]
    lost_gtids = [t.gtid for t in binlog if t.gtid not in kafka_gtids]
    verdict.missing_events = max(0, verdict.expected_events - verdict.distinct_events)
    if verdict.missing_txns:
        lost = sum(ledger[t] for t in verdict.missing_txns)
        verdict.fail(
            f"{len(verdict.missing_txns)} committed transactions ({lost} events) not in Kafka,"
            f" e.g. txn {verdict.missing_txns[:EXAMPLES]}"
        )
    if lost_scns or lost_gtids:
        verdict.fail(
            f"{len(lost_scns)} binlog rows events of {len(lost_gtids)} transactions not in Kafka,"
            f" e.g. (gtid, scn, table) {lost_scns[:EXAMPLES]}"
        )
    if problems:
        verdict.fail(f"{len(problems)} incomplete transactions: {problems[:EXAMPLES]}")
    if verdict.missing_events and not (verdict.missing_txns or problems):
        verdict.fail(f"{verdict.missing_events} events fewer than the ledger's count")
    if verdict.distinct_events > verdict.expected_events:
        verdict.fail(
            f"{verdict.distinct_events - verdict.expected_events} more distinct events than"
            " the committed transactions made"
        )


def _key_of(event: Event) -> tuple[str, Any]:
    return (event.table, _json(event.value["key"]))


def check_order(events: list[Event], verdict: Verdict) -> None:
    """Per key: one partition, and first copies in increasing (scn, row) in offset order."""
    seen: set[tuple[int, int]] = set()
    last: dict[tuple[str, Any], tuple[int, int]] = {}
    partition: dict[tuple[str, Any], int] = {}
    examples: list[str] = []
    for event in events:  # in (partition, offset) order
        if event.ident in seen:
            continue
        seen.add(event.ident)
        key = _key_of(event)
        if partition.setdefault(key, event.partition) != event.partition:
            verdict.order_violations += 1
            examples.append(f"{key} in partitions {partition[key]} and {event.partition}")
        previous = last.get(key)
        if previous is not None and event.ident < previous:
            verdict.order_violations += 1
            if len(examples) < EXAMPLES:
                examples.append(f"{key}: {event.ident} after {previous} (p{event.partition})")
        last[key] = max(previous or event.ident, event.ident)
    if verdict.order_violations:
        verdict.fail(f"{verdict.order_violations} per-key order violations: {examples[:EXAMPLES]}")


def check_partition_order(events: list[Event], verdict: Verdict) -> None:
    """Per partition, in offset order: each change's first copy comes after the first copies
    of every earlier change. A consumer skips what is at or below the last ``(scn, row)`` it
    applied in a partition (a re-publish after a crash), so a first copy that arrives below
    one seen before would be skipped in every copy: lost, though it is in Kafka."""
    seen: set[tuple[int, int]] = set()
    top: dict[int, tuple[tuple[int, int], int]] = {}  # partition -> (highest ident, its offset)
    examples: list[str] = []
    for event in events:  # in (partition, offset) order
        ident = event.ident
        if ident in seen:
            continue
        seen.add(ident)
        highest = top.get(event.partition)
        if highest is not None and ident < highest[0]:
            verdict.partition_order_violations += 1
            if len(examples) < EXAMPLES:
                examples.append(
                    f"p{event.partition} offset {event.offset}: first copy of {ident} after"
                    f" {highest[0]} at offset {highest[1]}"
                )
            continue
        top[event.partition] = (ident, event.offset)
    if verdict.partition_order_violations:
        verdict.fail(
            f"{verdict.partition_order_violations} changes first reached Kafka below a later"
            f" change of their partition (a consumer skips them): {examples}"
        )


def missing_in_replica(
    events: list[Event], source_ledger: Iterable[tuple[Any, ...]], replica: str
) -> list[str]:
    """Where the transactions the replica lacks are in Kafka: per ledger row missing from the
    replica, each copy of its events (partition, offset, ``(scn, row)``), for a post-mortem."""
    with connect(replica, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT txn FROM ledger")
        have = {int(row[0]) for row in cur.fetchall()}
        cur.execute("SELECT * FROM aesop_offsets")
        offsets = [repr(row) for row in cur.fetchall()]
    lacking = sorted(int(row[0]) for row in source_ledger if int(row[0]) not in have)
    if not lacking:
        return []
    scn_of: dict[int, int] = {}
    for event in events:
        if event.table == "ledger" and event.value["after"]:
            scn_of.setdefault(int(event.value["after"]["txn"]), event.value["scn"])
    copies: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        copies[event.value["scn"]].append(event)
    lines = [f"the replica lacks {len(lacking)} ledger txns: {lacking}"]
    lines += [f"replica aesop_offsets: {row}" for row in offsets]
    for txn in lacking:
        scn = scn_of.get(txn)
        if scn is None:
            lines.append(f"txn {txn}: no ledger event in Kafka")
            continue
        found = sorted(copies[scn], key=lambda e: (e.partition, e.offset))
        where = ", ".join(f"p{e.partition}@{e.offset}{e.ident}" for e in found)
        lines.append(f"txn {txn} scn {scn}: {where}")
    return lines


def differing_rows_in_kafka(
    events: list[Event],
    source: dict[str, Counter[tuple[Any, ...]]],
    replica: dict[str, Counter[tuple[Any, ...]]],
    limit: int = 5,
) -> list[str]:
    """For a post-mortem: per row only one side has (a few per table and side), every event
    in Kafka that has it as its ``before`` or ``after`` (partition, offset, ``(scn, row)``,
    op), so that how the replica came to differ can be read from the offsets."""
    lines: list[str] = []
    for table in COLUMNS:
        for side, rows in (
            ("only in the source", source[table] - replica[table]),
            ("only in the replica", replica[table] - source[table]),
        ):
            for row in list(rows)[:limit]:
                found = []
                for event in events:
                    if event.table != table:
                        continue
                    value = event.value
                    for image in ("before", "after"):
                        if value[image] and canonical(table, value[image], False) == row:
                            found.append(f"p{event.partition}@{event.offset}{event.ident}"
                                         f" {value['op']} ({image})")  # fmt: skip
                lines.append(f"{table} row {side} x{rows[row]}: {repr(row)[:200]}")
                lines += [f"  {where}" for where in found] or ["  in no event"]
    return lines


def replay(distinct: list[Event], verdict: Verdict) -> dict[str, Counter[tuple[Any, ...]]]:
    """The tables as Kafka's events build them, applied in (scn, row) order from empty."""
    keyed: dict[str, dict[bytes, tuple[Any, ...]]] = {t: {} for t in COLUMNS if PRIMARY_KEYS[t]}
    bags: dict[str, Counter[tuple[Any, ...]]] = {t: Counter() for t in COLUMNS}
    problems: list[str] = []
    for event in sorted(distinct, key=lambda e: e.ident):
        table, value = event.table, event.value
        if table not in COLUMNS:
            continue
        before = canonical(table, value["before"], False) if value["before"] else None
        after = canonical(table, value["after"], False) if value["after"] else None
        if table in keyed:
            rows, key = keyed[table], _json(value["key"])
            if (value["op"] == "c") == (key in rows):
                problems.append(f"{event.ident} {value['op']} {table} {value['key']}")
            if after is None:
                rows.pop(key, None)
            else:
                rows[key] = after
            continue
        bag = bags[table]
        if before is not None:
            if bag[before] > 0:
                bag[before] -= 1
                if not bag[before]:
                    del bag[before]
            else:
                problems.append(f"{event.ident} {value['op']} {table}: no such row before")
        if after is not None:
            bag[after] += 1
    for table, rows in keyed.items():
        bags[table] = Counter(rows.values())
    if problems:
        verdict.fail(
            f"{len(problems)} events do not fit the row they change (create of an existing key,"
            f" change of a missing one): {problems[:EXAMPLES]}"
        )
    return bags


def check_kafka(
    records: list[Record],
    database: str,
    start: str,
    source: dict[str, Counter[tuple[Any, ...]]],
    faults: list[FaultRecord],
    verdict: Verdict,
) -> list[Event]:
    events = decode(records, verdict)
    verdict.kafka_messages = len(records)
    first = check_duplicates(events, faults, verdict)
    distinct = sorted(first.values(), key=lambda e: (e.partition, e.offset))
    verdict.distinct_events = len(distinct)
    binlog = binlog_transactions(start, database)
    scn_tables = {r.scn: r.table for t in binlog for r in t.rows}
    check_tables(distinct, database, scn_tables, verdict)
    ledger = {
        row[0]: row[2] for row in source["ledger"]
    }  # txn -> changes, from the final source ledger
    verdict.committed_txns = len(ledger)
    verdict.expected_events = sum(ledger.values())
    check_transactions(distinct, ledger, binlog, verdict)
    check_order(events, verdict)
    check_partition_order(events, verdict)
    built = replay(distinct, verdict)
    for line in differences(source, built).values():
        verdict.fail(f"the source's final rows and Kafka's last events per key differ: {line}")
    return events


OUTAGES = frozenset({"mariadb", "kafka", "zookeeper", "kill9_in_kafka"})


def all_clear(fault: FaultRecord, faults: list[FaultRecord]) -> float | None:
    """When, after ``fault`` was over (its ``back``), no service was down any more: recovery
    counts from there, as a change cannot flow while another outage is still under way."""
    at = fault.back
    if at is None:
        return None
    moved = True
    while moved:
        moved = False
        for other in faults:
            if other.kind not in OUTAGES or other.started is None or other.back is None:
                continue
            if other.started <= at < other.back:
                at, moved = other.back, True
    return at


def clear_through(
    clear: float | None,
    faults: list[FaultRecord],
    committed: list[Committed],
    seen: dict[int, float],
) -> float | None:
    """``clear`` moved past every outage that began before changes flowed again after it
    (a worker killed just before Kafka stops cannot be taken over until Kafka is back)."""
    while clear is not None:
        first = first_after(committed, clear)
        flowed = None if first is None else seen.get(first.txn)
        if flowed is None:
            return clear
        began = [
            f for f in faults
            if f.kind in OUTAGES and f.started is not None and f.back is not None
            and clear < f.started < flowed
        ]  # fmt: skip
        if not began:
            return clear
        later = max(f.back for f in began if f.back is not None)
        clear = all_clear(FaultRecord(began[0].plan, back=later), faults)
    return clear


Recovery = tuple[FaultRecord, float | None, float | None, float | None, float | None, float | None]


def recovery_times(
    faults: list[FaultRecord], committed: list[Committed], events: list[Event], replica: str
) -> list[Recovery]:
    """Per fault: when everything was back (:func:`all_clear`), then the seconds from there
    until the first transaction committed after it was in Kafka, and in the replica (None:
    never): caught up, the backlog of the outage included. Each of the two moves on past an
    outage that began before it was reached. Then the seconds until changes flowed again
    at all after it (:func:`seconds_to_flow`), in Kafka and in the replica."""
    ledger_seen: dict[int, float] = {}
    for event in events:
        if event.table == "ledger" and event.value["after"]:
            txn = event.value["after"]["txn"]
            ledger_seen[txn] = min(ledger_seen.get(txn, event.received), event.received)
    applied = applied_at(replica, (c.txn for c in committed))
    out: list[Recovery] = []
    for fault in faults:
        back = all_clear(fault, faults)
        clear = clear_through(back, faults, committed, ledger_seen)
        clear_replica = clear_through(back, faults, committed, applied)
        out.append(
            (
                fault,
                clear,
                seconds_to(clear, committed, ledger_seen),
                seconds_to(clear_replica, committed, applied),
                seconds_to_flow(clear, ledger_seen),
                seconds_to_flow(clear_replica, applied),
            )
        )
    return out


def seconds_to_flow(clear: float | None, seen: dict[int, float]) -> float | None:
    """Seconds from ``clear`` until any transaction was seen at or after it (the flow goes
    again, the outage's backlog first); None if nothing was."""
    if clear is None:
        return None
    after = [at for at in seen.values() if at >= clear]
    return min(after) - clear if after else None


def seconds_to(
    clear: float | None, committed: list[Committed], seen: dict[int, float]
) -> float | None:
    """Seconds from ``clear`` until the first transaction committed after it was seen."""
    first = None if clear is None else first_after(committed, clear)
    if first is None or clear is None or first.txn not in seen:
        return None
    return seen[first.txn] - clear


def is_crash(fault: FaultRecord) -> bool:
    return fault.kind in CRASHES or fault.crashed_at is not None
