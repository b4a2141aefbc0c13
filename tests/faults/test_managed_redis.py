"""A run behind a managed Redis's one address survives its failovers with nothing lost and
nothing saved twice: the clients know one URL (no sentinels), a primary with one replica sits
behind it, and the address moves to the replica when the primary is handed over (Redis's own
``FAILOVER``: connections opened before stay on the old primary, now a replica, and meet
``READONLY``) or SIGKILLed (the replica promoted by hand, as a provider does, and the dead
node started again as its replica). ``MUTITASK_CONFIRM_REPLICAS=1``: each books step waits
until the replica has it, so the promoted one has every step that counted."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers.endpoint import MovingEndpoint
from helpers.processes import Processes
from helpers.runs import seed_shape_run, seed_shape_saved
from helpers.sentinels import report
from helpers.waits import wait_until

from mutitask_celery import keys
from mutitask_celery.tools.localredis import LocalRedis

pytestmark = pytest.mark.services  # starts its own redis-servers and devices

COUNT = 3_000  # tasks a channel: about half a minute at 20 ms a task, two at a time


def node(workdir: Path, port: int | None = None, replica_of: int | None = None) -> LocalRedis:
    """A Redis node with AOF (a killed node comes back with what it had), as a provider's are."""
    extra = ["--replicaof", "127.0.0.1", str(replica_of)] if replica_of else []
    return LocalRedis(workdir, appendonly=True, port=port, extra_args=extra).start()


def client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=5, decode_responses=True)


def role(port: int) -> str:
    try:
        return str(client(port).role()[0])
    except redis.RedisError:
        return "down"


def in_sync(primary: int) -> bool:
    """The primary has a replica online (its confirmed steps can go on)."""
    try:
        info = client(primary).info("replication")
    except redis.RedisError:
        return False
    return info.get("role") == "master" and any(
        isinstance(v, dict) and v.get("state") == "online" for k, v in info.items() if k.startswith("slave")
    )


def saved(primary: int, save_file: Path) -> tuple[list[str], list[str]]:
    """Channel 1's results (Redis, the default save function) and channel 2's (the user's save
    function's file), as the primary has them now."""
    return seed_shape_saved(client(primary), save_file)


def progress(endpoint: MovingEndpoint, save_file: Path) -> int:
    try:
        one, two = saved(endpoint.target, save_file)
    except redis.RedisError:
        return -1  # the primary is changing: ask again
    return len(one) + len(two)


def goes_on(endpoint: MovingEndpoint, save_file: Path, what: str, since: float) -> None:
    base = progress(endpoint, save_file)
    wait_until(lambda: progress(endpoint, save_file) > max(base, 0) + 50, 120, f"the run to go on after {what}")
    report(f"the run went on after {what}", since)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[LocalRedis, LocalRedis]]:
    """A primary and its replica, each in its own directory."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nodes = [node(tmp_path / "a")]
    try:
        nodes.append(node(tmp_path / "b", replica_of=nodes[0].port))
        wait_until(lambda: in_sync(nodes[0].port), 30, "the replica to sync")
        yield nodes[0], nodes[1]
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_survives_a_managed_redis_moving_its_address_to_the_replica(
    procs: Processes, pair: tuple[LocalRedis, LocalRedis], tmp_path: Path
) -> None:
    a, b = pair
    save_file = tmp_path / "saved.txt"
    with MovingEndpoint(a.port) as endpoint:
        env = {"MUTITASK_REDIS_URL": endpoint.url, "MUTITASK_CONFIRM_REPLICAS": "1", "MUTITASK_DEAD_AFTER": "5"}
        server = seed_shape_run(procs, COUNT, env, save_file)

        wait_until(lambda: progress(endpoint, save_file) >= 1000, 120, "1,000 results")
        handed = time.monotonic()
        client(a.port).execute_command("FAILOVER", "TO", "127.0.0.1", b.port, "TIMEOUT", 10000)
        wait_until(lambda: role(b.port) == "master" and role(a.port) == "slave", 30, "the handover")
        endpoint.move(b.port)  # the provider points its address at the new primary
        report("FAILOVER done and the address moved", handed)
        goes_on(endpoint, save_file, "a handover (READONLY on the connections opened before)", handed)

        wait_until(lambda: in_sync(b.port), 30, "the old primary to follow the new one")
        killed = time.monotonic()
        b.proc.kill()  # type: ignore[union-attr]
        b.proc.wait()  # type: ignore[union-attr]
        client(a.port).replicaof("NO", "ONE")  # the provider promotes the replica...
        endpoint.move(a.port)  # ...points its address at it...
        endpoint.drop_all()  # (what the dead node's connections did)
        restarted = node(b.workdir, port=b.port, replica_of=a.port)  # ...and starts a new replica
        report("a SIGKILLed primary replaced", killed)
        goes_on(endpoint, save_file, "a SIGKILLed primary", killed)

        try:
            assert server.wait(300) == 0, procs.output(server)
        finally:
            restarted.stop()
    one, two = saved(a.port, save_file)
    assert Counter(one) == Counter(str(i) for i in range(COUNT))  # every task saved, once
    assert Counter(two) == Counter(str(i) for i in range(1000, 1000 + COUNT))
    primary = client(a.port)
    assert primary.zcard(keys.DEAD_INDEX) == 0  # no dead letters
    assert primary.hlen(keys.pending(1)) == primary.hlen(keys.pending(2)) == 0
