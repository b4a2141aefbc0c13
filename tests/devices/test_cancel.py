"""``mutitask cancel``: a run cancelled mid-way ends with exit code 9, its waiting tasks are
recorded cancelled (never run, not dead letters), no task starts after the cancel has taken
hold, a running task that polls ``mutitask_celery.cancelled()`` stops early, and the books
balance: published = succeeded + dead-lettered + cancelled. Real devices, a real server
script, the real CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.device.cancelled import LOOK_EVERY
from mutitask_celery.errors import ExitCode

HOST = socket.gethostname()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mutitask_celery", *args], capture_output=True, text=True, timeout=60, check=False
    )


def stats(r: redis.Redis) -> dict[str, int]:
    return {k: int(float(v)) for k, v in r.hgetall(keys.stats(1)).items()}


@pytest.mark.timeout(300)
def test_a_run_cancelled_mid_way_ends_with_its_own_code_and_the_books_balance(procs: Processes, r: redis.Redis) -> None:
    env = {"SLOW_SECONDS": "0.1"}
    device = procs.device(1, 1, "slow", "--concurrency", "2", env=env)
    wait_until(device_is_up(f"device1@{HOST}"), 60, "device1")
    server = procs.python(SCRIPTS / "server.py", "400", "10", name="server", env=env)  # 40 s of work
    wait_until(lambda: len(mt.results(1, limit=None)) >= 20, 60, "20 results")
    done = cli("cancel", "1")
    cancelled_at = time.time()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("channel 1: cancelled;"), done.stdout
    assert server.wait(60) == ExitCode.CANCELLED, procs.output(server)
    assert "the run was cancelled (channel 1)" in procs.output(server)
    wait_until(lambda: runtime.ledger().outstanding(1) == 0, 30, "the running tasks to end")
    counts = stats(r)
    assert counts["cancelled"] > 0
    assert counts["published"] == counts.get("succeeded", 0) + counts.get("failed", 0) + counts["cancelled"]
    assert mt.failed_count(1) == 0  # cancelled tasks are no dead letters
    starts = procs.starts(device)
    assert len(starts) == counts["succeeded"]  # every task that started was recorded, no other ran
    late = [s for s in starts if s.at > cancelled_at + 2 * LOOK_EVERY + 0.5]
    assert not late, f"tasks started after the cancel took hold: {late}"


@pytest.mark.timeout(300)
def test_a_running_task_that_polls_cancelled_stops_early(procs: Processes, r: redis.Redis) -> None:
    device = procs.device(1, 1, "coop", env={"COOP_SECONDS": "120"})
    wait_until(device_is_up(f"device1@{HOST}"), 60, "device1")
    server = procs.python(SCRIPTS / "server.py", "3", "1", name="server")  # three tasks, one a message
    wait_until(lambda: len(procs.starts(device)) == 1, 60, "the first task to start")
    assert cli("cancel", "1").returncode == 0
    assert server.wait(60) == ExitCode.CANCELLED, procs.output(server)
    assert [json.loads(v) for v in r.lrange(keys.results(1), 0, -1)] == [["0", "stopped early"]]
    assert len(procs.starts(device)) == 1  # no other task started
    counts = stats(r)  # the server may not have published all three yet: what it did is cancelled
    assert counts["cancelled"] >= 1 and counts["published"] == counts["succeeded"] + counts["cancelled"]


def test_a_cancel_of_an_unknown_or_finished_channel_says_so(r: redis.Redis) -> None:
    unknown = cli("cancel", "7")
    assert unknown.returncode == ExitCode.FAILED
    assert "channel 7 is not one the books know: nothing to cancel" in unknown.stdout
    r.hset(keys.stats(2), "published", 5)  # a channel whose run ended: nothing outstanding, no server
    finished = cli("cancel", "2", "--json")
    assert finished.returncode == ExitCode.FAILED
    assert json.loads(finished.stdout)["nothing_to_cancel"] == [
        "channel 2 has finished (nothing outstanding, no server): nothing to cancel"
    ]
    assert cli("cancel").returncode == ExitCode.USAGE  # say which
