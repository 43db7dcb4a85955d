"""The cluster test: the real playbooks on hosts made of network namespaces, then faults.

    make cluster-test     (deploy/test/run.sh: hosts up, this script in the control namespace,
                           every host, bridge and route removed afterwards)

3 ZooKeeper hosts, 3 Kafka 3.9 brokers, 2 worker hosts, a MariaDB host and a monitoring host,
deployed with deploy/ansible/site.yml; a second run must change nothing. Then the soak's
seeded load (bench/soak_load.py) with a ``mysql`` consumer into a replica database, and one
at a time: a broker host's link goes down; the worker host running the relay goes down (every
process killed, as at a power cut); a ZooKeeper host goes down; a third worker host is added
to the inventory and joins; a rolling restart of the workers. After each fault the time until
a transaction committed after it reaches the replica is recorded. At the end the soak's checks
(bench/soak_check.py): every committed change in Kafka, duplicates only after a crash with the
same (scn, row), per-key order, the replica equal to the source. Exit 0 when all holds, 1 when
something does not, 2 when the test could not run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.soak_check import Verdict, check_kafka, differences, read_tables
from bench.soak_faults import FaultRecord, PlannedFault
from bench.soak_kafka import TopicTail, quiet_aiokafka
from bench.soak_load import Load, create_databases, drop_databases
from tests.support.mysql import master_position, sql

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOKS = ROOT / "deploy" / "ansible"
HOSTS_SH = ROOT / "deploy" / "test" / "hosts.sh"
DATABASE, REPLICA, TOPIC = "shop", "shop_replica", "aesop.shop"
FLOWING_TIMEOUT_S = 180.0
CONVERGE_TIMEOUT_S = 240.0


class ClusterError(Exception):
    """The test cannot go on (one line, no traceback)."""


def say(message: str) -> None:
    print(f"cluster: {message}", flush=True)


@dataclass
class Cluster:
    state: Path
    addresses: dict[str, str]  # host name -> address
    groups: dict[str, list[str]]  # inventory group -> host names

    def inventory(self) -> Path:
        ids = {"zookeeper": "zookeeper_id", "kafka": "broker_id"}
        key = self.state / "ssh" / "id_ed25519"
        lines = [
            "[all:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={key}",
            "ansible_ssh_common_args=-o UserKnownHostsFile=/dev/null"
            " -o StrictHostKeyChecking=no -o LogLevel=error",
        ]
        for group in ("zookeeper", "kafka", "aesop", "mysql", "monitoring"):
            lines.append(f"[{group}]")
            for i, name in enumerate(self.groups.get(group, []), start=1):
                extra = f" {ids[group]}={i}" if group in ids else ""
                lines.append(f"{self.addresses[name]}{extra}")
        path = self.state / "inventory.ini"
        path.write_text("\n".join(lines) + "\n")
        return path

    def variables(self) -> Path:
        """The workers' config: one source on the MariaDB host, a mysql consumer into the
        replica database, the hourly lag email (its cron file under the test's folder)."""
        db = self.addresses[self.groups["mysql"][0]]
        url = f"mysql://aesop:aesop-test@{db}:3306"
        # Extra variables (-e): above group_vars/all.yml, unlike the inventory's [all:vars].
        text = f"""
maven_offline: true
aesop_cron_file: {self.state}/lag-email.cron
aesop_id: cluster
aesop_partitions: 4
aesop_session_timeout: 20
aesop_replication_factor: 3
aesop_min_insync_replicas: 2
aesop_sources:
  - {{name: shop, mysql: "{url}", server_id: 4242, include: ["{DATABASE}.*"], topic: {TOPIC}}}
aesop_consumers:
  - {{name: replica, topics: [{TOPIC}], handler: mysql, mysql: "{url}/{REPLICA}"}}
mysql_databases: [{DATABASE}, {REPLICA}]
aesop_smtp: {{host: 127.0.0.1, from: "aesop@localhost", to: ["dba@localhost"], schedule: ""}}
"""
        path = self.state / "vars.yml"
        path.write_text(text)
        return path

    def playbook(self, name: str, *args: str) -> tuple[float, dict[str, int]]:
        """Run a playbook; seconds taken and changed= per host from its recap."""
        t0 = time.monotonic()
        log = self.state / f"ansible-{name}-{int(time.time())}.log"
        with log.open("w") as out:
            rc = subprocess.run(
                [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(self.inventory()),
                 "-e", f"@{self.variables()}", name, *args],
                cwd=PLAYBOOKS, stdout=out, stderr=subprocess.STDOUT, check=False,
                env={**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOKS / "ansible.cfg")},
            ).returncode  # fmt: skip
        text = log.read_text()
        changed = {m[0]: int(m[1]) for m in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", text,
                                                       re.M)}  # fmt: skip
        if rc != 0:
            failed = [line for line in text.splitlines() if "FAILED" in line or "fatal:" in line]
            raise ClusterError(f"{name} failed ({failed[:2]}); see {log}")
        return time.monotonic() - t0, changed

    def hosts(self, *args: str) -> None:
        """hosts.sh, in the network namespace run.sh runs in (it owns the bridge and route)."""
        netns = os.environ.get("AESOP_TEST_ROOT_NETNS", "/proc/1/ns/net")
        subprocess.run(
            ["nsenter", f"--net={netns}", "bash", str(HOSTS_SH), args[0], str(self.state),
             *args[1:]],
            check=True,
        )  # fmt: skip

    def ssh(self, name: str, command: str) -> str:
        key = self.state / "ssh" / "id_ed25519"
        return subprocess.run(
            ["ssh", "-i", str(key), "-o", "UserKnownHostsFile=/dev/null", "-o",
             "StrictHostKeyChecking=no", "-o", "LogLevel=error", "-o", "ConnectTimeout=5",
             f"root@{self.addresses[name]}", command],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout  # fmt: skip

    def relay_host(self) -> str | None:
        """The worker host whose relay reads the source, from its own /metrics."""
        for name in self.groups["aesop"]:
            try:
                text = self.ssh(
                    name,
                    'python3 -c "import urllib.request as u; print(u.urlopen('
                    "'http://127.0.0.1:6066/metrics', timeout=5).read().decode())\"",
                )
            except (subprocess.SubprocessError, OSError):
                continue
            if re.search(r'aesop_relay_state\{[^}]*state="reading"[^}]*\} 1', text):
                return name
        return None


def last_replicated_txn() -> int:
    rows = sql("SELECT COALESCE(MAX(txn), 0) FROM ledger", database=REPLICA)
    return int(rows[0][0])


def wait_flowing(load: Load, since: float) -> float:
    """Seconds from ``since`` until a transaction committed after it is in the replica."""
    deadline = time.monotonic() + FLOWING_TIMEOUT_S
    while time.monotonic() < deadline:
        after = [c.txn for c in load.committed if c.commit_at > since]
        if after and last_replicated_txn() >= after[0]:
            return time.time() - since
        if load.failure is not None:
            raise ClusterError(f"the load failed: {load.failure!r}")
        time.sleep(0.5)
    raise ClusterError(f"nothing flowed for {FLOWING_TIMEOUT_S:.0f}s after the fault")


def converge(load: Load, tail: TopicTail) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < CONVERGE_TIMEOUT_S:
        if not differences(read_tables(DATABASE), read_tables(REPLICA)) and tail.behind() == 0:
            return time.monotonic() - t0
        time.sleep(2)
    raise ClusterError(f"the replica did not catch up within {CONVERGE_TIMEOUT_S:.0f}s")


def run(cluster: Cluster, seed: int, rate: float, link_down_s: float) -> int:
    timings: list[tuple[str, str, float]] = []
    seconds, _ = cluster.playbook("site.yml")
    timings.append(("deploy", f"site.yml, {len(cluster.addresses)} hosts", seconds))
    say(f"deployed in {seconds:.0f}s")
    seconds, changed = cluster.playbook("site.yml")
    timings.append(("redeploy", f"changed={sum(changed.values())}", seconds))
    if any(changed.values()):
        raise ClusterError(f"a second run of site.yml changed something: {changed}")
    say(f"second run changed nothing ({seconds:.0f}s)")

    # The mysql role made both databases empty (aesop check needs the replica's); the load's
    # tables are made here, from a known binlog position.
    start = master_position()
    drop_databases(DATABASE, REPLICA)
    create_databases(DATABASE, REPLICA)
    tail = TopicTail(TOPIC)
    load = Load(DATABASE, seed, rate)
    load.start()
    tail.start(timeout=120)
    faults: list[FaultRecord] = []

    def fault(kind: str, what: str, act: object) -> None:
        wait_flowing(load, time.time())  # flowing before the fault
        record = FaultRecord(PlannedFault(kind, 0.0))
        record.started = time.time()
        crashed = act()  # type: ignore[operator]
        if crashed:
            record.crashed_at = record.started
        faults.append(record)
        took = wait_flowing(load, record.started)
        timings.append((kind, what, took))
        say(f"{kind}: {what}; flowing again after {took:.1f}s")

    broker = cluster.groups["kafka"][1]

    def broker_link() -> bool:
        cluster.hosts("link", broker, "down")
        time.sleep(link_down_s)
        cluster.hosts("link", broker, "up")
        return False

    fault("broker_link", f"{broker} link down {link_down_s:.0f}s", broker_link)

    relay = cluster.relay_host()
    if relay is None:
        raise ClusterError("no worker host reports a reading relay")

    def relay_down() -> bool:
        cluster.hosts("kill", relay)
        return True

    fault("relay_host", f"{relay} (running the relay) powered off", relay_down)
    cluster.hosts("boot", relay)
    cluster.ssh(relay, "/srv/aesop/bin/aesop-svc start node-exporter;"
                       " /srv/aesop/bin/aesop-svc start aesop")  # fmt: skip

    zk = cluster.groups["zookeeper"][0]

    def zk_down() -> bool:
        cluster.hosts("kill", zk)
        return False

    fault("zookeeper_host", f"{zk} powered off", zk_down)
    cluster.hosts("boot", zk)
    cluster.ssh(zk, "/srv/aesop/bin/aesop-svc start node-exporter;"
                    " /srv/aesop/bin/aesop-svc start zookeeper")  # fmt: skip

    def add_worker() -> bool:
        cluster.hosts("add", "w3")
        cluster.addresses["w3"] = host_addresses(cluster.state)["w3"]
        cluster.groups["aesop"].append("w3")
        cluster.playbook("site.yml", "--limit", f"{cluster.addresses['w3']},monitoring,localhost")
        return False

    fault("add_worker", "w3 added to [aesop], site.yml run", add_worker)

    def rolling() -> bool:
        cluster.playbook("rolling-restart.yml", "-e", "rolling_pause_seconds=5")
        return False

    fault("rolling_restart", "rolling-restart.yml, serial 1", rolling)

    load.stop()
    converged = converge(load, tail)
    tail.stop()
    verdict = Verdict()
    source = read_tables(DATABASE)
    replica = read_tables(REPLICA)
    check_kafka(tail.records, DATABASE, start, source, faults, verdict)
    verdict.replica_equal = not differences(source, replica)
    if not verdict.replica_equal:
        verdict.fail(f"the replica differs from the source: {differences(source, replica)}")
    print()
    print(f"{'step':<16} {'what':<44} {'seconds':>8}")
    for kind, what, took in timings:
        print(f"{kind:<16} {what:<44} {took:>8.1f}")
    print(f"{'converged':<16} {'load stopped -> replica equal':<44} {converged:>8.1f}")
    print()
    for failure in verdict.failures:
        say(f"FAIL: {failure}")
    ok = not verdict.failures
    say(
        f"txns={verdict.committed_txns} changes={verdict.expected_events}"
        f" kafka={verdict.kafka_messages} missing={verdict.missing_events}"
        f" duplicates={verdict.duplicates} (without crash {verdict.duplicates_without_crash})"
        f" order_violations={verdict.order_violations}"
        f" replica={'equal' if verdict.replica_equal else 'DIFFERS'} -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


def host_addresses(state: Path) -> dict[str, str]:
    return dict(line.split() for line in (state / "hosts").read_text().splitlines())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="the hosts' state folder (hosts.sh)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--link-down", type=float, default=15.0, help="seconds")
    args = parser.parse_args(argv)
    quiet_aiokafka()
    state = Path(args.state).resolve()
    addresses = host_addresses(state)
    groups = {
        "zookeeper": ["z1", "z2", "z3"],
        "kafka": ["k1", "k2", "k3"],
        "aesop": ["w1", "w2"],
        "mysql": ["db"],
        "monitoring": ["mon"],
    }
    try:
        return run(Cluster(state, addresses, groups), args.seed, args.rate, args.link_down)
    except (ClusterError, subprocess.CalledProcessError) as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
