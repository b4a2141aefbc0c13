"""The Lua steps as files: each header names every KEYS and ARGV entry its body uses, no step
builds a key name inside itself (every key is passed in KEYS, as Redis Cluster and proxies
require), every include resolves, and every step the package loads exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT

from mutitask_celery.books import scripts

LUA = ROOT / "mutitask_celery" / "books" / "lua"
FILES = sorted(LUA.glob("*.lua"))


def split_header(text: str) -> tuple[str, str]:
    """(the leading comment block, the rest), include lines left out."""
    lines = [line for line in text.splitlines() if not line.startswith("--! include")]
    header = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line)
    return "\n".join(header), "\n".join(lines[len(header) :])


def named(header: str, kind: str, n: int) -> bool:
    """``kind[n]`` is in the header, alone or in a range such as ``KEYS[16..15+n]``."""
    if re.search(rf"{kind}\[{n}\]", header):
        return True
    return any(int(first) <= n for first in re.findall(rf"{kind}\[(\d+)\.\.[^\]]*\]", header))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_the_header_names_every_key_and_argument_the_step_uses(path: Path) -> None:
    header, body = split_header(path.read_text(encoding="utf-8"))
    assert header, f"{path.name} has no header"
    for kind in ("KEYS", "ARGV"):
        for n in sorted({int(x) for x in re.findall(rf"{kind}\[(\d+)\]", body)}):
            assert named(header, kind, n), f"{path.name}: {kind}[{n}] is used but its header does not name it"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_no_step_builds_a_key_name(path: Path) -> None:
    _, body = split_header(path.read_text(encoding="utf-8"))
    for call in re.finditer(r"redis\.call\('(\w+)',\s*([^,)]*)", body):
        assert ".." not in call.group(2), f"{path.name} builds a key inside the script: {call.group(0)}"


def test_every_step_the_package_loads_exists_and_its_includes_resolve() -> None:
    package = ROOT / "mutitask_celery"
    loaded = {
        name
        for source in package.rglob("*.py")
        for name in re.findall(r"scripts\.load\([^,]+,\s*\"(\w+)\"\)", source.read_text(encoding="utf-8"))
    }
    assert loaded, "found no scripts.load calls: the pattern above is out of date"
    missing = sorted(name for name in loaded if not (LUA / f"{name}.lua").exists())
    assert not missing, f"loaded but not in lua/: {missing}"
    for name in loaded:
        text = scripts.source(name)
        assert "--! include" not in text, f"{name}: an include was not pasted in"


def test_a_broken_include_names_the_file_it_wanted() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_step"):
        scripts.source("no_such_step")
