"""A private ``redis-server`` on a free port, for demos, benchmarks and tests.

It never touches the Redis a user runs on 6379: it binds 127.0.0.1 on a port
the kernel picks, keeps its files in its own directory, and is stopped (and
its directory removed) when the ``with`` block ends, also on an error.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

from .errors import BrokerUnavailable

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """``with LocalRedis() as server: server.url`` (``appendonly=True`` for persistence tests)."""

    def __init__(self, workdir: Path | None = None, appendonly: bool = False, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise BrokerUnavailable("redis-server is not installed (apt-get install -y redis-server)")
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="mutitask-redis-")) if workdir is None else workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalRedis:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
                    raise BrokerUnavailable(f"redis-server did not start on port {self.port} "
                                            f"(see {self.workdir / 'redis.log'})") from None
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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
