"""Separate hosts on one Linux machine: network namespaces joined by a switch.

``Network(prefix, ["h1", "h2", "h3"])`` makes one namespace per host and a
fourth, ``<prefix>-sw``, holding a bridge (the switch). Each host has one
link, a veth pair ``eth0`` (in the host) <-> ``p-<host>`` (a switch port), and
the address ``10.213.0.<n>/24`` on its ``eth0``. The addresses exist only
inside these namespaces (the machine's own namespace gets no interface and no
address), so they never meet a real network and two runs at once do not
collide. :meth:`Network.cut` takes a host's switch port down (its cable
pulled: the host keeps its address, its packets go nowhere) and
:meth:`Network.restore` brings it back.

:meth:`Network.close` kills, by id, every process still inside one of these
namespaces (``ip netns pids``: only what we started can be in them) and
deletes every namespace made; it runs even after a half-made setup.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

SUBNET = "10.213.0"  # 10.213.0.0/24, inside the namespaces only


class NetnsUnavailable(RuntimeError):
    """This machine cannot make the namespaces (not Linux, not root, no ``ip``...): the reason."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        raise NetnsUnavailable(f"{what} failed: {(result.stderr or result.stdout).strip()}")


class Network:
    """Hosts as network namespaces on one switch (see the module docstring)."""

    def __init__(self, prefix: str, hosts: Sequence[str]) -> None:
        self.prefix = prefix
        self.hosts = list(hosts)
        self.switch = f"{prefix}-sw"
        self.made: list[str] = []  # namespaces created, for close()
        self.uts = shutil.which("unshare") is not None

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    @staticmethod
    def preflight() -> None:
        """Raise :class:`NetnsUnavailable` with the reason when namespaces cannot be made here."""
        if not sys.platform.startswith("linux"):
            raise NetnsUnavailable(f"network namespaces are Linux only (this is {sys.platform})")
        if os.geteuid() != 0:
            raise NetnsUnavailable("making network namespaces needs root (ip netns add)")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("the ip command (iproute2) is not installed")

    def create(self) -> Network:
        self.preflight()
        for name in [self.switch, *(self.ns(h) for h in self.hosts)]:
            _check(_ip("netns", "add", name), f"ip netns add {name}")
            self.made.append(name)
            _check(_ip("-n", name, "link", "set", "lo", "up"), f"lo up in {name}")
        _check(_ip("-n", self.switch, "link", "add", "br0", "type", "bridge"), "making the switch (a bridge)")
        _check(_ip("-n", self.switch, "link", "set", "br0", "up"), "switch up")
        for host in self.hosts:
            ns, port = self.ns(host), f"p-{host}"
            _check(
                _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns),
                f"veth pair for {host}",
            )
            _check(_ip("-n", self.switch, "link", "set", port, "master", "br0"), f"{port} on the switch")
            _check(_ip("-n", self.switch, "link", "set", port, "up"), f"{port} up")
            _check(_ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0"), f"address of {host}")
            _check(_ip("-n", ns, "link", "set", "eth0", "up"), f"eth0 of {host} up")
        return self

    def command(self, host: str, args: Sequence[str]) -> list[str]:
        """``args`` run on ``host``: in its namespace, under its own hostname when ``unshare`` is there
        (so a device started with ``-n device1@%h`` is ``device1@h1``). The process keeps the id of
        the ``ip netns exec`` started (each step execs the next)."""
        prefix = ["ip", "netns", "exec", self.ns(host)]
        if self.uts:
            prefix += ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host]
        return [*prefix, *args]

    def hostname(self, host: str) -> str:
        """What ``%h`` is on ``host``."""
        return host if self.uts else socket.gethostname()

    def cut(self, host: str) -> None:
        """Pull the host's cable: its switch port goes down."""
        _check(_ip("-n", self.switch, "link", "set", f"p-{host}", "down"), f"cutting {host}")

    def restore(self, host: str) -> None:
        _check(_ip("-n", self.switch, "link", "set", f"p-{host}", "up"), f"restoring {host}")

    def pids(self) -> list[int]:
        """Processes still inside our namespaces."""
        found: list[int] = []
        for name in self.made:
            out = _ip("netns", "pids", name)
            found += [int(p) for p in out.stdout.split() if p.isdigit()]
        return found

    def close(self) -> None:
        """Kill (by id) whatever still runs in our namespaces, then delete every one of them."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        for name in reversed(self.made):
            _ip("netns", "del", name)
        self.made = [name for name in self.made if name in _ip("netns", "list").stdout.split()]
