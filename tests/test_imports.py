"""The import graph of aesop's packages: one way, no cycles, and nothing wired on import."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "tables", "relay", "agents", "web", "metrics")

# Lower layers never import higher ones. Within a layer imports may go either way, as long
# as they make no cycle.
LAYERS: list[tuple[str, ...]] = [
    # 0: settings, errors, the change event's definition and the worker's plumbing.
    (
        "app.errors",
        "app.gtids",
        "app.change_event",
        "app.settings",
        "app.retry",
        "app.partitioner",
        "app.assignor",
        "app.kafka_start",
        "app.group_lease",
        "app.producer",
        "app.logfilter",
        "app.gc_tuning",
        "app.tasks",
    ),
    # 1: positions, their stores and the ZooKeeper layout.
    ("tables",),
    # 2: the relay and the consumers.
    ("relay", "agents"),
    # 3: what reads them: the lag report, its email, the HTTP views and the metrics.
    ("app.lag", "app.mail", "web", "metrics"),
    # 4: the composition root, the worker entry and the command line.
    ("app.factory", "app.main", "app.cli", "app"),
]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best_len:
                best, best_len = index, len(member)
    assert best >= 0, f"{module} is in no layer of tests/test_imports.py; add it"
    return best


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every aesop module ``path`` imports, at module level or inside functions, leaving out
    imports under ``if TYPE_CHECKING:`` (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            # The longest known module the name starts with (``from app import mail``).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    edges = {}
    for name, path in found.items():
        # A package's own __init__ is imported with each of its modules: not an edge.
        edges[name] = {m for m in imports_of(path, known) if m != name and m not in PACKAGES}
    return edges


def test_every_module_is_in_a_layer_and_imports_go_down() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return cycles


def test_no_module_takes_part_in_an_import_cycle() -> None:
    assert find_cycles(graph()) == []


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from app.settings import Settings\n"
        "if TYPE_CHECKING:\n    from web.health import Monitor\n"
        "def f():\n    from app import mail\n"
    )
    assert imports_of(source, set(modules())) - {"app"} == {"app.settings", "app.mail"}
    assert layer_of("app.settings") < layer_of("tables.checkpoints") < layer_of("web.health")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_each_module_imports_alone_and_builds_no_app() -> None:
    """In a fresh interpreter per module: importing it raises nothing and makes no faust.App
    (``app`` is the package whose ``app`` attribute builds one on first use)."""
    probe = (
        "import importlib, sys\n"
        "import faust\n"
        "made = []\n"
        "init = faust.App.__init__\n"
        "faust.App.__init__ = lambda self, *a, **k: (made.append(1), init(self, *a, **k))[1]\n"
        "importlib.import_module(sys.argv[1])\n"
        "assert not made, f'{sys.argv[1]} built a faust.App on import'\n"
    )
    env = {**_env(), "AESOP_CONFIG": str(ROOT / "no-such-config.toml")}

    def imported(name: str) -> tuple[str, int, bytes]:
        done = subprocess.run(
            [sys.executable, "-c", probe, name],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
        )  # fmt: skip
        return name, done.returncode, done.stdout

    # A few interpreters at a time: all of them at once would load a shared machine for
    # minutes (and time out there).
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(imported, modules()))
    failed = {
        name: output.decode(errors="replace").strip().splitlines()[-1:]
        for name, code, output in results
        if code != 0
    }
    assert failed == {}


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_the_test_helpers_find_the_checkout() -> None:
    """Workers start in ROOT and faults run ROOT/docker/stack.sh: a wrong ROOT makes every
    worker test fail to import its handlers and every soak fault fail."""
    from tests.support.stack import ROOT

    assert (ROOT / "pyproject.toml").is_file() and (ROOT / "docker" / "stack.sh").is_file(), ROOT


# Raised to unwind, not to report: an ``except AesopError`` in a retry loop must not catch
# them (a stop or a revocation would be retried instead of obeyed).
SIGNALS = {"agents.consumer.Abandoned", "relay.handoff.Stopped"}


def test_every_exception_aesop_defines_is_an_aesop_error_but_the_two_signals() -> None:
    import importlib

    from app.errors import AesopError

    found: dict[str, bool] = {}
    for name in modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{name}.{value.__name__}"] = issubclass(value, AesopError)
    assert set(found) > SIGNALS, sorted(found)
    assert {name for name, ours in found.items() if not ours} == SIGNALS
