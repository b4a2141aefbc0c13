"""Fixtures: a private redis-server per test session, clean state per test, and
a process group that stops every process a test started, by its id, even when
the test fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from mutitask_celery.localredis import LocalRedis, free_port  # noqa: F401 (tests import free_port)
from mutitask_celery.processes import stop_process_groups

ROOT = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "helpers"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` with growing delays until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class RedisServer(LocalRedis):
    """The session's redis-server, with a client for assertions."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.start()
        self.client = redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


def _reset_package_state() -> None:
    from mutitask_celery import runtime, settings

    settings._current = None
    runtime.reset()


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean database, and this process (and its children) pointed at it."""
    redis_server.client.flushall()
    monkeypatch.setenv("MUTITASK_REDIS_URL", redis_server.url)
    monkeypatch.delenv("MUTITASK_BROKER_URL", raising=False)
    _reset_package_state()
    yield redis_server.url
    monkeypatch.undo()
    _reset_package_state()


@pytest.fixture
def r(redis_server: RedisServer, redis_url: str) -> redis.Redis:
    return redis_server.client


class Processes:
    """Starts real processes for a test and stops all of them afterwards."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, args: list[str], name: str, env: dict[str, str] | None = None,
              stdin: int | IO[Any] | None = subprocess.DEVNULL, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HELPERS)]),
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=stdin,
                                    env=full_env, cwd=str(cwd or ROOT), start_new_session=True)
        self.started.append((proc, log))
        return proc

    def python(self, script: str | Path, *args: str, name: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, str(script), *args], name or Path(script).stem, **kw)

    def device(self, device_id: int, channel: int, behaviour: str = "double", *extra: str,
               **kw: Any) -> subprocess.Popen[bytes]:
        """A legacy client script (tests/helpers/device.py) as device ``device_id``."""
        return self.python(HELPERS / "device.py", str(device_id), str(channel), behaviour, *extra,
                           name=f"device{device_id}-ch{channel}", **kw)

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.started:
            if p is proc:
                return log.read_text(errors="replace")
        raise KeyError(proc)

    def stop_all(self) -> None:
        stop_process_groups(proc for proc, _ in self.started)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    group = Processes(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for proc, log in group.started:
                sys.stderr.write(f"\n----- {log.name} (exit {proc.returncode}) -----\n")
                sys.stderr.write(log.read_text(errors="replace")[-4000:])


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def device_is_up(name: str) -> Callable[[], bool]:
    """A predicate: the Celery worker ``name`` answers a ping."""
    from mutitask_celery import app

    def ping() -> bool:
        replies = app.control.ping(destination=[name], timeout=0.5)
        return any(name in reply for reply in replies)

    return ping
