"""Redis Sentinel for a test: a :class:`LocalSentinelGroup` of its own, redis-py's view of it,
and how long a promotion took.

The group has a password on its data nodes and another on its sentinels, as a deployment
would (``deploy/redis/sentinel/``), so a test that finds the master through the sentinels
also shows that it passes both.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.sentinel import Sentinel

from mutitask_celery.tools.localsentinel import LocalSentinelGroup

PASSWORD = "data-nodes-pw"
SENTINEL_PASSWORD = "sentinels-pw"
TIMEOUT = 1.0  # seconds a client waits for a node: a frozen master must not hold a test up


def started_group(workdir: Path) -> LocalSentinelGroup:
    """A master, two replicas and three sentinels under ``workdir``, up and agreed; the caller stops it."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (scripts/setup.sh installs it)")
    group = LocalSentinelGroup(
        password=PASSWORD, sentinel_password=SENTINEL_PASSWORD, workdir=workdir, server="system", die_with_parent=True
    )
    return group.start()


@contextmanager
def sentinel_of(group: LocalSentinelGroup, **login: str) -> Iterator[Sentinel]:
    """redis-py's ``Sentinel`` over the group's sentinels, as a client finds its master; closed after.

    ``login``: ``username`` and ``password`` on the data nodes, if not the group's own.
    """
    sentinel = Sentinel(
        group.sentinel_addresses,
        sentinel_kwargs={**group.sentinel_kwargs, "socket_timeout": TIMEOUT},
        socket_timeout=TIMEOUT,
        **{**group.connection_kwargs, **login},
    )
    try:
        yield sentinel
    finally:
        for client in sentinel.sentinels:
            client.close()


@contextmanager
def master_of(sentinel: Sentinel, name: str) -> Iterator[redis.Redis]:
    """A new client of the master ``name``, found through ``sentinel`` at its first command; closed after.

    A new one for each phase of a test, not one kept across a fault: redis-py asks the
    sentinels for the master when a pool connects, but a command retried after a timeout
    reconnects to the address it had (redis/redis-py#3874), which is the old master.
    """
    client = sentinel.master_for(name, socket_timeout=TIMEOUT, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def report(what: str, since: float) -> float:
    """Print (not assert) the seconds since ``since`` (``time.monotonic()``): the figures the
    deployment guide quotes come from these lines (``pytest -s``)."""
    elapsed = time.monotonic() - since
    print(f"\n[sentinel] {what}: {elapsed:.1f} s")
    return elapsed
