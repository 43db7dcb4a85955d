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
