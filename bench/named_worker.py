"""``python -m bench.named_worker``: ``faust -A app worker -l info`` whose threads carry their
Python names in /proc (``/proc/<pid>/task/<tid>/comm``, 15 bytes), so that a benchmark can
tell which thread of the worker spends its CPU (``binlog-<source>``, ``mysql-<consumer>``...).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading

PR_SET_NAME = 15


def name_threads() -> None:
    """From now on, each thread started names its OS thread after its Python name."""
    libc = ctypes.CDLL(None, use_errno=True)
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def named(self: threading.Thread) -> None:
        with contextlib.suppress(Exception):  # only a label: never in the way of the thread
            libc.prctl(PR_SET_NAME, self.name.encode()[:15], 0, 0, 0)
        bootstrap(self)

    threading.Thread._bootstrap_inner = named  # type: ignore[attr-defined]


def main() -> None:
    name_threads()
    from faust.cli.faust import cli

    sys.argv = ["faust", "-A", "app", "worker", "-l", "info"]
    cli(prog_name="faust")


if __name__ == "__main__":
    main()
