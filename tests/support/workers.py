"""``faust -A app worker`` processes of one test, and where they keep their data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from kazoo.client import KazooClient

from tests.support.kafka import delete_topics
from tests.support.stack import ROOT, ZOOKEEPER


class Worker:
    """One `faust -A app worker` process, started with a config file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        full_env = {
            **os.environ,
            "AESOP_CONFIG": str(config),
            # Faust's data directories (the worker's and each consumer app's) go under the
            # test's temporary directory, never into the checkout.
            "APP_DATADIR": str(data_dir(log_path.parent, "{conf.name}")),
            **(env or {}),
        }
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[after:]:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {text!r}")
            time.sleep(0.2)
        raise AssertionError(f"worker did not log {text!r} within {timeout}s")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("worker did not stop within timeout after SIGTERM") from None
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


class WorkerFactory:
    """Starts workers for one test and cleans them up."""

    def __init__(self, tmp: Path, test_name: str) -> None:
        self.tmp = tmp
        self.test_name = test_name
        self.started: list[Worker] = []

    def start(self, config: Path, env: dict[str, str] | None = None) -> Worker:
        log_path = self.tmp / f"worker-{len(self.started)}.log"
        worker = Worker(config, log_path, env)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            if worker.proc.poll() is None:
                worker.kill()

    def log_tails(self) -> list[tuple[str, str]]:
        return [
            (f"worker log {w.log_path}", "\n".join(w.log().splitlines()[-80:]))
            for w in self.started
            if w.log_path.exists()
        ]


def data_dir(tmp: Path, app_id: str) -> Path:
    """Where the workers of a test keep an app's Faust data directory."""
    return tmp / f"{app_id}-data"


def lose_relay_position(app_id: str, source: str, checkpoint: dict[str, Any], tmp: Path) -> None:
    """As after a relay crash: ZooKeeper holds the old ``checkpoint`` and the relay's table
    (its changelog, the worker's data directory under ``tmp``) is lost, so the relay's next
    start publishes everything after that checkpoint a second time."""
    client = KazooClient(hosts=ZOOKEEPER, timeout=10)
    client.start(timeout=15)
    try:
        client.set(f"/aesop-test/{app_id}/relays/{source}", orjson.dumps(checkpoint))
    finally:
        client.stop()
        client.close()
    delete_topics(f"{app_id}-source_to_checkpoint-changelog")
    shutil.rmtree(data_dir(tmp, app_id), ignore_errors=True)
