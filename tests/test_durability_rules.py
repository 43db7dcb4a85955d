"""Replication and durability, unit tier: the factor and minimum ISR every topic aesop creates
gets (capped at the live brokers), and what ``aesop check`` says of a cluster it read."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from app import producer
from app.durability import Cluster, TopicState, is_aesop_topic, report
from app.settings import Settings, load

CONFIG = """
[aesop]
id = "shopapp"

[[source]]
name = "shop"
mysql = "mysql://root@127.0.0.1:3306"
server_id = 1
topic = "aesop.shop"

[[consumer]]
name = "copy"
topics = ["aesop.shop"]
handler = "mysql"
mysql = "mysql://root@127.0.0.1:3306/replica"

[[consumer]]
name = "router"
topics = ["aesop.shop"]
handler = "route"
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "aesop.toml"
    path.write_text(CONFIG)
    return load(path, env={})


@pytest.fixture(autouse=True)
def fresh_warnings() -> None:
    producer._warned_caps.clear()


def test_a_topic_gets_the_factor_and_min_insync_when_there_are_enough_brokers() -> None:
    factor, config = producer.durable(3, 2, 5, {"cleanup.policy": "compact"})
    assert (factor, config) == (3, {"cleanup.policy": "compact", "min.insync.replicas": "2"})


def test_the_factor_is_capped_at_the_live_brokers_with_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.producer"):
        assert producer.durable(3, 2, 1, None) == (1, {"min.insync.replicas": "1"})
        assert producer.durable(3, 2, 1, {}) == (1, {"min.insync.replicas": "1"})
        assert producer.durable(3, 2, 2, None) == (2, {"min.insync.replicas": "2"})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "kafka: replication_factor = 3 but only 1 broker(s) are live; creating topics with "
        "replication factor 1 (add brokers, or set [aesop] replication_factor)",
        "kafka: replication_factor = 3 but only 2 broker(s) are live; creating topics with "
        "replication factor 2 (add brokers, or set [aesop] replication_factor)",
    ]


def test_no_cap_while_the_brokers_are_not_known_yet() -> None:
    assert producer.durable(3, 2, 0, None) == (3, {"min.insync.replicas": "2"})


def test_which_topics_are_aesops(settings: Settings) -> None:
    ours = [
        "aesop.shop", "aesop.shop.db.orders", "copy.dlq", "router.dlq",
        "shopapp-source_to_checkpoint-changelog", "copy-applied-changelog",
        "router-__assignor-__leader",
    ]  # fmt: skip
    theirs = ["aesop.other", "other-applied-changelog", "__consumer_offsets", "copy.dlq2"]
    assert [t for t in ours + theirs if is_aesop_topic(settings, t)] == ours


def test_report_on_a_durable_cluster(settings: Settings) -> None:
    cluster = Cluster(3, (TopicState("aesop.shop", 3, 2), TopicState("copy.dlq", 4, 3)), {0: False})
    assert report(settings, cluster) == [
        "ok: kafka: 2 aesop topic(s), each with replication factor >= 3 and "
        "min.insync.replicas >= 2",
        "ok: kafka: unclean.leader.election.enable = false on 1 broker(s)",
    ]


def test_report_names_each_topic_below_the_settings_as_a_warning(settings: Settings) -> None:
    cluster = Cluster(
        3,
        (TopicState("aesop.shop", 1, 1), TopicState("copy.dlq", 3, 1), TopicState("ok", 3, 2)),
        {0: False, 1: False, 2: False},
    )
    assert report(settings, cluster) == [
        "warning: kafka topic aesop.shop: replication factor 1 is below 3; raise it with "
        "kafka-reassign-partitions",
        "warning: kafka topic aesop.shop: min.insync.replicas = 1 is below 2; raise it with "
        "kafka-configs --alter --add-config min.insync.replicas=2",
        "warning: kafka topic copy.dlq: min.insync.replicas = 1 is below 2; raise it with "
        "kafka-configs --alter --add-config min.insync.replicas=2",
        "ok: kafka: unclean.leader.election.enable = false on 3 broker(s)",
    ]


def test_report_compares_with_the_capped_settings_and_says_so(settings: Settings) -> None:
    cluster = Cluster(1, (TopicState("aesop.shop", 1, 1),), {0: False})
    assert report(settings, cluster) == [
        "warning: kafka: replication_factor = 3 but only 1 broker(s) are live; topics are "
        "created with replication factor 1",
        "ok: kafka: 1 aesop topic(s), each with replication factor >= 1 and "
        "min.insync.replicas >= 1",
        "ok: kafka: unclean.leader.election.enable = false on 1 broker(s)",
    ]


def test_unclean_leader_election_is_an_error_naming_the_brokers(settings: Settings) -> None:
    cluster = Cluster(3, (), {0: True, 1: False, 2: True})
    assert report(settings, cluster)[-1] == (
        "error: kafka broker(s) 0, 2: unclean.leader.election.enable = true lets a lagging "
        "replica become leader and drop acknowledged changes; set "
        "unclean.leader.election.enable=false"
    )
