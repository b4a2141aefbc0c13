"""Two deployments on one Redis, side by side: one with no key prefix, one with
``MUTITASK_KEY_PREFIX=team2:``. Each runs channel 1 with a device named device1 on this
host at the same time; neither sees the other's tasks, results, dead letters, roster or
device name. Real devices, a real server process for the second deployment."""

from __future__ import annotations

import json
import re
import socket

import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import keys

HOST = socket.gethostname()
TEAM2 = keys.Keys("team2:")
COUNT = 60


def doubled(numbers: range) -> list[int]:
    """What tests/scripts/device.py's 'double' saves: n * 2, but for its failures (multiples of 10 and 13)."""
    return sorted(n * 2 for n in numbers if n % 10 and n % 13)


def test_two_deployments_share_one_redis_without_seeing_each_other(procs: Processes, r: redis.Redis) -> None:
    name = f"device1@{HOST}"
    theirs = {"MUTITASK_KEY_PREFIX": TEAM2.prefix}
    ours_device = procs.device(1, 1)
    their_device = procs.device(1, 1, env=theirs)  # the same name, in the other deployment
    wait_until(device_is_up(name), 30, "our device1")
    wait_until(lambda: r.hexists(TEAM2.devices_info, name), 30, "their device1 in their roster")
    their_server = procs.python(SCRIPTS / "server.py", str(COUNT), env=theirs)  # tasks 0..59
    ours = range(1000, 1000 + COUNT)
    thread, out = run_in_thread([str(n) for n in ours])
    thread.join(120)
    assert not thread.is_alive(), "our run did not finish"
    assert their_server.wait(120) == 0, procs.output(their_server)

    summary = out["summary"].channels[1]
    assert summary.published == COUNT and summary.succeeded + summary.failed == COUNT
    assert sorted(mt.results(1, limit=None)) == doubled(ours)
    assert {f.data for f in mt.failed(limit=None)} == {str(n) for n in ours if not (n % 10 and n % 13)}
    line = re.search(r"^SUMMARY (.*)$", procs.output(their_server), re.M)
    assert line is not None
    assert json.loads(line[1])["1"]["published"] == COUNT
    assert sorted(int(x) for x in r.lrange(TEAM2.results(1), 0, -1)) == doubled(range(COUNT))
    assert r.zcard(TEAM2.dead_index()) == COUNT - len(doubled(range(COUNT)))

    # one device name, two leases and two rosters: each names its own process
    info = json.loads(r.hget(keys.DEVICES_INFO, name) or "{}")
    their_info = json.loads(r.hget(TEAM2.devices_info, name) or "{}")
    assert (info.get("pid"), their_info.get("pid")) == (ours_device.pid, their_device.pid)
    # every key of theirs is under their prefix, and none of ours is
    theirs_found = {k for k in r.scan_iter("team2:*")}
    assert TEAM2.stats(1) in theirs_found and keys.stats(1) not in theirs_found
    assert all(not k.startswith("team2:") for k in r.scan_iter("mutitask:*"))
    assert int(r.hget(keys.stats(1), "published") or 0) == COUNT == int(r.hget(TEAM2.stats(1), "published") or 0)
