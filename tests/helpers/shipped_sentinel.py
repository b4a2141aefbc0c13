"""Redis Sentinel started from the deployment's own files, ``deploy/redis/sentinel/*``.

As :mod:`helpers.shipped_redis` does for a single Redis: each file is copied as the guide
installs it, and only what must differ with six processes on one test machine changes: the
addresses (127.0.0.1), the ports (free ones), the paths (``dir``, the ACL file, the log and
pid files) and the placeholder passwords. Every other line is the shipped one, so the users,
timeouts and persistence the test runs are the ones shipped. A directive the test expects
to adapt and does not find fails loudly: the files and the test move together.

The group itself is a :class:`LocalSentinelGroup` (faults, waits, stopping by process id)
whose configs are these files; its own connections log in as ``admin`` (``ROLE`` is
``@dangerous``, which the ``mutitask`` user may not run).
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers.paths import ROOT
from mutitask_celery.tools.localsentinel import HOST, Address, LocalSentinelGroup, Node

SHIPPED = ROOT / "deploy" / "redis" / "sentinel"
DATA_FILES = ("redis-master.conf", "redis-replica-1.conf", "redis-replica-2.conf")
SENTINEL_FILES = ("sentinel-1.conf", "sentinel-2.conf", "sentinel-3.conf")
PLACEHOLDERS = {  # placeholder -> whose password it is
    "CHANGE-ME-redis-password": "mutitask",
    "CHANGE-ME-admin-password": "admin",
    "CHANGE-ME-replica-password": "replica",
    "CHANGE-ME-sentinel-user-password": "sentinel",
    "CHANGE-ME-sentinel-password": "sentinels",  # the sentinels' own requirepass
}
MASTER_NAME = "mymaster"


def _set(text: str, directive: str, value: str, name: str) -> str:
    """``text`` with the one line of ``directive`` given ``value``; fails if there is none."""
    text, n = re.subn(rf"^{re.escape(directive)} .*$", f"{directive} {value}", text, count=1, flags=re.M)
    if n != 1:
        raise AssertionError(f"{name} has no '{directive}' line to adapt: update this helper")
    return text


class ShippedSentinelGroup(LocalSentinelGroup):
    """``deploy/redis/sentinel/*`` on free ports of 127.0.0.1, files under ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.passwords = {user: f"{user}-pw" for user in PLACEHOLDERS.values()}
        super().__init__(
            MASTER_NAME,
            username="admin",
            password=self.passwords["admin"],
            sentinel_password=self.passwords["sentinels"],
            workdir=workdir,
            server="system",
            die_with_parent=True,
        )
        self.acl = workdir / "users.acl"
        self.acl.write_text(self._secrets((SHIPPED / "users.acl").read_text()))
        self.acl.chmod(0o600)

    def _secrets(self, text: str) -> str:
        for placeholder, user in PLACEHOLDERS.items():
            text = text.replace(placeholder, self.passwords[user])
        return text

    def _paths(self, text: str, node: Node, name: str) -> str:
        for directive, value in {
            "bind": HOST,
            "port": str(node.port),
            "dir": str(node.workdir),
            "pidfile": str(node.workdir / f"{node.kind}.pid"),
            "logfile": str(node.log),
        }.items():
            text = _set(text, directive, value, name)
        return text

    def data_config(self, node: Node, replica_of: Address | None) -> str:
        name = DATA_FILES[self.data_nodes.index(node)]
        text = self._paths((SHIPPED / name).read_text(), node, name)
        text = _set(text, "aclfile", str(self.acl), name)
        if replica_of is not None:
            text = _set(text, "replicaof", f"{replica_of.host} {replica_of.port}", name)
        elif re.search(r"^replicaof ", text, re.M):
            raise AssertionError(f"{name}, the first master, names a master of its own")
        return self._secrets(text)

    def sentinel_config(self, node: Node, master: Address) -> str:
        name = SENTINEL_FILES[self.sentinel_nodes.index(node)]
        text = self._paths((SHIPPED / name).read_text(), node, name)
        monitor = rf"^(sentinel monitor {MASTER_NAME}) \S+ \d+ (\d+)$"
        text, n = re.subn(monitor, rf"\1 {master.host} {master.port} \2", text, flags=re.M)
        if n != 1:
            raise AssertionError(f"{name} has no 'sentinel monitor {MASTER_NAME}' line to adapt: update this helper")
        return self._secrets(text)
