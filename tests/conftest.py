"""Fixtures and hooks only: a private redis-server per test session, clean state per test, and
a process group that stops every process a test started, by its id, even when the test fails;
``broker`` runs a test on the Redis broker and on RabbitMQ (a vhost of its own, deleted
afterwards), ``quorum_broker`` on RabbitMQ with quorum queues; ``sentinel_group``, on a Redis
Sentinel group of its own. What tests import lives in ``helpers/``; the scripts they run, in
``scripts/``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.paths import TESTS
from helpers.processes import Processes
from helpers.sentinels import started_group
from helpers.services import (
    RABBITMQ,
    Broker,
    RabbitControl,
    RedisServer,
    RestartableRedis,
    amqp_vhost,
    rabbitmq_control_problem,
    rabbitmq_problem,
)
from helpers.settings import fresh_settings

from mutitask_celery.tools.localsentinel import LocalSentinelGroup


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


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
SERVICE_FIXTURES = frozenset(
    {"redis_server", "redis_url", "r", "procs", "rabbitmq", "broker", "quorum_broker", "sentinel_group"}
)
UNIT = TESTS / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if (
            not uses & SERVICE_FIXTURES
            and not item.get_closest_marker("services")
            and not item.get_closest_marker("slow")
        ):
            item.add_marker(pytest.mark.unit)
    # tests/unit/ holds only the unit tier: its path says so, and this keeps it true.
    misplaced = [
        item.nodeid for item in items if item.path.is_relative_to(UNIT) and not item.get_closest_marker("unit")
    ]
    if misplaced:
        raise pytest.UsageError(f"tests/unit/ is for tests that need no service; these do: {', '.join(misplaced)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """RabbitMQ on 127.0.0.1:5672, started by scripts/rabbitmq.sh when it does not answer.

    Skips the amqp tests when it cannot be had; under CI (``CI`` set) fails instead,
    since .ci/run starts it and a silent skip would hide a broken broker.
    """
    problem = rabbitmq_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return RABBITMQ


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


@pytest.fixture
def quorum_broker(redis_url: str, rabbitmq: str) -> Iterator[Broker]:
    """RabbitMQ in a vhost of the test's own, as for ``broker``'s ``[amqp]``, with
    MUTITASK_QUORUM_QUEUES on: every channel queue a quorum queue."""
    with amqp_vhost(rabbitmq, env={"MUTITASK_QUORUM_QUEUES": "1"}) as url:
        yield Broker("amqp", url)


@pytest.fixture
def rabbitmq_control(rabbitmq: str) -> RabbitControl:
    """The machine's RabbitMQ, for a test to stop and start again. Skips when rabbitmqctl cannot
    (fails under CI, as ``rabbitmq`` does)."""
    problem = rabbitmq_control_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    return RabbitControl()


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


@pytest.fixture
def sentinel_group(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LocalSentinelGroup]:
    """A Redis Sentinel group of the test's own (a master, two replicas, three sentinels, a
    password on each side); stopped by its processes' ids after the test, its logs shown if it failed."""
    group = started_group(tmp_path / "sentinel")
    try:
        yield group
    finally:
        group.stop()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            sys.stderr.write(f"\n{group.logs()}\n")


@pytest.fixture
def fast_reaper(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """This process (a server run in a thread, the reapers) declares a silent device dead after 3 s."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "3")
    fresh_settings()
