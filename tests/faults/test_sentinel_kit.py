"""The Redis Sentinel kit (:mod:`mutitask_celery.tools.localsentinel`) does what a failover test
needs: the topology comes up with replication and sentinels that know each other, and each
fault a deployment meets (a master SIGKILLed, ``SENTINEL FAILOVER``, a master frozen with
SIGSTOP for 12 s) ends with a replica promoted, which clients find through redis-py's
``Sentinel`` with the data written before; an old master comes back as a replica; and
failovers follow one another.

How long each promotion took is printed, not asserted (``pytest -s``): the deadlines here
only say that it happened. docs/deployment.md quotes these figures.
"""

from __future__ import annotations

import re
import time

import pytest
import redis
from helpers.sentinels import master_of, report, sentinel_of
from redis.sentinel import Sentinel

from mutitask_celery.tools.localsentinel import LocalSentinelGroup

pytestmark = pytest.mark.slow  # real redis-servers and sentinels, and faults that take seconds each

NAME = "mymaster"
PROMOTION_DEADLINE = 30.0  # seconds; a promotion takes a few here
REJOIN_DEADLINE = 40.0  # seconds; Sentinel turns a master that came back into a replica 8 s after it answers
FREEZE = 12.0  # seconds a frozen master stays frozen: far past down-after-milliseconds (2 s)


def test_the_group_comes_up_and_a_write_on_the_master_reaches_both_replicas(
    sentinel_group: LocalSentinelGroup,
) -> None:
    group = sentinel_group
    ports = r"127\.0\.0\.1:\d+"
    assert re.fullmatch(rf"sentinel://:data-nodes-pw@{ports}(;sentinel://:data-nodes-pw@{ports}){{2}}/0", group.url)
    with sentinel_of(group) as sentinel:
        assert sentinel.discover_master(NAME) == group.master_address() == group.first_master
        replicas = sorted(port for _, port in sentinel.discover_slaves(NAME))
        assert replicas == sorted(group.data_ports[1:])
        with master_of(sentinel, NAME) as master:
            master.set("greeting", "hello")
            assert master.execute_command("WAIT", 2, 5000) == 2  # both replicas confirm it
    for port in replicas:
        with group.data_client(port) as replica:
            assert replica.get("greeting") == "hello"
            with pytest.raises(redis.ReadOnlyError):
                replica.set("greeting", "from a replica")
    with pytest.raises(redis.AuthenticationError):  # the sentinels have a password of their own
        with redis.Redis(*group.sentinel_addresses[0], socket_timeout=1) as anonymous:
            anonymous.ping()


def write_before(sentinel: Sentinel) -> None:
    """A key written on the master and on both replicas before the fault (it must outlive it)."""
    with master_of(sentinel, NAME) as master:
        master.set("before", "1")
        assert master.execute_command("WAIT", 2, 5000) == 2


def test_a_killed_master_is_replaced_comes_back_as_a_replica_and_its_successor_can_fail_too(
    sentinel_group: LocalSentinelGroup,
) -> None:
    group = sentinel_group
    with sentinel_of(group) as sentinel:
        write_before(sentinel)
        started = time.monotonic()
        first = group.kill_master()
        second = group.wait_promoted(first, started + PROMOTION_DEADLINE)
        report("promotion after SIGKILL of the master (1st)", started)
        assert sentinel.discover_master(NAME) == second != first
        with master_of(sentinel, NAME) as master:
            assert master.get("before") == "1"
            master.set("after", "2")

        restarted = time.monotonic()
        group.restart_node(first.port)
        with group.data_client(first.port) as old, pytest.raises(redis.ResponseError, match="NOREPLICAS|READONLY"):
            old.set("split", "brain")  # back as a master with no replica, or already a replica: no write
        assert group.wait_replica(first.port, restarted + REJOIN_DEADLINE) == second
        report("the killed master, restarted, back as a replica in sync", restarted)
        with group.data_client(first.port) as old:
            assert old.get("after") == "2"

        started = time.monotonic()
        assert group.kill_master() == second
        third = group.wait_promoted(second, started + PROMOTION_DEADLINE)
        report("promotion after SIGKILL of the master (2nd in a row)", started)
        assert sentinel.discover_master(NAME) == third != second
        with master_of(sentinel, NAME) as master:
            assert master.get("after") == "2"


def test_sentinel_failover_promotes_a_replica_twice_in_a_row(sentinel_group: LocalSentinelGroup) -> None:
    group = sentinel_group
    with sentinel_of(group) as sentinel:
        for turn in ("1st", "2nd"):
            with master_of(sentinel, NAME) as master:
                master.set("turn", turn)
            started = time.monotonic()
            old = group.failover(started + PROMOTION_DEADLINE)
            new = group.wait_promoted(old, started + PROMOTION_DEADLINE)
            report(f"promotion after SENTINEL FAILOVER ({turn})", started)
            assert sentinel.discover_master(NAME) == new != old
            assert group.wait_replica(old.port, started + REJOIN_DEADLINE) == new  # demoted, not lost
            with master_of(sentinel, NAME) as master:
                assert master.get("turn") == turn


def test_a_frozen_master_is_replaced_and_comes_back_as_a_replica_when_it_wakes(
    sentinel_group: LocalSentinelGroup,
) -> None:
    group = sentinel_group
    with sentinel_of(group) as sentinel:
        write_before(sentinel)
        started = time.monotonic()
        frozen = group.freeze_master(FREEZE)
        new = group.wait_promoted(frozen, started + FREEZE)  # while it is still frozen
        report(f"promotion after SIGSTOP of the master (frozen {FREEZE:.0f} s)", started)
        assert sentinel.discover_master(NAME) == new != frozen
        with master_of(sentinel, NAME) as master:
            assert master.get("before") == "1"
            master.set("during", "2")
        assert group.wait_replica(frozen.port, started + FREEZE + REJOIN_DEADLINE) == new
        report("the frozen master, thawed, back as a replica in sync (from the freeze)", started)
        with group.data_client(frozen.port) as woken:
            assert woken.get("during") == "2"
