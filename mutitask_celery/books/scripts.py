"""The Lua steps, one file each under ``lua/``, loaded once per client.

Each file's header lists its ``KEYS``, its ``ARGV`` and what it returns. Every key a
script touches is passed in ``KEYS``, never built from a prefix inside it. A line
``--! include NAME`` at the top pastes ``lua/NAME.lua`` (shared functions, such as the
writing of a dead-letter record) in front of the script. A line ``--! record`` declares the
dead-letter record's version and its fields' names as :mod:`.records` lists them
(``RECORD_VERSION``, ``RECORD_FIELDS``), so the writer stores what the record declares.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

from mutitask_celery.books import records

_INCLUDE = re.compile(r"^--! include (\w+)$", re.MULTILINE)
_RECORD = re.compile(r"^--! record$", re.MULTILINE)


@cache
def source(name: str) -> str:
    """The full text of ``lua/<name>.lua``, its includes pasted in."""
    text = resources.files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")
    text = _RECORD.sub(lambda _: records.lua_constants(), text)
    included = [source(match) for match in _INCLUDE.findall(text)]
    return "\n".join([*included, _INCLUDE.sub("", text)])


def load(client: redis.Redis, name: str) -> Script:
    """``lua/<name>.lua`` registered on ``client`` (sent once, then called by its SHA)."""
    return client.register_script(source(name))
