"""Against Kafka 3.9 (ZooKeeper mode, 9092) and Kafka 4 (KRaft mode, 9094), with the ZooKeeper
mirror off (``zookeeper = ""``): a worker relays a database and a ``mysql`` consumer applies it,
a restart resumes from the checkpoint, every topic it made carries the durability settings
(capped at the one broker, said in one line), ``aesop check`` says so, and ``aesop lag`` reads
checkpoints and applied positions from their changelog topics and says it does."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from app.durability import read_cluster
from app.settings import load
from tests.support.cli import aesop_lag, lag_json
from tests.support.kafka import count_then_settle, delete_topics_starting_with, read_topic
from tests.support.mysql import master_position, mysql_url, server_id, sql
from tests.support.replica import assert_converges, consumer_toml, create_schema
from tests.support.stack import free_port
from tests.support.workers import WorkerFactory
from tests.test_preflight import aesop_check

KAFKA4 = "127.0.0.1:9094"
BROKERS = {"kafka3": "127.0.0.1:9092", "kafka4": KAFKA4}
SCHEMA = {"items": "id INT PRIMARY KEY, name VARCHAR(40), qty INT"}
CAP_LINE = "kafka: replication_factor = 3 but only 1 broker(s) are live"


def answers(address: str) -> bool:
    host, port = address.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest, stack: object, unique: str) -> Iterator[str]:
    """Each Kafka of the stack in turn; the test's topics on it are deleted afterwards."""
    address = BROKERS[request.param]
    if not answers(address):
        pytest.fail(f"{request.param} not answering at {address}; run `make up`", pytrace=False)
    yield address
    delete_topics_starting_with(f"t{unique}", f"aesop.t{unique}", bootstrap=address)


def write_config(tmp_path: Path, unique: str, broker: str, database: str, replica: str) -> Path:
    path = tmp_path / "aesop.toml"
    topic = f"aesop.t{unique}"
    path.write_text(
        f'[aesop]\nid = "t{unique}"\nkafka = "kafka://{broker}"\nzookeeper = ""\n'
        f"web_port = {free_port()}\npartitions = 2\n\n"
        f'[[source]]\nname = "shop"\nmysql = "mysql://root@127.0.0.1:3306"\n'
        f'server_id = {server_id()}\ninclude = ["{database}.*"]\n'
        f'start = "{master_position()}"\ntopic = "{topic}"\n'
        + consumer_toml(f"t{unique}-copy", topic, f"mysql://root@127.0.0.1:3306/{replica}")
    )
    return path


def topic_configs(broker: str, topics: list[str]) -> dict[str, dict[str, str]]:
    async def read() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
            found = {}
            for response in await admin.describe_configs(resources):
                for resource in response.resources:
                    found[resource[3]] = {e[0]: e[1] for e in resource[4]}
            return found
        finally:
            await admin.close()

    return asyncio.run(read())


def test_a_worker_without_zookeeper_relays_applies_resumes_and_reports_from_changelogs(
    broker: str,
    workers: WorkerFactory,
    tmp_path: Path,
    unique: str,
    database: str,
    replica: str,
) -> None:
    connect = mysql_url().connect_args()
    create_schema(connect, database, SCHEMA)
    create_schema(connect, replica, SCHEMA)
    config = write_config(tmp_path, unique, broker, database, replica)
    topic = f"aesop.t{unique}"

    worker = workers.start(config)
    worker.wait_for_log("relay shop: reading", timeout=90)
    sql(*(f"INSERT INTO items VALUES ({i}, 'n{i}', {i})" for i in range(20)), database=database)
    sql("UPDATE items SET qty = qty + 1 WHERE id < 10", "DELETE FROM items WHERE id = 3",
        database=database)  # fmt: skip
    assert_converges((connect, database), (connect, replica), 90)
    worker.stop()

    # Every topic it made has the factor capped at the one broker, said in one line.
    assert worker.log().count(CAP_LINE) == 1, worker.log()
    settings = load(config, env={})
    cluster = asyncio.run(read_cluster(settings))
    names = [t.name for t in cluster.topics]
    assert {topic, f"t{unique}-copy.dlq", f"t{unique}-source_to_checkpoint-changelog",
            f"t{unique}-copy-applied-changelog"} <= set(names), names  # fmt: skip
    assert {(t.replication, t.min_insync) for t in cluster.topics} == {(1, 1)}
    configs = topic_configs(broker, names)
    assert {configs[n]["min.insync.replicas"] for n in names} == {"1"}
    # Nothing tried ZooKeeper.
    assert "kazoo" not in worker.log() and "2181" not in worker.log()

    outcome = aesop_check(config)
    assert outcome.code == 0, outcome.text
    # Its checkpoint comes from the changelog, as the worker's does.
    assert re.match(r"ok: source 'shop': reads from mysql-bin\.\d+:\d+ \(checkpoint\)"
                    r"; binlog compression: log_bin_compress=OFF, log_bin_compress_min_len=256\n"
                    rf"ok: consumer 't{unique}-copy': mysql over {topic}\n$",
                    outcome.stdout), outcome.text  # fmt: skip
    assert outcome.kafka == [
        "warning: kafka: replication_factor = 3 but only 1 broker(s) are live; topics are "
        "created with replication factor 1\n",
        f"ok: kafka: {len(names)} aesop topic(s), each with replication factor >= 1 and "
        "min.insync.replicas >= 1\n",
        "ok: kafka: unclean.leader.election.enable = false on 1 broker(s)\n",
    ]

    # With no worker up, the lag comes from the changelogs, and says so.
    report, done = lag_json(config)
    assert done.returncode == 0, done.stdout + done.stderr
    changelogs = f"t{unique}-source_to_checkpoint-changelog, t{unique}-copy-applied-changelog"
    assert report["positions"] == {
        "read_from": "changelogs", "where": f"Kafka changelogs {changelogs}", "error": None,
    }  # fmt: skip
    [shop] = report["sources"]
    assert shop["checkpoint"] is not None and shop["status"] == "ok", (shop["error"], report)
    [copy] = report["consumers"]
    assert copy["events_behind"] == 0 and copy["status"] == "ok", copy
    published = read_topic(topic, count_then_settle(31, 0.5), bootstrap=broker)
    last = {}
    for message in published:
        last[message["partition"]] = message
    # The checkpoint is past the last change published (the replica's own writes, on the same
    # server, follow it in the binlog).
    assert shop["checkpoint"]["scn"] >= max(m["value"]["scn"] for m in published), shop
    for partition in copy["partitions"]:
        message = last[partition["partition"]]
        assert (partition["scn"], partition["row"], partition["offset"]) == (
            message["value"]["scn"], message["value"]["row"], message["offset"],
        )  # fmt: skip
    text = aesop_lag(config)
    assert f"positions: read from Kafka changelogs {changelogs}\n" in text.stdout, text.stdout
    assert "services: MySQL and Kafka reachable\n" in text.stdout

    # A restart resumes from the checkpoint in the changelog: nothing published twice.
    sql("INSERT INTO items VALUES (100, 'after', 1)", "DELETE FROM items WHERE id = 4",
        database=database)  # fmt: skip
    worker = workers.start(config)
    worker.wait_for_log("relay shop: checkpoint from table", timeout=90)
    assert_converges((connect, database), (connect, replica), 90)
    published = read_topic(topic, count_then_settle(33, 1.0), bootstrap=broker)
    identities = [(m["value"]["scn"], m["value"]["row"]) for m in published]
    assert len(identities) == len(set(identities)) == 33  # 20 + 10 + 1, then 2
    assert worker.stop() == 0


def set_broker_config(broker: str, configs: dict[str, str]) -> None:
    """Replace broker 0's dynamic configs with ``configs`` ({} removes them)."""

    async def alter() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker)
        await admin.start()
        try:
            resource = ConfigResource(ConfigResourceType.BROKER, "0", configs=configs)
            for response in await admin.alter_configs([resource]):
                assert all(r[0] == 0 for r in response.resources), response
        finally:
            await admin.close()

    asyncio.run(alter())


def test_check_refuses_unclean_leader_election_and_an_unreachable_kafka(
    stack: object, tmp_path: Path, unique: str
) -> None:
    broker = BROKERS["kafka3"]
    config = tmp_path / "aesop.toml"
    config.write_text(f'[aesop]\nid = "t{unique}"\nkafka = "kafka://{broker}"\nzookeeper = ""\n')
    set_broker_config(broker, {"unclean.leader.election.enable": "true"})
    try:
        outcome = aesop_check(config)
    finally:
        set_broker_config(broker, {})
    assert outcome.code == 1, outcome.text
    assert outcome.stderr == (
        "error: kafka broker(s) 0: unclean.leader.election.enable = true lets a lagging "
        "replica become leader and drop acknowledged changes; set "
        "unclean.leader.election.enable=false\n"
    )
    assert aesop_check(config).code == 0, "restoring the broker setting should pass the check"

    config.write_text(f'[aesop]\nkafka = "kafka://127.0.0.1:{free_port()}"\nzookeeper = ""\n')
    outcome = aesop_check(config)
    assert outcome.code == 1 and "Traceback" not in outcome.text, outcome.text
    [line] = outcome.stderr.splitlines()
    assert line.startswith("error: cannot read Kafka at kafka://127.0.0.1:"), line
    assert line.endswith("; is it running?"), line
