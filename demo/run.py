"""Runs the demo: sample schema, a worker, a small load, and the change events as they arrive."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pymysql
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "demo" / "aesop.toml"
LOG = ROOT / ".stack" / "demo-worker.log"
TOPIC = "aesop.shop"
NAMES = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances"]


def connect() -> pymysql.connections.Connection:
    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)


def create_schema() -> None:
    statements = (ROOT / "demo" / "schema.sql").read_text().split(";")
    with connect() as conn, conn.cursor() as cur:
        for statement in statements:
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                cur.execute("\n".join(lines))


def generate_load(stop: threading.Event, rate: float) -> None:
    """Customers sign up, order, pay, ship, sometimes cancel; audit rows are excluded."""
    rng = random.Random(7)
    with connect() as conn, conn.cursor() as cur:
        while not stop.wait(1 / rate):
            roll = rng.random()
            if roll < 0.15:
                name = rng.choice(NAMES)
                cur.execute(
                    "INSERT INTO demo_shop.customers (name, email) VALUES (%s, %s)",
                    (name, f"{name.lower()}{rng.randint(1, 999)}@example.org"),
                )
            elif roll < 0.55:
                cur.execute("SELECT COALESCE(MAX(id), 1) FROM demo_shop.customers")
                customer = rng.randint(1, cur.fetchone()[0])
                cur.execute("BEGIN")
                cur.execute(
                    "INSERT INTO demo_shop.orders (customer_id, amount, tags) VALUES (%s, %s, %s)",
                    (customer, f"{rng.uniform(5, 500):.2f}", rng.choice(["", "gift", "express"])),
                )
                cur.execute("INSERT INTO demo_shop.audit_log (note) VALUES ('order placed')")
                cur.execute("COMMIT")
            elif roll < 0.9:
                cur.execute(
                    "UPDATE demo_shop.orders SET status = %s WHERE status = %s ORDER BY id LIMIT 1",
                    rng.choice([("paid", "new"), ("shipped", "paid")]),
                )
            else:
                cur.execute("DELETE FROM demo_shop.orders WHERE status = 'new' ORDER BY id LIMIT 1")


def describe(value: dict) -> str:
    op = {"c": "insert", "u": "update", "d": "delete", "r": "read"}[value["op"]]
    row = value["after"] if value["after"] is not None else value["before"]
    where = f"{value['source']['db']}.{value['source']['table']}"
    detail = (
        ", ".join(f"{c}: {value['before'][c]!r} -> {value['after'][c]!r}" for c in value["changed"])
        if value["op"] == "u"
        else orjson.dumps(row).decode()
    )
    return f"scn={value['scn']:<14} {op:6} {where:15} key={value['key']}  {detail}"


async def show_events(seconds: float, started: float) -> int:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers="127.0.0.1:9092",
        group_id=f"aesop-demo-viewer-{os.getpid()}",
        auto_offset_reset="latest",
    )
    await consumer.start()
    seen = 0
    try:
        while time.monotonic() - started < seconds:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    seen += 1
                    print(describe(orjson.loads(record.value)), flush=True)
    finally:
        await consumer.stop()
    return seen


def wait_for_relay(worker: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            sys.exit(f"demo: the worker exited; see {LOG}")
        if "relay shop: reading" in LOG.read_text(errors="replace"):
            return
        time.sleep(0.3)
    sys.exit(f"demo: the relay did not start within {timeout:.0f}s; see {LOG}")


async def _delete_topics(prefixes: tuple[str, ...]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
    await admin.start()
    try:
        found = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if found:
            await admin.delete_topics(found)
        for _ in range(100):
            if not set(found) & set(await admin.list_topics()):
                return
            await asyncio.sleep(0.3)
    finally:
        await admin.close()


def reset_state() -> None:
    """Start from scratch, as the sample database is: the demo's topics (their committed
    offsets go with them), its checkpoint in ZooKeeper and its local table data."""
    from kazoo.client import KazooClient
    from kazoo.exceptions import NoNodeError

    asyncio.run(_delete_topics((TOPIC, "aesop-demo-", "shop-replica")))
    zk = KazooClient(hosts="127.0.0.1:2181")
    zk.start(timeout=15)
    try:
        zk.delete("/aesop-demo", recursive=True)
    except NoNodeError:
        pass
    finally:
        zk.stop()
        zk.close()
    shutil.rmtree(ROOT / ".stack" / "aesop-demo-data", ignore_errors=True)


def checksums(database: str) -> dict[str, int]:
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CHECKSUM TABLE {database}.customers, {database}.orders")
        return {name.split(".")[1]: value for name, value in cur.fetchall()}


def compare_replica(timeout: float = 30) -> str:
    """Wait for the consumer shop-replica to make demo_replica equal to demo_shop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if checksums("demo_shop") == checksums("demo_replica"):
            return "the consumer shop-replica made demo_replica equal to demo_shop"
        time.sleep(0.5)
    return f"demo_replica still differs from demo_shop after {timeout:.0f}s; see {LOG}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60, help="how long to run (default 60)")
    parser.add_argument("--rate", type=float, default=10, help="changes per second (default 10)")
    args = parser.parse_args()

    reset_state()
    create_schema()
    LOG.parent.mkdir(exist_ok=True)
    env = {**os.environ, "AESOP_CONFIG": str(CONFIG)}
    with LOG.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=ROOT / ".stack",
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    stop = threading.Event()
    try:
        print(f"demo: worker pid {worker.pid}, log {LOG}")
        wait_for_relay(worker)
        print(
            f"demo: relay reading; checkpoint in ZooKeeper at /aesop-demo/relays/shop; "
            f"events on Kafka topic {TOPIC}:"
        )
        load = threading.Thread(target=generate_load, args=(stop, args.rate), daemon=True)
        started = time.monotonic()
        load.start()
        seen = asyncio.run(show_events(args.seconds, started))
        stop.set()
        load.join()
        print(f"demo: {seen} change events in {args.seconds:.0f}s; {compare_replica()}")
        print("demo: stopping the worker")
    except KeyboardInterrupt:
        print("demo: interrupted; stopping the worker")
    finally:
        stop.set()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
