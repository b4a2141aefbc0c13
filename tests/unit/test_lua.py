"""The Lua steps as files: each header names every KEYS and ARGV entry its body uses, no step
builds a key name inside itself (every key is passed in KEYS, as Redis Cluster and proxies
require), every include resolves, and every step the package loads exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.paths import ROOT

from mutitask_celery.books import scripts, steps

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


def test_every_step_the_package_loads_is_declared_and_exists_and_its_includes_resolve() -> None:
    package = ROOT / "mutitask_celery"
    loaders = [
        str(source.relative_to(package))
        for source in package.rglob("*.py")
        if "scripts.load(" in source.read_text(encoding="utf-8") and source.name not in ("scripts.py", "steps.py")
    ]
    assert loaders == [], "load steps through books/steps.py, where their KEYS and ARGV are declared"
    missing = sorted(step.name for step in steps.ALL if not (LUA / f"{step.name}.lua").exists())
    assert not missing, f"declared but not in lua/: {missing}"
    for step in steps.ALL:
        text = scripts.source(step.name)
        assert "--! include" not in text, f"{step.name}: an include was not pasted in"
    shared = {
        "cancelled",
        "claims",
        "clock",
        "dead_letter",
        "dead_index",
        "dead_match",
        "note",
        "wake",
        "lease_check",
    }  # pasted, never called
    assert {p.stem for p in FILES} - shared == {step.name for step in steps.ALL}


def declared_locals(body: str, kind: str) -> list[str]:
    """The names a script gives its ``kind`` entries at its top (``local a, b = KEYS[1], KEYS[2]``), in order."""
    names: dict[int, str] = {}
    for line in body.splitlines():
        match = re.fullmatch(rf"local ([\w, ]+) = ((?:{kind}\[\d+\](?:, )?)+)", line)
        if match:
            for name, index in zip(match[1].split(", "), re.findall(rf"{kind}\[(\d+)\]", match[2]), strict=True):
                names[int(index)] = name
    assert sorted(names) == list(range(1, len(names) + 1)), f"{kind} named out of order: {names}"
    return [names[i] for i in sorted(names)]


@pytest.mark.parametrize("step", steps.ALL, ids=[s.name for s in steps.ALL])
def test_python_and_the_script_name_the_same_keys_and_arguments_in_the_same_order(step: steps.Step) -> None:
    """steps.py puts each keyword in a position; the script reads each position under a name:
    the two lists must be one, and a tail of any length must start where the header says."""
    header, body = split_header((LUA / f"{step.name}.lua").read_text(encoding="utf-8"))
    assert declared_locals(body, "KEYS") == list(step.keys)
    assert declared_locals(body, "ARGV") == list(step.args)
    for kind, fixed, tail in (("KEYS", step.keys, step.more_keys), ("ARGV", step.args, step.more_args)):
        if tail:
            assert named(header, kind, len(fixed) + 1), f"{step.name}: its header must say where {kind}'s {tail} begin"
        else:
            assert not named(header, kind, len(fixed) + 1), f"{step.name}: its header names {kind} steps.py does not"


def test_a_step_called_with_a_name_missing_or_unknown_says_which() -> None:
    with pytest.raises(TypeError, match=r"missing \['channel'\].*unknown \['chanel'\]"):
        steps.TAKE_TOKENS.keys_and_args({"rate_limits": "a", "rate_tat": "b", "tasks": 1, "chanel": 2})
    assert steps.TAKE_TOKENS.keys_and_args({"rate_limits": "a", "rate_tat": "b", "tasks": 1, "channel": 2}) == (
        ["a", "b"],
        [1, 2],
    )


def test_a_broken_include_names_the_file_it_wanted() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_step"):
        scripts.source("no_such_step")
