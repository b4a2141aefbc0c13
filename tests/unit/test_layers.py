"""The package's layers: every module imports only from the layers below it (or beside it),
and no modules import each other in a circle. Imports inside functions count, and so do
imports made only for type checking.

Low to high: the top-level base modules, ``books/``, ``control`` and ``runtime``, then
``device/`` and ``serving/`` (the two sides of a run, which do not import each other), then
``legacy/``, ``web/`` and ``api``, then ``tools/`` and the entry points.

The device side is loaded by workers only (Celery's ``include``): importing the package wires
no worker signal and no remote-control command.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import ROOT

pytestmark = pytest.mark.unit

PACKAGE = ROOT / "mutitask_celery"
BASE = {
    "settings", "keys", "codec", "errors", "logs", "connection", "celery_app", "kombu_guard",
    "flower", "tables", "channels", "memory", "sentinel", "replication", "tracing",
}  # fmt: skip
LAYERS = {"books": 1, "control": 2, "runtime": 2, "device": 3, "serving": 3}
LAYERS |= {"legacy": 4, "web": 4, "api": 4, "client": 4, "server": 4, "tools": 5, "__main__": 5}
SIBLINGS = ("device", "serving")  # one layer, but neither may import the other


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)  # "" is the package itself


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The package's modules ``name`` imports, anywhere in it."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {_local(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(["mutitask_celery", *parts[: len(parts) - node.level + 1]])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            for alias in node.names:  # `from x import y`: the module y, else the module x
                whole = _local(f"{module}.{alias.name}")
                found.add(whole if whole in MODULES else _local(module))
    return {module for module in found if module is not None and module != name}


def _local(target: str) -> str | None:
    """A module of the package by its name there ("" for the package), None for another's."""
    if target != "mutitask_celery" and not target.startswith("mutitask_celery."):
        return None
    local = target.removeprefix("mutitask_celery").removeprefix(".")
    return local if local in MODULES else None


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    if name == "":
        return 5  # the package's __init__: the public surface, the top
    head = name.split(".")[0]
    if head in BASE:
        return 0
    return LAYERS[head]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        _layer(name)  # a KeyError names a module the layers above do not place


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert upward == []


def test_the_two_sides_of_a_run_do_not_import_each_other() -> None:
    across = [
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if {name.split(".")[0], target.split(".")[0]} == set(SIBLINGS)
    ]
    assert across == []


def _circles() -> list[set[str]]:
    """The groups of modules that import each other in a circle (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[set[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in GRAPH[name]:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == name:
                    break
            if len(group) > 1:
                circles.append(group)

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return circles


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert _circles() == []


def test_the_checker_sees_imports_inside_functions_and_for_type_checking() -> None:
    assert "books.leases" in GRAPH["books.ledger"]  # under TYPE_CHECKING
    assert "serving.console" in GRAPH["serving.serve"]


# What keys.py offers every module: the layout object, and the names that are the same in
# every layout. Its module-level key names are the default layout's (no prefix, one server),
# kept for tests and tools: package code that used them would miss a prefix or a cluster.
LAYOUT_FREE = {"Keys", "DEFAULT", "queue", "QUEUE_PREFIX", "RESULTS_PREFIX", "CLUSTER_TAG", "ALL_DEVICES"}


def test_the_package_names_keys_through_its_keys_object() -> None:
    used = []
    for name, path in MODULES.items():
        if name == "keys":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = any(
            isinstance(node, ast.ImportFrom)
            and node.module == "mutitask_celery"
            and any(a.name == "keys" for a in node.names)
            for node in ast.walk(tree)
        )
        for node in ast.walk(tree):
            if (
                imported
                and isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "keys"
                and node.attr not in LAYOUT_FREE
            ):
                used.append(f"{path.relative_to(PACKAGE)}:{node.lineno} keys.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "mutitask_celery.keys":
                used += [
                    f"{path.relative_to(PACKAGE)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name not in LAYOUT_FREE
                ]
    assert used == []


# Run in a fresh interpreter: the test process has imported the device's modules long before.
WIRED_BY_IMPORT = """
import json, weakref
import celery.signals
from celery.worker.control import Panel
import mutitask_celery

def ours(fn):
    return str(getattr(fn, "__module__", "")).startswith("mutitask_celery")

found = []
for name in celery.signals.__all__:
    for _, receiver in getattr(getattr(celery.signals, name), "receivers", []):
        fn = receiver() if isinstance(receiver, weakref.ReferenceType) else receiver
        if fn is not None and ours(fn):
            found.append(f"signal {name}: {fn.__qualname__}")
found += [f"control command {name}" for name, fn in Panel.data.items() if ours(fn)]
print(json.dumps(found))
"""


def test_importing_the_package_wires_no_worker_signal_and_no_control_command() -> None:
    """A script reading ``failed()``, the CLI and the web page import the package: none of them
    is a device. Only a worker loads the task module (the app's ``include``) and its device."""
    out = subprocess.run([sys.executable, "-c", WIRED_BY_IMPORT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
