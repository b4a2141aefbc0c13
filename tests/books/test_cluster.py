"""The books on a Redis Cluster: every key of every step hashes to one slot.

A redis-server started with ``--cluster-enabled yes`` that owns all 16384 slots
judges a call as a cluster does: a script (or a transaction) whose keys hash to
different slots is refused (CROSSSLOT). That no script touches a key it was not given
is checked in ``unit/test_lua.py`` (a node owning every slot would not notice). The books
run here with RabbitMQ as the broker: kombu's Redis transport cannot use a cluster, so
the steps only a Redis broker takes are named apart, and checked to be exactly those.
"""

from __future__ import annotations

import io
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.services import amqp_vhost
from helpers.settings import fresh_settings
from helpers.waits import device_is_up, wait_until
from redis.crc import key_slot

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.books import scripts
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.serving import serve
from mutitask_celery.tools.localredis import LocalRedis, free_port

HOST = socket.gethostname()
# Shared functions pasted into other steps (``--! include``), never run on their own.
INCLUDES = {"cancelled", "claims", "clock", "dead_letter", "dead_index", "dead_match", "lease_check", "note", "wake"}
# Steps of the Redis broker's reaper: they act on kombu's own keys (unacked, the queues' lists).
REDIS_BROKER_ONLY = {"restore", "recover", "retire", "forget", "held"}


def expected_failure(n: int) -> bool:  # tests/scripts/device.py's "double"
    return n % 10 == 0 or n % 13 == 0


@dataclass
class Node:
    """A redis-server in cluster mode, owning no slot until told, and a client of it."""

    server: LocalRedis
    client: redis.Redis
    bus_port: int  # its cluster bus: given, since port + 10000 may not exist

    @classmethod
    def start(cls, workdir: Path) -> Node:
        workdir.mkdir()
        bus_port = free_port()
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(bus_port)]
        server = LocalRedis(workdir, extra_args=options).start()
        return cls(server, redis.Redis(port=server.port, decode_responses=True), bus_port)

    def ok(self) -> bool:
        """The node sees the cluster whole (every slot served)."""
        return bool(self.client.cluster("info")["cluster_state"] == "ok")

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rabbitmq: str) -> Iterator[redis.Redis]:
    """A one-node Redis Cluster holding every slot, as MUTITASK_REDIS_URL, and RabbitMQ."""
    node = Node.start(tmp_path / "cluster-node")
    client = node.client
    try:
        client.cluster("ADDSLOTSRANGE", "0", "16383")
        wait_until(node.ok, 30, "the cluster to be ok")
        monkeypatch.setenv("MUTITASK_REDIS_URL", node.server.url)
        fresh_settings()
        with amqp_vhost(rabbitmq):
            yield client
    finally:
        monkeypatch.undo()
        fresh_settings()
        node.close()


def test_the_cluster_layout_puts_every_key_in_one_slot() -> None:
    for prefix in ("", "team2:"):
        k = keys.Keys(prefix, cluster=True)
        names = [
            k.pending(1),
            k.meta(2),
            k.stats(3),
            k.notify(4),
            k.results(5),
            k.dead_index(),
            k.dead_index(6),
            k.dead_record("abc"),
            k.dead_by_field,
            k.run("default"),
            k.rate_limits,
            k.rate_tat,
            k.inhand("device1@host"),
            k.lost(7),
            k.backlog(8),
            k.held(9),
            k.started(10),
            k.unsent(11),
            k.steps("publisher"),
            k.queue_list(12),
            k.dead_channels,
            k.dead_dropped,
            k.devices_expected,
            k.devices_wanted,
            k.devices_info,
            k.devices_seen,
            k.devices_done,
            k.devices_beats,
            k.devices_forgotten,
            k.devices_leaving,
            k.sweep_due,
            k.channel_sizes,
            k.kombu_unacked,
            k.kombu_unacked_index,
            k.device_lease("device1@host"),
            k.channel_lease(13),
            k.run_lease("default"),
            k.lease_holders,
            k.room_probe(),
        ]
        assert {key_slot(name.encode()) for name in names} == {key_slot(b"books")}
        assert k.results(5) == f"{prefix}ResultChannel5{{books}}" and keys.queue(12) == "channel12"
    assert keys.pending(1) == "mutitask:pending:1" and keys.results(5) == "ResultChannel5"  # one server's


@pytest.mark.services  # two redis-servers of its own
def test_books_on_another_node_of_the_cluster_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our client follows no MOVED: pointed at a node that does not hold the books' slot,
    it says which node does, before any step runs."""
    first = Node.start(tmp_path / "a")
    second: Node | None = None
    try:
        second = Node.start(tmp_path / "b")
        slot = key_slot(b"books")
        first.client.cluster("ADDSLOTSRANGE", "0", str(slot - 1))
        second.client.cluster("ADDSLOTSRANGE", str(slot), "16383")
        first.client.cluster("MEET", "127.0.0.1", str(second.server.port), str(second.bus_port))
        for node in (first, second):
            wait_until(node.ok, 60, "the cluster to be ok")
        monkeypatch.setenv("MUTITASK_REDIS_URL", first.server.url)
        fresh_settings()
        with pytest.raises(ConfigurationError, match=rf"on the node at .*:{second.server.port}, not on the one"):
            runtime.ledger()
        monkeypatch.setenv("MUTITASK_REDIS_URL", second.server.url)
        fresh_settings()
        assert runtime.ledger().outstanding(1) == 0 and runtime.keys().cluster
    finally:
        monkeypatch.undo()
        fresh_settings()
        first.close()
        if second is not None:
            second.close()


def test_a_run_on_a_cluster_node_takes_every_step_in_one_slot(
    cluster: redis.Redis, procs: Processes, tmp_path: Path
) -> None:
    """Failures, a server-side unserializable item, a device killed mid-task, pause and
    start, a rate limit, a resumable run's record, a reload and a delete: every outcome
    exactly once, and Redis refused nothing."""
    victim = procs.device(3, 1, "slow", env={"SLOW_SECONDS": "60"})
    wait_until(device_is_up(f"device3@{HOST}"), 30, "device3")
    count = 200
    mt.set_rate_limit(1, 10_000)  # a limit no device reaches: its steps run, the run's pace does not change
    thread, out = run_in_thread([str(n) for n in range(count)])
    wait_until(lambda: procs.starts(victim), 30, "device3 to start a task")
    assert runtime.books_client().info("cluster")["cluster_enabled"] == 1 and runtime.keys().cluster
    helpers = [procs.device(1, 1), procs.device(2, 1)]
    wait_until(lambda: mt.results_count(1) >= 20, 60, "the run to be under way")
    victim.send_signal(signal.SIGKILL)  # RabbitMQ hands its message to another device
    victim.wait(10)
    assert mt.pause() and mt.start()
    thread.join(120)
    assert not thread.is_alive(), "the run did not complete"
    summary = out["summary"]
    good = sorted(n * 2 for n in range(count) if not expected_failure(n))
    bad = sorted(n for n in range(count) if expected_failure(n))
    assert (summary.published, summary.succeeded, summary.failed) == (count, len(good), len(bad))
    assert summary.channels[1].duplicates == 0
    assert sorted(mt.results(1)) == good
    assert sorted(int(f.data) for f in mt.failed(1, limit=None)) == bad
    assert cluster.llen("ResultChannel1{books}") == len(good) and not cluster.exists("ResultChannel1")

    marker = object()  # the server dead-letters an item it cannot send
    serve.serve(iter(["2", marker]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO(), resume=True)
    assert cluster.hget("mutitask:{books}:run:default", "state") == "finished"
    assert any(f.reason.startswith("unserializable") for f in mt.failed(1, limit=None))
    assert mt.delete_failed(1, ids=[f.id for f in mt.failed(1, limit=None) if f.data == repr(marker)]) == 1
    assert mt.reload_failed(1) == len(bad)  # they fail again, deterministically
    wait_until(lambda: mt.failed_count(1) == len(bad) and runtime.ledger().outstanding(1) == 0, 60, "the reload")
    runtime.ledger().give_back("device9@nowhere", 1, "no-such-message")
    assert runtime.cancels().mark_and_drain(1) == 0  # a cancel's steps, in the books' slot too
    assert runtime.cancels().drop(1, ["no-such-task"]) == 0
    runtime.cancels().clear([1])
    assert runtime.ledger().claim(1, "device9@nowhere", "no-such-message", "run", ["no-such-task"]) == [0]
    assert (
        runtime.ledger().mark_claims(1, "device9@nowhere", "no-such-message", "run", ["no-such-task"], "saving") == []
    )

    cluster.delete("mutitask:{books}:dead:by_field")  # as a version before the field index left it: filed again
    unlucky = [n for n in bad if n % 10]  # "ValueError: unlucky N"; the others returned None
    assert mt.failed_count(1, reason="*unlucky*") == len(unlucky)  # records read (peek), the index filed (reindex)
    assert mt.delete_failed(reason="ValueError*", device="device1") + mt.delete_failed(reason="ValueError*") == len(
        unlucky
    )
    assert sorted(int(f.data) for f in mt.failed(1, limit=None)) == [n for n in bad if n % 10 == 0]

    loaded = dict(zip(_steps(), cluster.script_exists(*[scripts.load(cluster, n).sha for n in _steps()]), strict=True))
    assert {name for name, known in loaded.items() if not known} == REDIS_BROKER_ONLY
    for proc in helpers:
        log = procs.output(proc)
        assert "CROSSSLOT" not in log and "same slot" not in log and "non local key" not in log, log


def _steps() -> list[str]:
    lua = Path(scripts.__file__).parent / "lua"
    return sorted(path.stem for path in lua.glob("*.lua") if path.stem not in INCLUDES)
