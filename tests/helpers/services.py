"""The servers behind the fixtures: the session's redis-server, a redis-server a test stops and
starts again, RabbitMQ with a vhost of each test's own (its channel queues classic or quorum), the
machine's RabbitMQ stopped and started again, and the ``Broker`` a test runs on."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import redis

from helpers.paths import ROOT
from helpers.settings import fresh_settings
from helpers.waits import wait_until
from mutitask_celery.tools.localredis import LocalRedis, free_port


class RedisServer(LocalRedis):
    """The session's redis-server, with a client for assertions."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.start()
        self.client = redis.Redis(port=self.port, decode_responses=True)


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


RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
RABBITMQ = f"{RABBITMQ_HOST}:{RABBITMQ_PORT}"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120)
    return done.stdout


def rabbitmq_problem() -> str:
    """Why RabbitMQ on 127.0.0.1:5672 cannot be had, or "" when it can; started by
    scripts/rabbitmq.sh when it does not answer."""
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
            return (
                f"RabbitMQ does not answer on {RABBITMQ_HOST}:{RABBITMQ_PORT} and scripts/rabbitmq.sh "
                f"could not start it ({last[0]})"
            )
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed: the amqp tests need it to make a vhost of their own"
    return ""


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

    def queue_types(self) -> dict[str, str]:
        """Each queue of this broker's vhost, by name: its type (``classic``, ``quorum``)."""
        assert self.url is not None, "the Redis broker has no queue types"
        listed = _rabbitmqctl("list_queues", "-p", vhost_of(self.url), "--no-table-headers", "name", "type")
        return dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)


def vhost_of(url: str) -> str:
    """The RabbitMQ vhost an ``amqp://`` URL names."""
    return unquote(urlsplit(url).path[1:]) or "/"


@contextmanager
def amqp_vhost(address: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A RabbitMQ vhost of its own, as MUTITASK_BROKER_URL in this process (and its children)
    while the block runs, with the settings ``env`` beside it (e.g. MUTITASK_QUORUM_QUEUES);
    deleted afterwards, once this process has dropped its connections (a test's processes are
    stopped before)."""
    vhost = f"mutitask-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = f"amqp://guest:guest@{address}/{vhost}"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MUTITASK_BROKER_URL", url)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            fresh_settings()
            yield url
        fresh_settings()
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def rabbitmq_control_problem() -> str:
    """Why this process cannot stop and start the machine's RabbitMQ with rabbitmqctl (not
    installed, or not allowed to: the node's Erlang cookie), or "" when it can."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed"
    try:
        _rabbitmqctl("status")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        said = (getattr(exc, "stderr", "") or "").strip().splitlines()[-1:] or [str(exc)]
        return f"rabbitmqctl cannot control the RabbitMQ node here ({said[0]})"
    return ""


class RabbitControl:
    """The machine's RabbitMQ, stopped and started again (``rabbitmqctl stop_app`` /
    ``start_app``): every user of it, not only the test, loses its connections meanwhile."""

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """RabbitMQ stopped while the block runs, and started again after it, whatever happens
        in it; returns once it answers again."""
        try:
            _rabbitmqctl("stop_app")
            wait_until(lambda: not _answers(RABBITMQ_HOST, RABBITMQ_PORT), 60, "RabbitMQ to stop answering")
            yield
        finally:
            _rabbitmqctl("start_app")
            _rabbitmqctl("await_startup")
            wait_until(lambda: _answers(RABBITMQ_HOST, RABBITMQ_PORT), 120, "RabbitMQ to answer again")
