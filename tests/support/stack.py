"""The local stack: where it listens, and stopping or starting one service by its script."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


# The cluster test (bench/cluster.py) points the soak's checks at its brokers.
KAFKA = os.environ.get("AESOP_TEST_KAFKA", "127.0.0.1:9092")


ZOOKEEPER = "127.0.0.1:2181"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Stack:
    """The local stack, for fault tests: stop and start single services by their scripts."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def run(self, action: str, service: str) -> None:
        done = subprocess.run(
            ["bash", str(self.root / "docker" / "stack.sh"), action, service],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"docker/stack.sh {action} {service} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            )

    def log_tails(self) -> list[tuple[str, str]]:
        sections = []
        for name in ("mariadb/mariadb.log", "kafka/server.log", "zookeeper/zookeeper.log"):
            path = self.root / ".stack" / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-30:]
                sections.append((f"stack log {path}", "\n".join(lines)))
        return sections
