"""Lag monitoring against the real stack: ``aesop lag`` with no worker up (numbers checked
against ZooKeeper, MySQL and Kafka, exit codes around the limit, unreachable services), the
lag email through a real SMTP server (STARTTLS and login), and a worker's ``GET /health``,
``GET /lag`` and scheduled email."""

from __future__ import annotations

import asyncio
import datetime
import email
import ipaddress
import random
import re
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.cli import aesop_lag, get, lag_json
from tests.support.config import ConfigFactory, SourceSpec
from tests.support.mysql import master_position, sql
from tests.support.stack import KAFKA, free_port, wait_until
from tests.support.workers import WorkerFactory
from tests.support.zookeeper import zk_get

pytestmark = pytest.mark.usefixtures("drop_test_resources")

HANDLER = "tests.sample_handlers:record"


# -- fixtures and helpers ---------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, for the SMTP server's STARTTLS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def smtp_toml(port: int, extra: str = "") -> str:
    return (
        f'\n[smtp]\nhost = "127.0.0.1"\nport = {port}\nfrom = "aesop@example.com"\n'
        f'to = ["ops@example.com", "dba@example.com"]\n{extra}'
    )


def consumer_toml(name: str, topic: str) -> str:
    return f'\n[[consumer]]\nname = "{name}"\ntopics = ["{topic}"]\nhandler = "{HANDLER}"\n'


def source(name: str, database: str, topic: str, mysql: str | None = None) -> SourceSpec:
    spec = SourceSpec(
        name=name,
        include=[f"{database}.*"],
        server_id=7000 + random.randrange(10**8),
        start=master_position(),
        topic=topic,
    )
    if mysql is not None:
        spec.mysql = mysql
    return spec


def end_offsets(topic: str) -> dict[int, int]:
    async def read() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
        await consumer.start()
        try:
            while not (partitions := consumer.partitions_for_topic(topic)):
                await consumer._client.force_metadata_update()  # test-only: refresh metadata
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(asyncio.wait_for(read(), 30))


def produce(topic: str, partition: int, value: bytes) -> int:
    """Append one message; returns its Kafka timestamp (ms)."""

    async def send() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic, value, key=b"k", partition=partition)
            return int(meta.timestamp)
        finally:
            await producer.stop()

    return asyncio.run(send())


def web_port(config: Path) -> int:
    match = re.search(r"^web_port = (\d+)$", config.read_text(), re.M)
    assert match is not None
    return int(match.group(1))


def answered(port: int, path: str, reading: str) -> tuple[int, dict[str, Any]] | None:
    """GET path once the web server answers and the relay ``reading`` streams."""
    try:
        status, body = get(port, path)
    except (urllib.error.URLError, ConnectionError):
        return None
    return (status, body) if body["relays"][reading]["state"] == "reading" else None


def workload(database: str, rows: int) -> None:
    sql(
        "CREATE TABLE items (id INT PRIMARY KEY, v INT)",
        *(f"INSERT INTO items VALUES ({i}, {i})" for i in range(1, rows + 1)),
        database=database,
    )


def assert_partitions_match_zookeeper_and_kafka(
    consumer: dict[str, Any], zk_root: str, topic: str
) -> dict[int, int]:
    """Each partition's applied position is ZooKeeper's; its end offset is Kafka's."""
    ends = end_offsets(topic)
    by_partition = {p["partition"]: p for p in consumer["partitions"]}
    assert sorted(by_partition) == sorted(ends)
    for partition, end in ends.items():
        entry = by_partition[partition]
        mirrored = zk_get(f"{zk_root}/consumers/{consumer['name']}/{topic}/{partition}") or {}
        assert entry["topic"] == topic
        assert entry["end_offset"] == end
        for key in ("scn", "row", "offset", "ts_ms"):
            assert entry[key] == mirrored.get(key), (partition, key, entry, mirrored)
    return ends


# -- aesop lag with no worker up ---------------------------------------------------------


def test_aesop_lag_with_no_worker_reads_zookeeper_mysql_and_kafka_and_exits_by_the_limit(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    app_id, topic = f"t{unique}", f"aesop.t{unique}"
    zk_root = f"/aesop-test/{app_id}"
    extra = consumer_toml(f"{app_id}-c", topic)
    # The source is not read once the worker stops; that is reported after an hour here.
    extra += "\n[lag]\nwarn_seconds = 30\ncritical_seconds = 120\nunread_seconds = 3600\n"
    config = make_config([source("a", database, topic)], extra)
    out = tmp_path / "seen.jsonl"
    worker = workers.start(config, env={"AESOP_TEST_RECORD": str(out)})
    worker.wait_for_log("relay a: reading")
    workload(database, 30)
    wait_until(lambda: out.exists() and len(out.read_bytes().splitlines()) >= 30, 60, "30 applied")

    def relay_caught_up() -> bool:
        checkpoint = zk_get(f"{zk_root}/relays/a") or {}
        return f"{checkpoint.get('file')}:{checkpoint.get('pos')}" == master_position()

    wait_until(relay_caught_up, 30, "the relay checkpoint at MySQL's position")
    assert worker.stop() == 0

    # Caught up: nothing behind, and every number is what ZooKeeper, MySQL and Kafka say.
    report, done = lag_json(config)
    assert done.returncode == 0, done.stderr
    assert report["services"] == {
        "mysql": {"a": {"ok": True, "error": None}},
        "kafka": {"ok": True, "error": None},
        "zookeeper": {"ok": True, "error": None, "enabled": True},
    }
    assert report["thresholds"] == {"warn_seconds": 30.0, "critical_seconds": 120.0}
    [relay] = report["sources"]
    checkpoint = zk_get(f"{zk_root}/relays/a")
    file, pos = master_position().rsplit(":", 1)
    scn = int(file.rsplit(".", 1)[1]) << 32 | int(pos)
    assert relay["checkpoint"] == checkpoint
    assert relay["mysql"] == {"file": file, "pos": int(pos), "scn": scn}
    assert relay["behind"] == {"bytes": 0, "scn": 0, "seconds": 0.0}
    assert (relay["name"], relay["topic"], relay["state"], relay["status"]) == (
        "a",
        topic,
        None,
        "ok",
    )
    [consumer] = report["consumers"]
    assert consumer["name"] == f"{app_id}-c" and consumer["topics"] == [topic]
    ends = assert_partitions_match_zookeeper_and_kafka(consumer, zk_root, topic)
    assert sum(ends.values()) == 30
    assert all(p["events_behind"] == 0 and p["seconds_behind"] == 0.0
               for p in consumer["partitions"])  # fmt: skip
    assert (consumer["events_behind"], consumer["seconds_behind"]) == (0, 0.0)
    assert consumer["status"] == "ok" and report["status"] == "ok"

    # MySQL moves on with no relay: bytes and SCN behind are the binlog distance, seconds the
    # checkpoint's age. A message the consumer has not processed is one event behind, as old
    # as its Kafka timestamp.
    sql("INSERT INTO items VALUES (100, 100)", database=database)
    busy = max(ends, key=lambda p: ends[p])
    produced_ms = produce(topic, busy, b"not yet processed")
    time.sleep(1.5)
    before_ms = int(time.time() * 1000)
    report, done = lag_json(config, "--max-lag-seconds", "3600")
    after_ms = int(time.time() * 1000)
    assert done.returncode == 0, done.stderr
    [relay] = report["sources"]
    new_file, new_pos = master_position().rsplit(":", 1)
    assert new_file == file, "no binlog rotation expected in this test"
    assert relay["behind"]["bytes"] == int(new_pos) - int(pos) > 0
    assert relay["behind"]["scn"] == int(new_pos) - int(pos)
    assert (before_ms - checkpoint["ts_ms"]) / 1000 <= relay["behind"]["seconds"]
    assert relay["behind"]["seconds"] <= (after_ms - checkpoint["ts_ms"]) / 1000
    [consumer] = report["consumers"]
    waiting = next(p for p in consumer["partitions"] if p["partition"] == busy)
    assert (waiting["end_offset"], waiting["events_behind"]) == (ends[busy] + 1, 1)
    assert (before_ms - produced_ms) / 1000 <= waiting["seconds_behind"]
    assert waiting["seconds_behind"] <= (after_ms - produced_ms) / 1000
    assert consumer["events_behind"] == 1
    assert consumer["seconds_behind"] == waiting["seconds_behind"]

    # The limit: above it, exit 1 naming what is behind; the table is printed either way.
    over = aesop_lag(config, "--max-lag-seconds", "1")
    assert over.returncode == 1, over.stderr
    assert "aesop: source a is " in over.stderr and "behind (more than 1s)" in over.stderr
    assert f"aesop: consumer {app_id}-c is " in over.stderr
    assert "SOURCE" in over.stdout and f"{file}:{pos}" in over.stdout
    assert f"{topic}/{busy}" in over.stdout
    assert "Traceback" not in over.stderr
    bad = aesop_lag(config, "--max-lag-seconds", "soon")
    assert bad.returncode == 2 and "'soon' is not a number of seconds" in bad.stderr


def test_aesop_lag_names_each_unreachable_service_and_exits_3(
    tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    closed = free_port()
    spec = source("gone", database, f"aesop.t{unique}", mysql=f"mysql://root@127.0.0.1:{closed}")
    config = make_config([spec], zookeeper=f"127.0.0.1:{free_port()}")
    text = config.read_text().replace(KAFKA, f"127.0.0.1:{free_port()}")
    config.write_text(text + consumer_toml(f"t{unique}-c", f"aesop.t{unique}"))
    started = time.monotonic()
    done = aesop_lag(config)
    assert time.monotonic() - started < 60
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("aesop: mysql (source gone): cannot reach") for line in lines)
    assert any(line.startswith("aesop: kafka: cannot reach Kafka at") for line in lines)
    assert any(line.startswith("aesop: zookeeper: cannot reach ZooKeeper at") for line in lines)
    assert "DOWN kafka: cannot reach Kafka" in done.stdout


# -- email -------------------------------------------------------------------------------


def test_aesop_lag_email_through_starttls_and_login(
    tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    import ssl

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[str, str]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        assert isinstance(data, LoginPassword)
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=data.password == b"s3cret")

    inbox = Inbox()
    port = free_port()
    server = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )
    server.start()
    try:
        extra = smtp_toml(port, 'starttls = true\nuser = "aesop"\npassword = "s3cret"\n')
        config = make_config([source("a", database, f"aesop.t{unique}")], extra)  # fmt: skip
        trust = {"SSL_CERT_FILE": str(cert)}
        done = aesop_lag(config, "--email", env=trust)
        assert done.returncode == 0, done.stderr
        assert logins == [("aesop", "s3cret")]
        [(recipients, message)] = inbox.messages
        assert recipients == ["ops@example.com", "dba@example.com"]
        assert message["Subject"] == f"aesop lag: unknown (t{unique})"
        assert message["From"] == "aesop@example.com"
        body, attachment = [part for part in message.walk() if not part.is_multipart()]
        assert body.get_payload(decode=True).decode().replace("\r\n", "\n") == done.stdout
        assert attachment.get_filename() == "lag.json"
        report = orjson.loads(attachment.get_payload(decode=True))
        assert [s["name"] for s in report["sources"]] == ["a"]
        assert report["sources"][0]["error"].startswith("no checkpoint at ZooKeeper")

        closed = free_port()
        config.write_text(config.read_text().replace(f"port = {port}\n", f"port = {closed}\n"))
        refused = aesop_lag(config, "--email", env=trust)
        assert refused.returncode == 1
        sending = f"aesop: cannot send the lag email through 127.0.0.1:{closed} "
        assert refused.stderr.startswith(sending) and "ConnectionRefusedError" in refused.stderr
        assert "Traceback" not in refused.stderr and len(inbox.messages) == 1
    finally:
        server.stop()
    missing = make_config([], name="none.toml")
    done = aesop_lag(missing, "--email")
    assert done.returncode == 1
    assert done.stderr == f"aesop: {missing}: no [smtp] section; add one to send the lag by email\n"


# -- a worker's views and schedule ---------------------------------------------------------


def test_worker_health_lag_and_scheduled_email(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    app_id, topic = f"t{unique}", f"aesop.t{unique}"
    zk_root = f"/aesop-test/{app_id}"
    inbox = Inbox()
    smtp_port = free_port()
    server = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    server.start()
    try:
        extra = consumer_toml(f"{app_id}-c", topic)
        extra += smtp_toml(smtp_port, 'schedule = "* * * * * */3"\n')
        config = make_config([source("a", database, topic)], extra)
        out = tmp_path / "seen.jsonl"
        worker = workers.start(config, env={"AESOP_TEST_RECORD": str(out)})
        port = web_port(config)
        worker.wait_for_log("relay a: reading")
        status, health = wait_until(lambda: answered(port, "/health", "a"), 60, "relay a reading")
        assert status == 200, health
        assert health["ok"] is True and health["down"] == []
        assert health["relays"]["a"]["state"] == "reading"
        assert health["services"]["mysql"] == {"a": {"ok": True, "error": None}}

        workload(database, 20)

        def settled() -> dict[str, Any] | None:
            report = get(port, "/lag")[1]
            [consumer] = report["consumers"]
            [relay] = report["sources"]
            done = (
                consumer["events_behind"] == 0
                and sum(p["end_offset"] or 0 for p in consumer["partitions"]) == 20
            )
            return report if done and relay["behind"]["bytes"] == 0 else None

        report = wait_until(settled, 60, "/lag to show everything relayed and applied", every=1)
        [relay] = report["sources"]
        assert relay["state"] == "reading" and relay["status"] == "ok"
        assert relay["checkpoint"] == zk_get(f"{zk_root}/relays/a")
        assert relay["mysql"]["file"] + ":" + str(relay["mysql"]["pos"]) == master_position()
        assert_partitions_match_zookeeper_and_kafka(report["consumers"][0], zk_root, topic)

        wait_until(lambda: len(inbox.messages) >= 2, 30, "two scheduled lag emails")
        recipients, message = inbox.messages[0]
        assert recipients == ["ops@example.com", "dba@example.com"]
        assert message["Subject"].startswith("aesop lag: ")
        assert "SOURCE" in str(message.get_payload(0))
        assert "lag email: sent to ops@example.com, dba@example.com" in worker.log()
        assert worker.stop() == 0
    finally:
        server.stop()


def test_health_is_503_naming_a_source_whose_mysql_is_unreachable(
    workers: WorkerFactory, tmp_path: Path, unique: str, database: str, make_config: ConfigFactory
) -> None:
    closed = free_port()
    specs = [
        source("good", database, f"aesop.t{unique}.good"),
        source("gone", database, f"aesop.t{unique}.gone", f"mysql://root@127.0.0.1:{closed}"),
    ]
    config = make_config(specs)
    worker = workers.start(config)
    port = web_port(config)
    worker.wait_for_log("relay good: reading")
    status, health = wait_until(lambda: answered(port, "/health", "good"), 60, "relay good")
    assert status == 503, health
    assert health["ok"] is False
    assert health["services"]["mysql"]["good"] == {"ok": True, "error": None}
    assert health["services"]["mysql"]["gone"]["ok"] is False
    assert any(line.startswith("mysql (source gone): cannot reach") for line in health["down"])
    assert any(line.startswith("relay gone: ") for line in health["down"])
    assert not any("good" in line for line in health["down"])
    assert health["relays"]["good"]["state"] == "reading"
    lag = get(port, "/lag")
    assert lag[0] == 200 and lag[1]["services"] == health["services"]
    assert worker.stop() == 0
