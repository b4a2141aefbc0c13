"""Fixtures: a private redis-server per test session, clean state per test, and
a process group that stops every process a test started, by its id, even when
the test fails; ``broker`` runs a test on the Redis broker and on RabbitMQ (a
vhost of its own, deleted afterwards)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import pytest
import redis

from mutitask_celery.tools.localredis import LocalRedis, free_port  # noqa: F401 (tests import free_port)
from mutitask_celery.tools.processes import stop_process_groups

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


def artifacts(fallback: Path) -> Path:
    """Where a test keeps what CI shows (screenshots): $MUTITASK_TEST_ARTIFACTS (.ci/run sets
    .ci/artifacts), else ``fallback``; made if missing."""
    folder = Path(os.environ.get("MUTITASK_TEST_ARTIFACTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fresh_settings() -> None:
    """Settings read afresh (the environment or celeryconfig.py changed) and the process-wide
    objects rebuilt from them."""
    from mutitask_celery import runtime, settings

    settings.forget()
    runtime.reset()


@pytest.fixture
def redis_url(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A clean database, and this process (and its children) pointed at it."""
    redis_server.client.flushall()
    monkeypatch.setenv("MUTITASK_REDIS_URL", redis_server.url)
    monkeypatch.delenv("MUTITASK_BROKER_URL", raising=False)
    fresh_settings()
    yield redis_server.url
    monkeypatch.undo()
    fresh_settings()


@pytest.fixture
def r(redis_server: RedisServer, redis_url: str) -> redis.Redis:
    return redis_server.client


class Start(NamedTuple):
    """A task a helper device started, and when (its clock)."""

    task: str
    at: float


class Processes:
    """Starts real processes for a test and stops all of them afterwards."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        args: list[str],
        name: str,
        env: dict[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HELPERS)]),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env=full_env,
                cwd=str(cwd or ROOT),
                start_new_session=True,
            )
        self.started.append((proc, log))
        return proc

    def adopt(self, proc: subprocess.Popen[bytes], name: str = "adopted") -> subprocess.Popen[bytes]:
        """A process the test started itself (e.g. on a terminal): stopped with the others."""
        log = self.logdir / f"{name}.log"
        log.touch()
        self.started.append((proc, log))
        return proc

    def python(self, script: str | Path, *args: str, name: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, str(script), *args], name or Path(script).stem, **kw)

    def device(
        self, device_id: int, channel: int, behaviour: str = "double", *extra: str, **kw: Any
    ) -> subprocess.Popen[bytes]:
        """A legacy client script (tests/helpers/device.py) as device ``device_id``."""
        return self.python(
            HELPERS / "device.py",
            str(device_id),
            str(channel),
            behaviour,
            *extra,
            name=f"device{device_id}-ch{channel}",
            **kw,
        )

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        for p, log in self.started:
            if p is proc:
                return log.read_text(errors="replace")
        raise KeyError(proc)

    def starts(self, proc: subprocess.Popen[bytes], after: float = 0.0) -> list[Start]:
        """The tasks a 'slow' helper device started (its ``START <task> <time>`` lines), in
        order, those after ``after`` (a Unix time) if given."""
        found = []
        for line in self.output(proc).splitlines():
            if not line.startswith("START "):
                continue
            task, _, when = line[len("START ") :].rpartition(" ")  # a task may hold spaces
            if float(when) > after:
                found.append(Start(task, float(when)))
        return found

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


# A test that asks for none of these, and is not marked ``services`` (it starts servers or
# processes itself), needs no redis-server: it is in the unit tier, ``pytest -m unit``.
SERVICE_FIXTURES = frozenset({"redis_server", "redis_url", "r", "procs", "rabbitmq", "broker"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if (
            not uses & SERVICE_FIXTURES
            and not item.get_closest_marker("services")
            and not item.get_closest_marker("slow")
        ):
            item.add_marker(pytest.mark.unit)


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


RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """RabbitMQ on 127.0.0.1:5672, started by scripts/rabbitmq.sh when it does not answer.

    Skips the amqp tests when it cannot be had; under CI (``CI`` set) fails instead,
    since .ci/run starts it and a silent skip would hide a broken broker.
    """
    problem = ""
    if not _answers(RABBITMQ_HOST, RABBITMQ_PORT):
        started = subprocess.run(
            ["bash", str(ROOT / "scripts" / "rabbitmq.sh")],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=600,
        )
        if started.returncode != 0 or not _answers(RABBITMQ_HOST, RABBITMQ_PORT):
            last = (started.stderr or started.stdout).strip().splitlines()[-1:] or ["no output"]
            problem = (
                f"RabbitMQ does not answer on {RABBITMQ_HOST}:{RABBITMQ_PORT} and scripts/rabbitmq.sh "
                f"could not start it ({last[0]})"
            )
    if not problem and shutil.which("rabbitmqctl") is None:
        problem = "rabbitmqctl is not installed: the amqp tests need it to make a vhost of their own"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return f"{RABBITMQ_HOST}:{RABBITMQ_PORT}"


@dataclass(frozen=True)
class Broker:
    """The broker a test runs on: ``redis`` (the books' Redis) or ``amqp`` (RabbitMQ)."""

    kind: str
    url: str | None = None  # MUTITASK_BROKER_URL; None on the books' Redis

    def queued(self, queue: str) -> int:
        """Messages waiting on ``queue`` (not those in a device's hands): for assertions only."""
        from kombu.connection import Connection

        from mutitask_celery import runtime

        if self.url is None:
            return int(runtime.ledger().client.llen(queue))
        with Connection(self.url) as connection:  # type: ignore[no-untyped-call]  # kombu is untyped
            try:
                return int(connection.default_channel.queue_declare(queue=queue, passive=True).message_count)
            except connection.channel_errors:  # not declared yet: nothing waits on it
                return 0


@contextmanager
def amqp_vhost(address: str) -> Iterator[str]:
    """A RabbitMQ vhost of its own, as MUTITASK_BROKER_URL in this process (and its children)
    while the block runs; deleted afterwards, once this process has dropped its connections
    (a test's processes are stopped before)."""
    vhost = f"mutitask-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = f"amqp://guest:guest@{address}/{vhost}"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MUTITASK_BROKER_URL", url)
            fresh_settings()
            yield url
        fresh_settings()
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Broker]:
    """Runs the test with the Redis broker, then with RabbitMQ as MUTITASK_BROKER_URL (the books,
    results and dead-letter store stay in the session's Redis). Each amqp test gets a fresh vhost,
    so no queue of another test (or of the default vhost) is ever touched."""
    if request.param == "redis":
        yield Broker("redis")
        return
    with amqp_vhost(request.getfixturevalue("rabbitmq")) as url:
        yield Broker("amqp", url)


def run_in_thread(tasks: list[str], channel_size: int = 10) -> tuple[threading.Thread, dict[str, Any]]:
    """A server run of ``tasks`` in a thread; its RunSummary lands in ``out["summary"]``."""
    from mutitask_celery.serving import serve

    out: dict[str, Any] = {}

    def run() -> None:
        out["summary"] = serve.serve(iter(tasks), channel_size=channel_size, stdin=io.StringIO(""), out=io.StringIO())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def poison_run(procs: Processes, env: dict[str, str] | None = None) -> None:
    """Serve a, poison, b, c to a 'poison' device1 that a supervisor restarts whenever the
    poison kills it; the poison must be dead-lettered as 'worker lost' after three deaths
    and the other three saved."""
    import mutitask_celery as mt

    thread, out = run_in_thread(["a", "poison", "b", "c"])
    deaths = 0
    device = procs.device(1, 1, "poison", env=env)
    deadline = time.monotonic() + 120
    while thread.is_alive():  # a supervisor: restart the device whenever it dies
        assert time.monotonic() < deadline, "the run did not complete"
        if device.poll() is not None:
            assert device.returncode == 3
            deaths += 1
            device = procs.device(1, 1, "poison", env=env)
        thread.join(0.2)
    summary = out["summary"]
    assert deaths == 3
    assert (summary.published, summary.succeeded, summary.failed) == (4, 3, 1)
    (record,) = mt.failed(1)
    assert record.data == "poison" and record.reason.startswith("worker lost")
    assert sorted(mt.results(1)) == ["a", "b", "c"]


class RestartableRedis:
    """A redis-server of the test's own, with its append-only file, that the test stops and
    starts again on the same port; this process and its children use it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.server = self._started()
        self.url = self.server.url

    def _started(self) -> LocalRedis:
        return LocalRedis(workdir=self.workdir, appendonly=True, port=self.port).start()

    def stop(self) -> None:
        self.server.stop()

    def start_again(self) -> None:
        self.server = self._started()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def restartable_redis(procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RestartableRedis]:
    """A :class:`RestartableRedis` as MUTITASK_REDIS_URL; the test's processes are stopped before it."""
    from mutitask_celery import settings

    (tmp_path / "redis").mkdir()
    server = RestartableRedis(tmp_path / "redis")
    try:
        monkeypatch.setenv("MUTITASK_REDIS_URL", server.url)
        fresh_settings()
        yield server
    finally:
        procs.stop_all()
        server.close()
        settings.forget()


FAST = {"MUTITASK_DEAD_AFTER": "3"}  # declare a silent device dead after 3 s (default 10)


@pytest.fixture
def fast_reaper(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """This process (a server run in a thread, the reapers) declares a silent device dead after 3 s."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "3")
    fresh_settings()
