"""Every cross-reference in the package's docstrings and comments (``:mod:`x```, ``:func:`x```,
``:class:`x```, ``:meth:`x```, ``:data:`x```, ``:attr:`x```) names something that exists:
nothing renders them, so nothing else would notice one left behind by a move or a rename."""

from __future__ import annotations

import ast
import re

import pytest
from helpers.paths import ROOT

pytestmark = pytest.mark.unit

PACKAGE = ROOT / "mutitask_celery"
ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|exc):`~?\.?([A-Za-z_][\w.]*)(?:\(\))?`")


def _names() -> set[str]:
    """Every module, and every function, class, method and module or class variable in them,
    by its dotted name (``mutitask_celery.books.ledger.Ledger.finish``)."""
    names = {"mutitask_celery"}
    for path in PACKAGE.rglob("*.py"):
        parts = ["mutitask_celery", *path.relative_to(PACKAGE).with_suffix("").parts]
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names.add(module)
        for node in ast.parse(path.read_text()).body:
            names |= {f"{module}.{name}" for name in _defined(node)}
            if isinstance(node, ast.ClassDef):
                for inner in node.body:
                    names |= {f"{module}.{node.name}.{name}" for name in _defined(inner)}
    return names


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.ImportFrom):
        return [alias.asname or alias.name for alias in node.names]
    return []


NAMES = _names()
SUFFIXES = {name.split(".", i)[-1] for name in NAMES for i in range(name.count(".") + 1)}


def test_every_cross_reference_names_something_that_exists() -> None:
    broken = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {target}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for target in ROLE.findall(line)
        if target not in SUFFIXES and not target.startswith(("celery.", "kombu.", "redis.", "numpy."))
    ]
    assert broken == []


def test_a_reference_to_nothing_is_found() -> None:
    assert "books.ledger.Ledger.finish" in SUFFIXES and "Ledger.finish" in SUFFIXES
    assert "hooks" not in SUFFIXES and "keys.STEPS" not in SUFFIXES
