"""The lag report assembled from canned probe results (no server): sources caught up, behind,
unread; MySQL, Kafka or ZooKeeper unreachable; no checkpoint; the grading thresholds; consumer
partitions behind; and ``to_json()``, the document of ``GET /lag`` and ``aesop lag --json``.

The ``EXPECTED_*`` documents were written by the report's code as it was before the report
became dataclasses (then one module, ``app/lag.py``), from the same canned inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from app import mail
from app.lag import build_report, probes, unread_sources
from app.lag.probes import (
    KafkaProbe,
    MySQLProbe,
    Offsets,
    ServerPosition,
    ZooKeeperProbe,
)
from app.lag.report import LagReport, assemble, grade, worst
from app.settings import ConsumerSettings, LagSettings, MySQLURL, Settings, SourceSettings
from tables.mirrored import Mirrored, ZooKeeperUnreachable
from tables.positions import AppliedPosition

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000_000
URL = MySQLURL("127.0.0.1", 3306, "repl", "secret")
F1, F3, F5, F7 = (f"mysql-bin.00000{n}" for n in (1, 3, 5, 7))
SHOP, BILLING = "aesop.shop", "aesop.billing"
MYSQL_DOWN = (
    "cannot reach mysql://repl@127.0.0.1:3306: OperationalError: Can't connect to MySQL server "
    "on '127.0.0.1' ([Errno 111])"
)
KAFKA_DOWN = (
    "cannot reach Kafka at kafka://127.0.0.1:9092: KafkaConnectionError: Unable to bootstrap "
    "from [('127.0.0.1', 9092)]"
)
ZOOKEEPER_DOWN = "cannot reach ZooKeeper at 127.0.0.1:2181: KazooTimeoutError: Connection time-out"


# -- canned probe results ----------------------------------------------------------------


def source(name: str) -> SourceSettings:
    return SourceSettings(name, URL, 5401, (), (), "earliest", f"aesop.{name}")


def consumer(name: str, *topics: str) -> ConsumerSettings:
    return ConsumerSettings(name, topics, "route", None)


def settings(
    sources: tuple[str, ...] = (),
    consumers: tuple[ConsumerSettings, ...] = (),
    lag: LagSettings | None = None,
    zookeeper: str = "127.0.0.1:2181",
) -> Settings:
    return Settings(
        Path("aesop.toml"),
        sources=tuple(source(name) for name in sources),
        consumers=consumers,
        lag=lag or LagSettings(),
        zookeeper=zookeeper,
    )


def checkpoint(file: str, pos: int, age_ms: int) -> dict[str, Any]:
    """A relay checkpoint as the mirror holds it, written ``age_ms`` before NOW."""
    scn = int(file.rsplit(".", 1)[1]) << 32 | pos
    return {"file": file, "pos": pos, "gtid": None, "scn": scn, "row": 0, "ts_ms": NOW - age_ms}


def heartbeat(worker: str, age_ms: int, state: str = "reading") -> dict[str, Any]:
    return {"worker": worker, "state": state, "ts_ms": NOW - age_ms}


def applied(offset: int, age_ms: int) -> AppliedPosition:
    """A consumer's applied position as read from the mirror."""
    document = {"scn": 12884902888, "row": 0, "offset": offset, "ts_ms": NOW - age_ms}
    position = AppliedPosition.from_json(document)
    assert position is not None
    return position


def server(
    file: str = F3,
    pos: int = 1000,
    sizes: dict[str, int] | None = None,
    headers_only_after: dict[int, bool] | None = None,
) -> MySQLProbe:
    found = ServerPosition(file, pos, sizes or {"mysql-bin.000002": 2000, F3: 1000})
    found.headers_only_after.update(headers_only_after or {})
    return MySQLProbe(server=found)


def build(
    config: Settings,
    zookeeper: ZooKeeperProbe | None = None,
    mysql: dict[str, MySQLProbe] | None = None,
    kafka: KafkaProbe | None = None,
    relay_states: dict[str, str] | None = None,
) -> LagReport:
    """assemble() at NOW; every source's server at F3:1000 unless ``mysql`` says otherwise."""
    servers = {s.name: server() for s in config.sources} | (mysql or {})
    return assemble(
        config,
        zookeeper or ZooKeeperProbe(),
        servers,
        kafka or KafkaProbe(offsets=Offsets()),
        NOW,
        relay_states,
    )


def as_json(document: Any) -> bytes:
    """Byte for byte: key order, and 0 apart from 0.0."""
    return orjson.dumps(document)


def healthy() -> tuple[Settings, ZooKeeperProbe, KafkaProbe]:
    config = settings(("shop",), (consumer("replica", SHOP),))
    mirror = Mirrored(
        relays={"shop": checkpoint(F3, 1000, 500)},
        heartbeats={"shop": heartbeat("w1", 2000)},
        consumers={("replica", SHOP, 0): applied(41, 1000), ("replica", SHOP, 1): applied(9, 1500)},
    )
    offsets = Offsets(
        partitions={SHOP: [0, 1]},
        beginning={(SHOP, 0): 0, (SHOP, 1): 0},
        end={(SHOP, 0): 42, (SHOP, 1): 10},
        committed={("replica", SHOP, 0): 42, ("replica", SHOP, 1): 10},
    )
    return config, ZooKeeperProbe(mirrored=mirror), KafkaProbe(offsets=offsets)


# -- the documents the report's code wrote before it became dataclasses ---------------------


EXPECTED_HEALTHY: dict[str, Any] = {
    "ts_ms": 1700000000000,
    "status": "ok",
    "services": {
        "mysql": {"shop": {"ok": True, "error": None}},
        "kafka": {"ok": True, "error": None},
        "zookeeper": {"ok": True, "error": None, "enabled": True},
    },
    "positions": {
        "read_from": "zookeeper",
        "where": "ZooKeeper 127.0.0.1:2181 /aesop",
        "error": None,
    },
    "sources": [
        {
            "name": "shop",
            "topic": "aesop.shop",
            "state": None,
            "mysql": {"file": "mysql-bin.000003", "pos": 1000, "scn": 12884902888},
            "checkpoint": {
                "file": "mysql-bin.000003",
                "pos": 1000,
                "gtid": None,
                "scn": 12884902888,
                "row": 0,
                "ts_ms": 1699999999500,
            },
            "behind": {"bytes": 0, "scn": 0, "seconds": 0.0},
            "status": "ok",
            "error": None,
            "reader": {"worker": "w1", "state": "reading", "seconds_ago": 2.0},
            "unread": False,
        }
    ],
    "consumers": [
        {
            "name": "replica",
            "topics": ["aesop.shop"],
            "events_behind": 0,
            "seconds_behind": 0.0,
            "status": "ok",
            "error": None,
            "partitions": [
                {
                    "topic": "aesop.shop",
                    "partition": 0,
                    "scn": 12884902888,
                    "row": 0,
                    "offset": 41,
                    "ts_ms": 1699999999000,
                    "committed": 42,
                    "end_offset": 42,
                    "events_behind": 0,
                    "seconds_behind": 0.0,
                },
                {
                    "topic": "aesop.shop",
                    "partition": 1,
                    "scn": 12884902888,
                    "row": 0,
                    "offset": 9,
                    "ts_ms": 1699999998500,
                    "committed": 10,
                    "end_offset": 10,
                    "events_behind": 0,
                    "seconds_behind": 0.0,
                },
            ],
        }
    ],
    "thresholds": {"warn_seconds": 60.0, "critical_seconds": 300.0},
}


EXPECTED_MIXED: dict[str, Any] = {
    "ts_ms": 1700000000000,
    "status": "critical",
    "services": {
        "mysql": {"shop": {"ok": True, "error": None}, "billing": {"ok": True, "error": None}},
        "kafka": {"ok": True, "error": None},
        "zookeeper": {"ok": True, "error": None, "enabled": True},
    },
    "positions": {
        "read_from": "zookeeper",
        "where": "ZooKeeper 127.0.0.1:2181 /aesop",
        "error": None,
    },
    "sources": [
        {
            "name": "shop",
            "topic": "aesop.shop",
            "state": None,
            "mysql": {"file": "mysql-bin.000003", "pos": 1000, "scn": 12884902888},
            "checkpoint": {
                "file": "mysql-bin.000003",
                "pos": 700,
                "gtid": None,
                "scn": 12884902588,
                "row": 0,
                "ts_ms": 1699999955000,
            },
            "behind": {"bytes": 300, "scn": 300, "seconds": 45.0},
            "status": "warn",
            "error": None,
            "reader": {"worker": "w1", "state": "reading", "seconds_ago": 1.0},
            "unread": False,
        },
        {
            "name": "billing",
            "topic": "aesop.billing",
            "state": None,
            "mysql": {"file": "mysql-bin.000007", "pos": 400, "scn": 30064771472},
            "checkpoint": {
                "file": "mysql-bin.000005",
                "pos": 2500,
                "gtid": None,
                "scn": 21474838980,
                "row": 0,
                "ts_ms": 1699999980000,
            },
            "behind": {"bytes": 2400, "scn": 8589932492, "seconds": 20.0},
            "status": "critical",
            "error": "no worker runs its relay: the last heartbeat, from w2, is 25s old",
            "reader": {"worker": "w2", "state": "stopped", "seconds_ago": 25.0},
            "unread": True,
        },
    ],
    "consumers": [
        {
            "name": "replica",
            "topics": ["aesop.shop", "aesop.billing"],
            "events_behind": 15,
            "seconds_behind": 100.0,
            "status": "warn",
            "error": None,
            "partitions": [
                {
                    "topic": "aesop.billing",
                    "partition": 0,
                    "scn": 12884902888,
                    "row": 0,
                    "offset": 7,
                    "ts_ms": 1699999950000,
                    "committed": 8,
                    "end_offset": 12,
                    "events_behind": 4,
                    "seconds_behind": 50.0,
                },
                {
                    "topic": "aesop.billing",
                    "partition": 1,
                    "scn": None,
                    "row": None,
                    "offset": None,
                    "ts_ms": None,
                    "committed": 6,
                    "end_offset": 9,
                    "events_behind": 3,
                    "seconds_behind": 100.0,
                },
                {
                    "topic": "aesop.shop",
                    "partition": 0,
                    "scn": 12884902888,
                    "row": 0,
                    "offset": 41,
                    "ts_ms": 1699999997000,
                    "committed": 40,
                    "end_offset": 50,
                    "events_behind": 8,
                    "seconds_behind": 20.0,
                },
            ],
        }
    ],
    "thresholds": {"warn_seconds": 30.0, "critical_seconds": 120.0},
}


EXPECTED_ALL_DOWN: dict[str, Any] = {
    "ts_ms": 1700000000000,
    "status": "unknown",
    "services": {
        "mysql": {"gone": {"ok": False, "error": MYSQL_DOWN}},
        "kafka": {"ok": False, "error": KAFKA_DOWN},
        "zookeeper": {"ok": False, "error": ZOOKEEPER_DOWN, "enabled": True},
    },
    "positions": {
        "read_from": "zookeeper",
        "where": "ZooKeeper 127.0.0.1:2181 /aesop",
        "error": ZOOKEEPER_DOWN,
    },
    "sources": [
        {
            "name": "gone",
            "topic": "aesop.gone",
            "state": None,
            "mysql": None,
            "checkpoint": None,
            "behind": {"bytes": None, "scn": None, "seconds": None},
            "status": "unknown",
            "error": MYSQL_DOWN,
            "reader": None,
            "unread": None,
        }
    ],
    "consumers": [
        {
            "name": "gone-c",
            "topics": ["aesop.gone"],
            "events_behind": None,
            "seconds_behind": None,
            "status": "unknown",
            "error": "Kafka is unreachable; offsets unknown",
            "partitions": [],
        }
    ],
    "thresholds": {"warn_seconds": 60.0, "critical_seconds": 300.0},
}


# -- to_json, against the old documents ---------------------------------------------------


def test_a_healthy_source_and_consumer_give_the_old_document() -> None:
    config, zookeeper, kafka = healthy()
    report = build(config, zookeeper, kafka=kafka)
    assert as_json(report.to_json()) == as_json(EXPECTED_HEALTHY)
    assert report.status == "ok" and unread_sources(report) == []
    [shop] = report.sources
    assert shop.unread is False and shop.reader is not None and shop.reader.worker == "w1"


def test_behind_unread_and_waiting_partitions_give_the_old_document() -> None:
    config = settings(
        ("shop", "billing"),
        (consumer("replica", SHOP, BILLING),),
        LagSettings(warn_seconds=30.0, critical_seconds=120.0, unread_seconds=10.0),
    )
    mirror = Mirrored(
        relays={"shop": checkpoint(F3, 700, 45_000), "billing": checkpoint(F5, 2500, 20_000)},
        heartbeats={"shop": heartbeat("w1", 1000), "billing": heartbeat("w2", 25_000, "stopped")},
        consumers={
            ("replica", SHOP, 0): applied(41, 3000),
            ("replica", BILLING, 0): applied(7, 50_000),
        },
    )
    offsets = Offsets(
        partitions={SHOP: [0], BILLING: [0, 1]},
        beginning={(SHOP, 0): 0, (BILLING, 0): 0, (BILLING, 1): 0},
        end={(SHOP, 0): 50, (BILLING, 0): 12, (BILLING, 1): 9},
        committed={
            ("replica", SHOP, 0): 40,
            ("replica", BILLING, 0): 8,
            ("replica", BILLING, 1): 6,
        },
        timestamps={
            (SHOP, 0, 42): NOW - 20_000,
            (BILLING, 0, 8): -1,
            (BILLING, 1, 6): NOW - 100_000,
        },
    )
    rotated = server(F7, 400, {F5: 3000, "mysql-bin.000006": 1500, F7: 400})
    report = build(
        config, ZooKeeperProbe(mirrored=mirror), {"billing": rotated}, KafkaProbe(offsets)
    )
    assert as_json(report.to_json()) == as_json(EXPECTED_MIXED)
    assert unread_sources(report) == [
        "source billing: no worker runs its relay: the last heartbeat, from w2, is 25s old"
    ]


def test_every_service_unreachable_gives_the_old_document_and_names_each() -> None:
    config = settings(("gone",), (consumer("gone-c", "aesop.gone"),))
    report = build(
        config,
        ZooKeeperProbe(error=ZOOKEEPER_DOWN),
        {"gone": MySQLProbe(error=MYSQL_DOWN)},
        KafkaProbe(error=KAFKA_DOWN),
    )
    assert as_json(report.to_json()) == as_json(EXPECTED_ALL_DOWN)
    assert mail.down_services(report) == [
        f"mysql (source gone): {MYSQL_DOWN}",
        f"kafka: {KAFKA_DOWN}",
        f"zookeeper: {ZOOKEEPER_DOWN}",
    ]


def test_to_json_has_the_old_key_sets_at_every_level() -> None:
    def keys(document: Any) -> Any:
        if isinstance(document, dict):
            return [(k, keys(v)) for k, v in document.items()]
        if isinstance(document, list):
            return [keys(v) for v in document]
        return None

    config, zookeeper, kafka = healthy()
    report = build(config, zookeeper, kafka=kafka).to_json()
    assert keys(report) == keys(EXPECTED_HEALTHY)
    assert list(report) == [
        "ts_ms", "status", "services", "positions", "sources", "consumers", "thresholds",
    ]  # fmt: skip
    assert list(report["sources"][0]) == [
        "name", "topic", "state", "mysql", "checkpoint", "behind", "status", "error", "reader",
        "unread",
    ]  # fmt: skip


# -- sources -----------------------------------------------------------------------------


def test_a_relay_behind_in_its_file_and_across_rotated_files() -> None:
    config = settings(("shop", "billing"))
    mirror = Mirrored(
        relays={"shop": checkpoint(F3, 700, 45_000), "billing": checkpoint(F5, 2500, 130_000)},
        heartbeats={"shop": heartbeat("w1", 0), "billing": heartbeat("w1", 0)},
    )
    rotated = server(F7, 400, {F5: 3000, "mysql-bin.000006": 1500, F7: 400})
    report = build(config, ZooKeeperProbe(mirrored=mirror), {"billing": rotated})
    shop, billing = report.sources
    assert (shop.behind.bytes, shop.behind.scn, shop.behind.seconds) == (300, 300, 45.0)
    assert shop.status == "ok" and shop.error is None
    # 500 left in 000005, all of 000006, 400 into 000007.
    assert (billing.behind.bytes, billing.behind.seconds) == (500 + 1500 + 400, 130.0)
    assert billing.behind.scn == (7 << 32 | 400) - (5 << 32 | 2500)
    assert billing.status == "warn" and report.status == "warn"
    assert billing.mysql is not None and (billing.mysql.file, billing.mysql.pos) == (F7, 400)


def test_a_relay_is_caught_up_at_the_position_past_it_or_before_only_file_headers() -> None:
    config = settings(("at", "headers", "ahead", "events"))
    mirror = Mirrored(
        relays={
            "at": checkpoint(F3, 1000, 900_000),
            "headers": checkpoint(F3, 900, 900_000),
            "ahead": checkpoint("mysql-bin.000004", 4, 900_000),
            "events": checkpoint(F3, 900, 900_000),
        },
        heartbeats={n: heartbeat("w1", 0) for n in ("at", "headers", "ahead", "events")},
    )
    mysql = {
        "headers": server(headers_only_after={900: True}),
        "events": server(headers_only_after={900: False}),
    }
    report = build(config, ZooKeeperProbe(mirrored=mirror), mysql)
    behind = {s.name: (s.behind.bytes, s.behind.scn, s.behind.seconds) for s in report.sources}
    assert behind == {
        "at": (0, 0, 0.0),
        "headers": (0, 0, 0.0),
        "ahead": (0, 0, 0.0),
        "events": (100, 100, 900.0),
    }
    assert [s.status for s in report.sources] == ["ok", "ok", "ok", "critical"]


def test_a_checkpoint_whose_binlog_is_gone_is_critical_and_says_so() -> None:
    mirror = Mirrored(
        relays={"old": checkpoint(F1, 100, 5_000)}, heartbeats={"old": heartbeat("w1", 0)}
    )
    [old] = build(settings(("old",)), ZooKeeperProbe(mirrored=mirror)).sources
    assert (old.behind.bytes, old.behind.seconds) == (None, 5.0)
    assert old.status == "critical"
    assert old.error == (
        f"the checkpoint's binlog {F1} is no longer on the server; the relay cannot resume from it"
    )


def test_a_source_nobody_reads_is_unread_and_critical() -> None:
    names = ("silent", "stale", "gone", "edge", "under", "here", "fresh")
    config = settings(names, lag=LagSettings(unread_seconds=10.0))
    mirror = Mirrored(
        relays={n: checkpoint(F3, 1000, 100) for n in names if n != "fresh"}
        | {"gone": checkpoint(F1, 4, 100)},
        heartbeats={
            "stale": heartbeat("w2", 25_000, "stopped"),
            "gone": heartbeat("w3", 12_345),
            "edge": heartbeat("w4", 10_000),
            "under": heartbeat("w5", 9_999),
        },
    )
    report = build(config, ZooKeeperProbe(mirrored=mirror), relay_states={"here": "starting"})
    by_name = {s.name: s for s in report.sources}
    unread = {s.name: s.unread for s in report.sources}
    assert unread == {
        "silent": True,  # a checkpoint and no heartbeat
        "stale": True,
        "gone": True,
        "edge": True,  # a heartbeat exactly unread_seconds old
        "under": False,
        "here": False,  # its relay runs on this worker, whatever its state
        "fresh": None,  # neither checkpoint nor heartbeat
    }
    assert by_name["silent"].error == "no worker runs its relay (no heartbeat in ZooKeeper)"
    assert by_name["stale"].reader is not None and by_name["stale"].reader.state == "stopped"
    assert by_name["stale"].error == (
        "no worker runs its relay: the last heartbeat, from w2, is 25s old"
    )
    assert by_name["gone"].error == (
        f"the checkpoint's binlog {F1} is no longer on the server; the relay cannot resume "
        "from it; no worker runs its relay: the last heartbeat, from w3, is 12s old"
    )
    assert by_name["here"].state == "starting" and by_name["here"].status == "ok"
    assert [s.status for s in report.sources if s.unread] == ["critical"] * 4
    assert report.status == "critical"
    assert unread_sources(report) == [
        f"source {name}: {by_name[name].error}" for name in ("silent", "stale", "gone", "edge")
    ]


def test_mysql_unreachable_leaves_its_source_unknown_and_the_others_as_they_are() -> None:
    config = settings(("shop", "billing", "new"))
    mirror = Mirrored(
        relays={"shop": checkpoint(F3, 900, 4000), "billing": checkpoint(F3, 900, 4000)},
        heartbeats={"shop": heartbeat("w1", 1000), "billing": heartbeat("w1", 1000)},
    )
    down = MySQLProbe(error=MYSQL_DOWN)
    report = build(config, ZooKeeperProbe(mirrored=mirror), {"shop": down, "new": down})
    shop, billing, new = report.sources
    assert (shop.mysql, shop.status, shop.error, shop.unread) == (
        None,
        "unknown",
        MYSQL_DOWN,
        False,
    )
    assert (shop.behind.bytes, shop.behind.scn, shop.behind.seconds) == (None, None, None)
    assert shop.checkpoint is not None and shop.checkpoint.pos == 900
    assert (billing.status, billing.behind.bytes) == ("ok", 100)
    # No checkpoint either: the MySQL error is the one reported.
    assert (new.error, new.unread) == (MYSQL_DOWN, None)
    services = report.services.to_json()["mysql"]
    assert services == {
        "shop": {"ok": False, "error": MYSQL_DOWN},
        "billing": {"ok": True, "error": None},
        "new": {"ok": False, "error": MYSQL_DOWN},
    }
    assert report.status == "unknown"


def test_zookeeper_unreachable_shows_no_checkpoint_and_cannot_tell_unread() -> None:
    config = settings(("shop",), (consumer("replica", SHOP),))
    offsets = Offsets(
        partitions={SHOP: [0, 1]},
        beginning={(SHOP, 0): 3, (SHOP, 1): 0},
        end={(SHOP, 0): 42, (SHOP, 1): 10},
        committed={("replica", SHOP, 1): 10},
        timestamps={(SHOP, 0, 3): NOW - 7_000},
    )
    report = build(config, ZooKeeperProbe(error=ZOOKEEPER_DOWN), kafka=KafkaProbe(offsets))
    [shop] = report.sources
    assert (shop.checkpoint, shop.status, shop.error) == (None, "unknown", ZOOKEEPER_DOWN)
    assert (shop.reader, shop.unread) == (None, None)
    assert shop.mysql is not None
    # Consumers go by Kafka alone: from the beginning offset, or the committed one.
    [replica] = report.consumers
    assert [(p.partition, p.offset, p.events_behind, p.seconds_behind)
            for p in replica.partitions] == [(0, None, 39, 7.0), (1, None, 0, 0.0)]  # fmt: skip
    assert (replica.status, replica.error) == ("ok", None)
    assert report.services.to_json()["zookeeper"] == {
        "ok": False, "error": ZOOKEEPER_DOWN, "enabled": True
    }  # fmt: skip
    assert report.status == "unknown"


def test_zookeeper_disabled_is_no_service_down_and_says_where_positions_are_read() -> None:
    config, _, kafka = healthy()
    report = build(settings(("shop",), config.consumers, zookeeper=""), kafka=kafka)
    [shop] = report.sources
    topic = "aesop-source_to_checkpoint-changelog"
    assert shop.error == f"no checkpoint in Kafka changelog {topic} yet (has the relay run?)"
    assert (shop.status, shop.unread) == ("unknown", None)
    assert report.services.to_json()["zookeeper"] == {"ok": True, "error": None, "enabled": False}
    assert mail.down_services(report) == []
    topics = [topic, *(f"{c.name}-applied-changelog" for c in config.consumers)]
    where = f"Kafka changelogs {', '.join(topics)}"
    assert report.to_json()["positions"] == {
        "read_from": "changelogs", "where": where, "error": None
    }  # fmt: skip
    text = mail.render(report).splitlines()
    assert text[2:4] == ["services: MySQL and Kafka reachable", f"positions: read from {where}"]


def test_with_the_mirror_off_a_changelog_checkpoint_counts_and_a_read_failure_is_named() -> None:
    config, zookeeper, kafka = healthy()
    off = settings(("shop",), config.consumers, zookeeper="")
    report = build(off, zookeeper, kafka=kafka)
    [shop] = report.sources
    assert shop.checkpoint is not None and shop.error is None
    failed = "cannot read the changelog topics from Kafka at kafka://127.0.0.1:9092: Boom"
    report = build(off, ZooKeeperProbe(error=failed), kafka=kafka)
    assert report.sources[0].error == failed
    assert report.positions.error == failed and report.services.zookeeper.ok
    assert mail.render(report).splitlines()[3].endswith(f": {failed}")


def test_no_checkpoint_yet_and_a_node_that_is_not_a_checkpoint() -> None:
    mirror = Mirrored(bad={"/aesop/relays/broken": "not JSON"})
    report = build(settings(("shop", "broken")), ZooKeeperProbe(mirrored=mirror))
    shop, broken = report.sources
    assert shop.error == "no checkpoint at ZooKeeper /aesop/relays/shop yet (has the relay run?)"
    assert broken.error == "ZooKeeper /aesop/relays/broken: not JSON"
    assert [(s.status, s.unread, s.checkpoint) for s in report.sources] == [
        ("unknown", None, None)
    ] * 2
    assert report.status == "unknown"


# -- consumers ---------------------------------------------------------------------------


def test_consumer_partitions_behind_by_kafka_timestamp_or_applied_time() -> None:
    config = settings(
        (),
        (consumer("replica", SHOP, BILLING), consumer("audit", SHOP, "aesop.missing")),
        LagSettings(warn_seconds=30.0, critical_seconds=120.0),
    )
    mirror = Mirrored(
        consumers={
            ("replica", SHOP, 0): applied(41, 3000),
            ("replica", BILLING, 0): applied(7, 50_000),
            ("audit", SHOP, 0): applied(20, 9_000),
        }
    )
    offsets = Offsets(
        partitions={SHOP: [0, 1], BILLING: [0]},
        beginning={(SHOP, 0): 0, (SHOP, 1): 4, (BILLING, 0): 0},
        end={(SHOP, 0): 50, (SHOP, 1): 10, (BILLING, 0): 12},
        committed={("replica", SHOP, 0): 40, ("replica", SHOP, 1): 10, ("replica", BILLING, 0): 8},
        timestamps={(SHOP, 0, 42): NOW - 20_000, (BILLING, 0, 8): -1, (SHOP, 1, 4): NOW - 61_000},
    )
    replica, audit = build(
        config, ZooKeeperProbe(mirrored=mirror), kafka=KafkaProbe(offsets)
    ).consumers

    def rows(c: Any) -> list[tuple[Any, ...]]:
        return [(p.topic, p.partition, p.committed, p.end_offset, p.events_behind,
                 p.seconds_behind) for p in c.partitions]  # fmt: skip

    assert rows(replica) == [
        # committed 8 is past the applied offset 7; its timestamp is unknown (-1): the applied
        # position's age instead.
        (BILLING, 0, 8, 12, 4, 50.0),
        # applied 41, so 42 is next: its Kafka timestamp.
        (SHOP, 0, 40, 50, 8, 20.0),
        (SHOP, 1, 10, 10, 0, 0.0),
    ]
    assert (replica.events_behind, replica.seconds_behind, replica.status) == (12, 50.0, "warn")
    assert rows(audit) == [
        (SHOP, 0, None, 50, 29, 9.0),  # no timestamp read: the applied position's age
        (SHOP, 1, None, 10, 6, 61.0),  # nothing applied: from the beginning offset, 4
    ]
    assert (audit.events_behind, audit.seconds_behind, audit.status) == (35, 61.0, "warn")
    assert audit.error == "not in Kafka (yet): aesop.missing"


def test_a_partition_of_unknown_age_makes_the_consumer_unknown() -> None:
    offsets = Offsets(
        partitions={SHOP: [0, 1]},
        end={(SHOP, 0): 5, (SHOP, 1): 2},
        committed={("replica", SHOP, 0): 3, ("replica", SHOP, 1): 2},
    )
    [replica] = build(
        settings((), (consumer("replica", SHOP),)), kafka=KafkaProbe(offsets)
    ).consumers
    assert [(p.events_behind, p.seconds_behind) for p in replica.partitions] == [
        (2, None),
        (0, 0.0),
    ]
    # The events are known per partition, yet the consumer's sum is left out with the seconds.
    assert (replica.events_behind, replica.seconds_behind, replica.status) == (
        None,
        None,
        "unknown",
    )


def test_kafka_unreachable_leaves_the_mirror_positions_and_no_offsets() -> None:
    config = settings((), (consumer("replica", SHOP), consumer("fresh", BILLING)))
    mirror = Mirrored(
        consumers={("replica", SHOP, 0): applied(41, 1000), ("replica", SHOP, 3): applied(2, 1000)}
    )
    report = build(config, ZooKeeperProbe(mirrored=mirror), kafka=KafkaProbe(error=KAFKA_DOWN))
    replica, fresh = report.consumers
    assert [p.to_json() for p in replica.partitions] == [
        {"topic": SHOP, "partition": 0, "scn": 12884902888, "row": 0, "offset": 41,
         "ts_ms": NOW - 1000, "committed": None, "end_offset": None, "events_behind": None,
         "seconds_behind": None},
        {"topic": SHOP, "partition": 3, "scn": 12884902888, "row": 0, "offset": 2,
         "ts_ms": NOW - 1000, "committed": None, "end_offset": None, "events_behind": None,
         "seconds_behind": None},
    ]  # fmt: skip
    assert fresh.partitions == ()
    for c in (replica, fresh):
        assert (c.status, c.error) == ("unknown", "Kafka is unreachable; offsets unknown")
        assert (c.events_behind, c.seconds_behind) == (None, None)
    assert report.services.kafka.to_json() == {"ok": False, "error": KAFKA_DOWN}
    assert mail.down_services(report) == [f"kafka: {KAFKA_DOWN}"]


# -- grading -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "status"),
    [(None, "unknown"), (0.0, "ok"), (59.999, "ok"), (60.0, "warn"), (299.999, "warn"),
     (300.0, "critical"), (10**6, "critical")],
)  # fmt: skip
def test_grade_at_the_thresholds(seconds: float | None, status: str) -> None:
    assert grade(seconds, 60.0, 300.0) == status


def test_worst_orders_critical_warn_unknown_ok() -> None:
    assert worst([]) == "ok"
    assert worst(["ok", "unknown"]) == "unknown"
    assert worst(["unknown", "warn", "ok"]) == "warn"
    assert worst(["warn", "critical", "unknown"]) == "critical"


def test_sources_and_consumers_are_graded_at_the_boundaries() -> None:
    ages = {"a": 59_999, "b": 60_000, "c": 299_999, "d": 300_000, "e": -5_000}
    topics = {"ta": 59_999, "tb": 60_000, "tc": 299_999, "td": 300_000}
    config = settings(tuple(ages), tuple(consumer(f"c{t}", t) for t in topics))
    mirror = Mirrored(
        relays={n: checkpoint(F3, 999, age) for n, age in ages.items()},
        heartbeats={n: heartbeat("w", 0) for n in ages},
    )
    offsets = Offsets(
        partitions={t: [0] for t in topics},
        end={(t, 0): 1 for t in topics},
        timestamps={(t, 0, 0): NOW - age for t, age in topics.items()},
    )
    report = build(config, ZooKeeperProbe(mirrored=mirror), kafka=KafkaProbe(offsets))
    assert [(s.behind.seconds, s.status) for s in report.sources] == [
        (59.999, "ok"), (60.0, "warn"), (299.999, "warn"), (300.0, "critical"),
        (0.0, "ok"),  # a checkpoint from the future is not behind
    ]  # fmt: skip
    assert [(c.seconds_behind, c.status) for c in report.consumers] == [
        (59.999, "ok"), (60.0, "warn"), (299.999, "warn"), (300.0, "critical"),
    ]  # fmt: skip
    assert report.status == "critical"


def test_nothing_configured_is_ok() -> None:
    report = build(settings(), ZooKeeperProbe(mirrored=Mirrored()))
    assert report.to_json() == {
        "ts_ms": NOW,
        "status": "ok",
        "services": {
            "mysql": {},
            "kafka": {"ok": True, "error": None},
            "zookeeper": {"ok": True, "error": None, "enabled": True},
        },
        "positions": {
            "read_from": "zookeeper",
            "where": "ZooKeeper 127.0.0.1:2181 /aesop",
            "error": None,
        },
        "sources": [],
        "consumers": [],
        "thresholds": {"warn_seconds": 60.0, "critical_seconds": 300.0},
    }


# -- build_report: the probes' errors, then assemble -----------------------------------------


class OperationalError(Exception):
    """Stands for pymysql's: an error code and a message."""


class KafkaConnectionError(Exception):
    pass


async def test_build_report_names_what_each_probe_could_not_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def read_mirrored(settings: Settings, timeout: float) -> Mirrored:
        raise ZooKeeperUnreachable(ZOOKEEPER_DOWN)

    def read_server(source: SourceSettings, checkpoint: Any) -> ServerPosition:
        raise OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1' ([Errno 111])")

    async def read_kafka(settings: Settings, mirrored: Mirrored) -> Offsets:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")

    monkeypatch.setattr(probes, "read_mirrored", read_mirrored)
    monkeypatch.setattr(probes, "read_server", read_server)
    monkeypatch.setattr(probes, "read_kafka", read_kafka)
    monkeypatch.setattr("app.lag.time", SimpleNamespace(time=lambda: NOW / 1000))
    report = await build_report(settings(("gone",), (consumer("gone-c", "aesop.gone"),)))
    assert as_json(report.to_json()) == as_json(EXPECTED_ALL_DOWN)


async def test_build_report_reads_the_mirror_then_mysql_and_kafka(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, zookeeper, kafka = healthy()
    asked: dict[str, Any] = {}

    def read_server(source: SourceSettings, checkpoint: Any) -> ServerPosition:
        asked[source.name] = checkpoint
        found = server().server
        assert found is not None
        return found

    async def read_kafka(settings: Settings, mirrored: Mirrored) -> Offsets:
        asked["kafka"] = mirrored
        assert kafka.offsets is not None
        return kafka.offsets

    monkeypatch.setattr(probes, "read_mirrored", lambda settings, timeout: zookeeper.mirrored)
    monkeypatch.setattr(probes, "read_server", read_server)
    monkeypatch.setattr(probes, "read_kafka", read_kafka)
    monkeypatch.setattr("app.lag.time", SimpleNamespace(time=lambda: NOW / 1000))
    report = await build_report(config, {"shop": "reading"})
    # The relay's checkpoint goes to the MySQL probe, the applied positions to Kafka's.
    assert asked == {"shop": checkpoint(F3, 1000, 500), "kafka": zookeeper.mirrored}
    assert report.sources[0].state == "reading"
    expected = orjson.loads(as_json(EXPECTED_HEALTHY))
    expected["sources"][0]["state"] = "reading"
    assert as_json(report.to_json()) == as_json(expected)


@pytest.mark.parametrize(
    ("failure", "line"),
    [(TimeoutError(), "cannot reach Kafka at kafka://127.0.0.1:9092: TimeoutError"),
     (KafkaConnectionError("no broker"),
      "cannot reach Kafka at kafka://127.0.0.1:9092: KafkaConnectionError: no broker")],
)  # fmt: skip
async def test_a_kafka_failure_is_one_line(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, line: str
) -> None:
    async def read_kafka(settings: Settings, mirrored: Mirrored) -> Offsets:
        raise failure

    monkeypatch.setattr(probes, "read_kafka", read_kafka)
    assert await probes.probe_kafka(settings(), Mirrored()) == KafkaProbe(error=line)


async def test_a_zookeeper_failure_is_one_line_and_a_disabled_mirror_is_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class ConnectionLoss(Exception):
        pass

    def read_mirrored(settings: Settings, timeout: float) -> Mirrored:
        raise ConnectionLoss()

    monkeypatch.setattr(probes, "read_mirrored", read_mirrored)
    probe = await probes.probe_zookeeper(settings())
    assert probe.error == "cannot reach ZooKeeper at 127.0.0.1:2181: ConnectionLoss"
    assert probe.mirrored == Mirrored()
    assert await probes.probe_zookeeper(settings(zookeeper="")) == ZooKeeperProbe()


# -- imports -------------------------------------------------------------------------------


def test_importing_the_report_loads_no_driver() -> None:
    """The report's dataclasses and assembly load neither PyMySQL, aiokafka nor kazoo."""
    probe = (
        "import sys\n"
        "import app.lag.report\n"
        "drivers = {'pymysql', 'aiokafka', 'kazoo'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & drivers))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
