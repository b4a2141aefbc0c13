"""A run on Redis Sentinel survives its master's failovers with nothing lost and nothing saved
twice: real sentinels, a real master SIGKILLed, a planned ``SENTINEL FAILOVER`` and a master
frozen with SIGSTOP, all in one run of the seed's shape (a legacy server script, legacy
device scripts, one channel saving to Redis and one with a user's save function)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers.processes import Processes
from helpers.runs import seed_shape_run, seed_shape_saved
from helpers.sentinels import master_of, report, sentinel_of
from helpers.waits import wait_until

from mutitask_celery import keys
from mutitask_celery.tools.localsentinel import LocalSentinelGroup

COUNT = 5_000  # tasks a channel: about a minute at 20 ms a task, two at a time


def saved(group: LocalSentinelGroup, save_file: Path) -> tuple[list[str], list[str]]:
    """The tasks saved so far: channel 1's (Redis, the default save function), channel 2's
    (the user's save function's file), asked of whichever node is master now."""
    with sentinel_of(group) as sentinel, master_of(sentinel, group.master_name) as master:
        return seed_shape_saved(master, save_file)


def progress(group: LocalSentinelGroup, save_file: Path) -> int:
    try:
        one, two = saved(group, save_file)
    except Exception:  # noqa: BLE001  # the master is changing: no answer now, ask again
        return -1
    return len(one) + len(two)


def goes_on(group: LocalSentinelGroup, save_file: Path, what: str, since: float) -> None:
    """Wait until results come in again after a fault, and print how long it took."""
    base = progress(group, save_file)
    wait_until(lambda: progress(group, save_file) > max(base, 0) + 50, 120, f"the run to go on after {what}")
    report(f"the run went on after {what}", since)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_survives_a_killed_a_handed_over_and_a_frozen_master(
    procs: Processes, sentinel_group: LocalSentinelGroup, tmp_path: Path
) -> None:
    group = sentinel_group
    save_file = tmp_path / "saved.txt"
    env = {
        "MUTITASK_REDIS_URL": group.url,
        "MUTITASK_SENTINEL_MASTER": group.master_name,
        "MUTITASK_SENTINEL_PASSWORD": group.sentinel_password or "",
        "MUTITASK_DEAD_AFTER": "5",
    }
    server = seed_shape_run(procs, COUNT, env, save_file)

    wait_until(lambda: progress(group, save_file) >= 1000, 120, "1,000 results")
    killed = time.monotonic()
    old = group.kill_master()
    group.wait_promoted(old)
    report("a SIGKILLed master replaced", killed)
    goes_on(group, save_file, "a SIGKILLed master", killed)
    group.restart_node(old.port)
    group.wait_replica(old.port)  # the old master is a replica again

    handed = time.monotonic()
    old = group.failover()
    group.wait_promoted(old)
    report("SENTINEL FAILOVER done", handed)
    goes_on(group, save_file, "SENTINEL FAILOVER", handed)

    frozen = time.monotonic()
    old = group.freeze_master(12)
    group.wait_promoted(old)
    report("a master frozen for 12 s replaced", frozen)
    goes_on(group, save_file, "a frozen master", frozen)
    group.wait_replica(old.port, deadline=time.monotonic() + 60)  # thawed, then demoted by the sentinels

    assert server.wait(600) == 0, procs.output(server)
    one, two = saved(group, save_file)
    assert Counter(one) == Counter(str(i) for i in range(COUNT))  # every task saved, once
    assert Counter(two) == Counter(str(i) for i in range(1000, 1000 + COUNT))
    with sentinel_of(group) as sentinel, master_of(sentinel, group.master_name) as master:
        assert master.zcard(keys.DEAD_INDEX) == 0  # no dead letters
        assert master.hlen(keys.pending(1)) == master.hlen(keys.pending(2)) == 0
    summary = json.loads(procs.output(server).split("SUMMARY ", 1)[1].splitlines()[0])
    print(f"\n[sentinel] run twice: {summary['1']['duplicates']} + {summary['2']['duplicates']}")
