"""A books step counts as done only once a replica has it (``WAIT`` after the step, on its
connection), against a real master and a real replica that the test freezes."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest
import redis
from helpers.waits import wait_until

from mutitask_celery.replication import ConfirmingRedis, ReplicaCount
from mutitask_celery.tools.localredis import LocalRedis


@pytest.fixture
def master_and_replica() -> Iterator[tuple[LocalRedis, LocalRedis]]:
    with LocalRedis() as master:
        replica = LocalRedis(extra_args=["--replicaof", "127.0.0.1", str(master.port)]).start()
        try:
            probe = redis.Redis(port=master.port)
            wait_until(lambda: probe.info("replication")["connected_slaves"] == 1, timeout=20, what="a replica")
            yield master, replica
        finally:
            replica.stop()


def waits(client: redis.Redis) -> int:
    """How many WAIT commands the master has run so far."""
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


@pytest.mark.parametrize("kind", ["script", "pipeline", "transaction"])
def test_a_step_waits_for_its_replica_and_is_done_once_the_replica_has_it(
    master_and_replica: tuple[LocalRedis, LocalRedis], kind: str
) -> None:
    master, replica = master_and_replica
    client = ConfirmingRedis(port=master.port, decode_responses=True)
    client.confirm(ReplicaCount(1))
    plain = redis.Redis(port=master.port, decode_responses=True)
    step = client.register_script("return redis.call('INCR', KEYS[1])")

    def write() -> None:
        if kind == "script":
            step(keys=["books"])
        else:
            pipe = client.pipeline(transaction=kind == "transaction")
            pipe.incr("books")
            pipe.execute()

    write()  # the replica is up: done at once
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    done = threading.Event()
    try:
        before = waits(plain)
        writer = threading.Thread(target=lambda: (write(), done.set()), daemon=True)
        writer.start()
        wait_until(lambda: waits(plain) >= before + 3, timeout=30, what="WAIT sent again and again")
        assert not done.is_set()  # the master has the write, but it is not confirmed: not done
        assert plain.get("books") == "2"
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    wait_until(done.is_set, timeout=30, what="the step done once its replica has it")
    assert redis.Redis(port=replica.port, decode_responses=True).get("books") == "2"


def test_a_step_that_fails_leaves_the_connection_in_step(master_and_replica: tuple[LocalRedis, LocalRedis]) -> None:
    """A script Redis does not know yet (NOSCRIPT) is sent in full and confirmed; the WAIT
    sent with the failed call does not become the reply of the next command."""
    master, _ = master_and_replica
    client = ConfirmingRedis(port=master.port, decode_responses=True, single_connection_client=True)
    client.confirm(ReplicaCount(1))
    step = client.register_script("return redis.call('SET', KEYS[1], 'x')")
    client.script_flush()
    assert step(keys=["k"]) == "OK"
    assert client.get("k") == "x" and client.ping() is True
    with pytest.raises(redis.ResponseError):
        client.eval("return redis.call('NOSUCHCOMMAND')", 0)
    assert client.get("k") == "x"


def test_a_heartbeat_or_a_lease_renewed_does_not_wait_for_replicas(
    master_and_replica: tuple[LocalRedis, LocalRedis],
) -> None:
    """Steps that only say a process lives are not confirmed: a replica rejoining (seconds)
    would otherwise make live devices look dead."""
    from mutitask_celery.books import steps

    master, replica = master_and_replica
    client = ConfirmingRedis(port=master.port, decode_responses=True)
    client.confirm(ReplicaCount(1))
    plain = redis.Redis(port=master.port, decode_responses=True)
    keep = steps.LEASE_KEEP.on(client)
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        before = waits(plain)
        keep(lease="lease:test", holders="holders:test", value="me", ttl=10)  # returns: nothing waited for
        assert waits(plain) == before
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
