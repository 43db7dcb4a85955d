"""aesop's command line and the worker's HTTP endpoints, as a user reaches them."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.support.stack import ROOT


def aesop_lag(config: Path, *args: str, env: dict[str, str] | None = None) -> Any:

    return subprocess.run(
        [sys.executable, "-m", "app.cli", "--config", str(config), "lag", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def lag_json(config: Path, *args: str) -> tuple[dict[str, Any], Any]:
    done = aesop_lag(config, "--json", *args)
    assert "Traceback" not in done.stderr, done.stderr
    return orjson.loads(done.stdout), done


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.status, orjson.loads(answer.read())
    except urllib.error.HTTPError as answer:
        return answer.code, orjson.loads(answer.read())


def relay_state(config: Path, source: str) -> str | None:
    """The state of ``source``'s relay as its worker's ``/health`` shows it; None while the
    worker does not answer or runs no such relay."""
    from app.settings import load as load_settings

    try:
        _, body = get(load_settings(config, env={}).web_port, "/health")
    except (urllib.error.URLError, ConnectionError):
        return None
    status = body.get("relays", {}).get(source)
    return None if status is None else str(status["state"])


def aesop_snapshot(config: Path, *args: str, timeout: float = 300) -> Any:
    """``aesop snapshot ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "--config", str(config), "snapshot", *args],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
