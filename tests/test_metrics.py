"""``GET /metrics`` scraped by a real Prometheus: a worker relays and applies a workload, and
Prometheus' HTTP API must show our series with the values the workload implies (published and
applied per table and op, a consumer held by a transient failure with its lag and retries,
a dead letter, a skipped duplicate, a relay reconnect), Faust's own series, and the alert
rules of monitoring/alerts.yml loaded. The local stack's ZooKeeper (7000) and Kafka (JMX
exporter, 7071) serve metrics too, and the same Prometheus scrapes them."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.config import SourceSpec
from tests.support.kafka import read_topic
from tests.support.mysql import binlog_transactions, master_position, sql
from tests.support.stack import KAFKA, ROOT, free_port, wait_until
from tests.support.workers import WorkerFactory

pytestmark = pytest.mark.usefixtures("drop_test_resources")

ZOOKEEPER_METRICS = "127.0.0.1:7000"
KAFKA_METRICS = "127.0.0.1:7071"
SLOW_JOBS = {"zookeeper", "kafka"}  # a JMX scrape takes a while: every 5 s, not every second


class Prometheus:
    """A ``prometheus`` process of our own on 127.0.0.1, scraping the given targets every
    second; stopped by its pid."""

    def __init__(self, tmp: Path, jobs: dict[str, list[str]]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus not found; run `make up` to install it", pytrace=False)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "monitoring" / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_interval": "5s" if job in SLOW_JOBS else "1s",
                    "static_configs": [{"targets": targets}],
                }
                for job, targets in jobs.items()
            ],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._ready, 30, "prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: {sorted labels (without __name__): value}."""
        result = self.api("query", query=promql)["result"]
        return {
            tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__")): float(
                item["value"][1]
            )
            for item in result
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(jobs: dict[str, list[str]]) -> Prometheus:
        prometheus = Prometheus(tmp_path, jobs)
        started.append(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


def by(
    series: dict[tuple[tuple[str, str], ...], float], *names: str
) -> dict[tuple[str, ...], float]:
    """Series values keyed by the named labels' values."""
    return {tuple(dict(labels)[n] for n in names): value for labels, value in series.items()}


def eventually(prometheus: Prometheus, promql: str, check: Any, what: str, timeout: float = 60):
    """Query until ``check(result)`` holds; fail with the last result."""
    seen: list[Any] = []

    def probe() -> bool:
        seen[:] = [prometheus.query(promql)]
        return bool(check(seen[0]))

    try:
        wait_until(probe, timeout, what, every=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last {promql} = {seen[0] if seen else None}") from None
    return seen[0]


def dump_threads() -> set[int]:
    rows = sql("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump'")
    return {row[0] for row in rows}


async def produce(topic: str, messages: list[tuple[bytes | None, bytes, int | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all")
    await producer.start()
    try:
        for key, value, partition in messages:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def test_prometheus_scrapes_the_workers_series(
    workers: WorkerFactory,
    prometheus_factory: Any,
    tmp_path: Path,
    unique: str,
    database: str,
    make_config,
) -> None:
    app_id = f"t{unique}"
    topic = f"aesop.t{unique}"
    consumer = f"{app_id}-flaky"
    spec = SourceSpec(
        name="shop",
        include=[f"{database}.*"],
        server_id=7000 + random.randrange(10**8),
        start=master_position(),
        topic=topic,
    )
    extra = (
        f'\n[[consumer]]\nname = "{consumer}"\ntopics = ["{topic}"]\n'
        'handler = "tests.sample_handlers:flaky"\n'
    )
    config = make_config([spec], extra=extra)
    web_port = next(
        int(line.split("=")[1]) for line in config.read_text().splitlines()
        if line.startswith("web_port")
    )  # fmt: skip
    gate = tmp_path / "gate"
    before = dump_threads()
    env = {"AESOP_TEST_RECORD": str(tmp_path / "seen.jsonl"), "AESOP_TEST_GATE": str(gate)}
    worker = workers.start(config, env=env)
    prometheus = prometheus_factory(
        {
            "aesop": [f"127.0.0.1:{web_port}"],
            "zookeeper": [ZOOKEEPER_METRICS],
            "kafka": [KAFKA_METRICS],
        }
    )
    worker.wait_for_log("relay shop: reading")

    items, orders = f"{database}.items", f"{database}.orders"
    sql(
        f"CREATE TABLE {items} (id INT PRIMARY KEY, v INT)",
        f"CREATE TABLE {orders} (id INT PRIMARY KEY, v INT)",
        "BEGIN",
        *(f"INSERT INTO {items} VALUES ({i}, 0)" for i in range(1, 11)),
        "COMMIT",
        f"UPDATE {items} SET v = 1 WHERE id <= 4",
        f"DELETE FROM {items} WHERE id > 7",
        f"INSERT INTO {orders} VALUES (1, 0), (2, 0)",
    )
    expected = {
        (items, "c"): 10.0, (items, "u"): 4.0, (items, "d"): 3.0, (orders, "c"): 2.0
    }  # fmt: skip
    source = 'source="shop"'
    published = eventually(
        prometheus, f"aesop_relay_events_published_total{{{source}}}",
        lambda r: by(r, "table", "op") == expected, "the published counts",
    )  # fmt: skip
    assert set(by(published, "source")) == {("shop",)}
    applied = eventually(
        prometheus, f'aesop_consumer_events_applied_total{{consumer="{consumer}"}}',
        lambda r: by(r, "table", "op") == expected, "the applied counts",
    )  # fmt: skip
    assert set(by(applied, "source")) == {("shop",)}
    eventually(
        prometheus, f'aesop_consumer_lag_events{{consumer="{consumer}"}}',
        lambda r: len(r) == 4 and set(r.values()) == {0.0}, "four partitions without lag",
    )  # fmt: skip
    assert prometheus.query(f'aesop_consumer_events_consumed_total{{consumer="{consumer}"}}') != {}
    assert by(prometheus.query(f"aesop_relay_state{{{source}}} == 1"), "state") == {
        ("reading",): 1.0
    }
    # The relay's SCN is that of the last change (the server's own listing says which), and
    # the consumer applied up to it.
    last_scn = binlog_transactions(spec.start, database)[-1].rows[-1].scn
    relay_scn = prometheus.query(f"aesop_relay_scn{{{source}}}")
    assert list(relay_scn.values()) == [float(last_scn)]
    applied_scn = prometheus.query(f'max(aesop_consumer_applied_scn{{consumer="{consumer}"}})')
    assert list(applied_scn.values()) == [float(last_scn)]
    lag = by(prometheus.query(f"aesop_relay_lag_seconds{{{source}}}"), "source")[("shop",)]
    assert 0 <= lag < 30
    age = by(prometheus.query(f"aesop_relay_checkpoint_age_seconds{{{source}}}"), "source")
    assert 0 <= age[("shop",)] < 60
    commit = prometheus.query(f"time() - aesop_relay_last_event_timestamp_seconds{{{source}}}")
    assert 0 <= next(iter(commit.values())) < 120

    # A transient failure holds the consumer: lag and retries show, then it catches up.
    gate.touch()
    sql(f"INSERT INTO {items} VALUES (100, 0)")
    eventually(
        prometheus, f'aesop_consumer_retries_total{{consumer="{consumer}"}}',
        lambda r: r and min(r.values()) >= 2, "retries while the gate is closed",
    )  # fmt: skip
    eventually(
        prometheus, f'sum(aesop_consumer_lag_events{{consumer="{consumer}"}})',
        lambda r: list(r.values()) == [1.0], "one change waiting",
    )  # fmt: skip
    eventually(
        prometheus, f'max(aesop_consumer_lag_seconds{{consumer="{consumer}"}})',
        lambda r: r and 1.0 <= max(r.values()) < 120, "the waiting change's lag in seconds",
    )  # fmt: skip
    gate.unlink()
    expected[(items, "c")] = 11.0
    eventually(
        prometheus, f'aesop_consumer_events_applied_total{{consumer="{consumer}"}}',
        lambda r: by(r, "table", "op") == expected, "the held change applied",
    )  # fmt: skip
    eventually(
        prometheus, f'max(aesop_consumer_lag_seconds{{consumer="{consumer}"}})'
        f' + max(aesop_consumer_lag_events{{consumer="{consumer}"}})',
        lambda r: list(r.values()) == [0.0], "no lag once applied",
    )  # fmt: skip

    # A message that is no change event is dead-lettered; a re-published one is skipped.
    first = read_topic(topic, lambda m: len(m) >= 1, raw=True)[0]
    again = (first["key"], first["value"], first["partition"])
    asyncio.run(produce(topic, [(b"junk", b"not json", 0), again]))
    eventually(
        prometheus, f'aesop_consumer_dead_lettered_total{{consumer="{consumer}"}}',
        lambda r: list(r.values()) == [1.0], "one dead letter",
    )  # fmt: skip
    eventually(
        prometheus, f'aesop_consumer_skipped_total{{consumer="{consumer}"}}',
        lambda r: list(r.values()) == [1.0], "one skipped duplicate",
    )  # fmt: skip

    # The server drops the relay's connection: it reconnects and reads on.
    ours = dump_threads() - before
    assert len(ours) == 1, f"binlog dump threads of this worker: {ours}"
    sql(f"KILL {ours.pop()}")
    eventually(
        prometheus, f"aesop_relay_reconnects_total{{{source}}}",
        lambda r: list(r.values()) == [1.0], "one reconnect",
    )  # fmt: skip
    sql(f"INSERT INTO {orders} VALUES (3, 0)")
    expected[(orders, "c")] = 3.0
    eventually(
        prometheus, f"aesop_relay_events_published_total{{{source}}}",
        lambda r: by(r, "table", "op") == expected, "a change published after the reconnect",
    )  # fmt: skip

    # Faust's own sensor, the process collector, and the rules Prometheus loaded.
    assert list(prometheus.query('up{job="aesop"}').values()) == [1.0]
    assert prometheus.query('count({__name__=~"faust_.+", job="aesop"})')
    assert prometheus.query('faust_assignment_operations_total{operation="completed"}')
    assert prometheus.query('process_resident_memory_bytes{job="aesop"}')
    rules = {rule["name"] for group in prometheus.api("rules")["groups"] for rule in group["rules"]}
    assert {"AesopWorkerDown", "AesopRelayLag", "AesopConsumerStalled"} <= rules
    # The stack's own exporters, scraped by the same Prometheus.
    eventually(
        prometheus, 'up{job=~"zookeeper|kafka"}',
        lambda r: by(r, "job") == {("zookeeper",): 1.0, ("kafka",): 1.0},
        "ZooKeeper and Kafka scraped",
    )  # fmt: skip
    assert prometheus.query('znode_count{job="zookeeper"} > 0')
    assert prometheus.query(
        'kafka_server_replicamanager_value{job="kafka", name="PartitionCount"} > 0'
    )
    assert prometheus.query('ALERTS{alertname=~"Aesop.+", alertstate="firing"}') == {}
    assert worker.stop() == 0


def scrape(address: str) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            return str(response.read().decode())
    except OSError as exc:
        raise AssertionError(f"no metrics at {address} ({exc}); run `make up`") from None


def test_zookeeper_serves_prometheus_metrics(stack: Any) -> None:
    text = scrape(ZOOKEEPER_METRICS)
    for name in ("znode_count", "num_alive_connections", "jvm_memory_bytes_used"):
        assert f"\n{name}" in text, f"{name} missing from ZooKeeper's metrics"


def test_kafka_serves_jmx_metrics(stack: Any) -> None:
    text = scrape(KAFKA_METRICS)
    for name in (
        'kafka_server_replicamanager_value{name="PartitionCount"}',
        'kafka_server_brokertopicmetrics_count{name="MessagesInPerSec"}',
        "java_lang_memory_heapmemoryusage_used",
    ):
        assert f"\n{name}" in text, f"{name} missing from Kafka's JMX exporter"
