"""Separate hosts: Redis, the server and devices in their own network namespaces.

Three hosts on one switch (tests/helpers/netns.py): ``h1`` runs Redis and
device1, ``h2`` the server and device2, ``h3`` device3. Every process reaches
Redis over TCP at h1's address (10.213.0.1, which exists only inside the
namespaces); the test itself watches the books through Redis's unix socket,
so the machine's own network is never involved. Mid-run h3's cable is
pulled: the reaper gives what device3 held to the others, the run completes,
and when the cable is back device3 talks to Redis again and its late outcome
is counted as a task run twice, never saved twice.

A second test gives the server's host a clock 15 s ahead of the others
(tests/scripts/skewed.py): live devices must not be taken for dead, since
heartbeats are written and judged in Redis's clock, not the hosts'.

Linux and root only (``ip netns add``); skips with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from helpers.netns import NetnsUnavailable, Network
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.waits import wait_until

from mutitask_celery import keys
from mutitask_celery.books import messages

HOSTS = ("h1", "h2", "h3")  # h1: Redis + device1, h2: server + device2, h3: device3
PORT = 6390  # inside h1's namespace: nothing else listens there
COUNT = 120  # tasks
TASK_SECONDS = "0.25"  # slow enough that the cut comes mid-run, with tasks in hand
DEAD_AFTER = "3"  # a silent device is reaped after 3 s (default 10)
LOST_REDIS = ("heartbeat of", "could not record outcomes", "could not note message")  # a device's warnings


@dataclass
class Cluster:
    net: Network
    r: redis.Redis  # the test's own view of the books, over Redis's unix socket
    url: str  # what the hosts use: redis://:<password>@10.213.0.1:6390/0

    def env(self, **extra: str) -> dict[str, str]:
        return {"MUTITASK_REDIS_URL": self.url, "MUTITASK_BROKER_URL": "", "MUTITASK_DEAD_AFTER": DEAD_AFTER, **extra}

    def device(self, procs: Processes, n: int, host: str) -> subprocess.Popen[bytes]:
        args = [sys.executable, str(SCRIPTS / "device.py"), str(n), "1", "slow"]
        return procs.start(self.net.command(host, args), f"device{n}-{host}", env=self.env(SLOW_SECONDS=TASK_SECONDS))

    def name(self, n: int, host: str) -> str:
        return f"device{n}@{self.net.hostname(host)}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The three hosts and Redis on h1; afterwards every process in them is gone and every namespace deleted."""
    try:
        Network.preflight()
    except NetnsUnavailable as exc:
        pytest.skip(f"separate hosts need network namespaces: {exc}")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    net = Network(f"mt{os.getpid()}", HOSTS)
    sockdir = Path(tempfile.mkdtemp(prefix="mt-redis-"))  # short: a unix socket path has 107 bytes at most
    redis_proc = Processes(tmp_path)
    try:
        try:
            net.create()
        except NetnsUnavailable as exc:
            pytest.skip(f"cannot make network namespaces on this machine: {exc}")
        password = secrets.token_hex(12)
        sock = sockdir / "redis.sock"
        redis_proc.start(
            net.command(
                "h1",
                [
                    "redis-server",
                    "--bind",
                    net.address("h1"),
                    "--port",
                    str(PORT),
                    "--requirepass",
                    password,
                    "--unixsocket",
                    str(sock),
                    "--unixsocketperm",
                    "700",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(sockdir),
                    "--logfile",
                    str(tmp_path / "redis-h1.log"),
                ],
            ),
            "redis-h1",
        )
        r = redis.Redis(unix_socket_path=str(sock), password=password, decode_responses=True, socket_timeout=5)

        def up() -> bool:
            try:
                return bool(r.ping())
            except redis.RedisError:
                return False

        wait_until(up, 15, "redis-server on h1")
        yield Cluster(net, r, f"redis://:{password}@{net.address('h1')}:{PORT}/0")
    finally:
        redis_proc.stop_all()
        net.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert not net.made, f"namespaces left behind: {net.made}"


def held_tasks(r: redis.Redis, device: str) -> list[str]:
    """The task data of every message the device notes in hand (read from kombu's unacked hash)."""
    data = []
    for note in r.hgetall(keys.inhand(device)).values():
        raw = r.hget(keys.KOMBU_UNACKED, note.split("|", 1)[0])  # a note is "delivery tag|score"
        if raw is None:
            continue
        message = json.loads(raw)[0]
        _channel, items = messages.body_of(message)[0]
        data += [json.loads(messages.item_text(item)) for item in items]
    return data


def test_three_hosts_books_balance_and_a_cut_host_gets_its_tasks_delivered_again(
    cluster: Cluster, procs: Processes
) -> None:
    r, net = cluster.r, cluster.net
    devices = {n: cluster.device(procs, n, host) for n, host in enumerate(HOSTS, start=1)}
    names = {n: cluster.name(n, host) for n, host in enumerate(HOSTS, start=1)}
    wait_until(
        lambda: set(names.values()) <= set(r.hkeys(keys.DEVICES_INFO)),
        60,
        "the three devices to enter the roster over their links",
    )
    server = procs.start(
        net.command("h2", [sys.executable, str(SCRIPTS / "server.py"), str(COUNT), "50"]),
        "server-h2",
        env=cluster.env(),
    )

    # Mid-run, with a task in device3's hands: pull h3's cable.
    held: list[str] = []
    for _ in range(5):
        wait_until(
            lambda: r.llen(keys.results(1)) >= 10 and r.exists(keys.inhand(names[3])),
            60,
            "device3 to hold a task mid-run",
        )
        net.cut("h3")
        cut_at = time.time()
        held = held_tasks(r, names[3])  # device3 can change nothing in Redis now
        if held:
            break
        net.restore("h3")  # it had just finished one: try again
    assert held, "device3 never held a task when its link was cut"
    assert server.poll() is None, "the run ended before the cut"

    # The reaper (on h1 or h2) gives device3's tasks to the devices that can still reach Redis.
    wait_until(lambda: not r.exists(keys.inhand(names[3])), 30, "the reaper to take back device3's tasks")

    def others() -> set[str]:
        return {s.task for n in (1, 2) for s in procs.starts(devices[n], cut_at)}

    wait_until(lambda: set(held) <= others(), 30, f"device1 or device2 to start {held} again")
    assert devices[3].poll() is None
    # Cut off, device3's calls to Redis time out (socket timeout: redis-py's default is 5 s) and
    # it retries on new connections, rather than waiting on the dead ones for TCP to give up.
    wait_until(
        lambda: any(w in procs.output(devices[3]) for w in LOST_REDIS),
        60,
        "device3 to notice it lost Redis (a socket timeout on its Redis connections)",
    )
    net.restore("h3")
    restored_at = time.time()

    assert server.wait(120) == 0, procs.output(server)
    summary = json.loads(procs.output(server).split("SUMMARY ", 1)[1].splitlines()[0])["1"]
    assert summary["published"] == COUNT and summary["outstanding"] == 0
    assert summary["succeeded"] + summary["failed"] == COUNT and summary["failed"] == 0

    # Back on the network, device3 is heard again and records its late outcome: counted as run
    # twice, and not saved a second time.
    wait_until(
        lambda: float(r.hget(keys.DEVICES_SEEN, names[3]) or 0) > restored_at,
        60,
        "device3 to reach Redis again after its link came back",
    )
    wait_until(
        lambda: int(r.hget(keys.stats(1), "duplicates") or 0) >= len(held),
        60,
        "device3's late outcome to be counted as a task run twice",
    )
    results = [json.loads(x) for x in r.lrange(keys.results(1), 0, -1)]
    assert sorted(results, key=int) == [str(n) for n in range(COUNT)]  # each task saved exactly once
    assert r.zcard(keys.dead_index()) == 0 and r.hlen(keys.pending(1)) == 0
    wait_until(lambda: r.hlen(keys.KOMBU_UNACKED) == 0, 30, "every message acknowledged")
    assert all(procs.starts(devices[n]) for n in (1, 2, 3)), "a device on some host did no work"
    assert devices[3].poll() is None, procs.output(devices[3])


def test_a_server_whose_clock_runs_ahead_leaves_live_devices_alone(cluster: Cluster, procs: Processes) -> None:
    """h2's clock is 15 s ahead of h1's and h3's (NTP broken there), more than dead_after (3 s)."""
    r, net = cluster.r, cluster.net
    env = cluster.env(SLOW_SECONDS="8")
    names = [cluster.name(n, host) for n, host in enumerate(HOSTS, start=1)]
    for n, host in enumerate(HOSTS, start=1):
        procs.start(
            net.command(host, [sys.executable, str(SCRIPTS / "device.py"), str(n), "1", "slow"]),
            f"device{n}-{host}",
            env=env,
        )
    wait_until(lambda: set(names) <= set(r.hkeys(keys.DEVICES_INFO)), 60, "the three devices")
    server = procs.start(
        net.command("h2", [sys.executable, str(SCRIPTS / "skewed.py"), "15", str(SCRIPTS / "server.py"), "1"]),
        "server-h2",
        env=cluster.env(),
    )
    assert server.wait(60) == 0, procs.output(server)
    summary = json.loads(procs.output(server).split("SUMMARY ", 1)[1].splitlines()[0])["1"]
    assert (summary["published"], summary["succeeded"], summary["failed"]) == (1, 1, 0), summary
    assert "silent for" not in procs.output(server)
