"""A device told to leave (SIGTERM, SIGINT) hands back at once what it has not started, lets its
running tasks finish within its grace, hands them back when the grace runs out or when told
twice, and never charges a task a death for it. Real devices (a legacy client script on the
threads pool, ``celery worker`` on the prefork pool), real signals.

Death detection is set far away (``MUTITASK_DEAD_AFTER=120``): a held task that starts on the
other device within the test's deadlines went back because its device gave it back, not
because a reaper took it from a device judged dead."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.settings import fresh_settings
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.errors import ExitCode
from mutitask_celery.serving.producer import RunSummary
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
D1, D2 = f"device1@{HOST}", f"device2@{HOST}"
POOLS = ["threads", "prefork"]
PREFETCH_TWO = ("--prefetch-multiplier", "2")


@pytest.fixture(autouse=True)
def slow_reaper(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """This process (the server in a thread reaps too) takes a device for dead after 120 s only."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "120")
    fresh_settings()


def start_device(procs: Processes, n: int, pool: str, release: Path, **env: str) -> subprocess.Popen[bytes]:
    """Device ``n`` of channel 1, one task at a time: a task starting with "hold" runs until
    ``release`` exists. The legacy client script (threads) or ``celery worker`` (prefork)."""
    full = {"MUTITASK_DEAD_AFTER": "120", "RELEASE_FILE": str(release), **env}
    if pool == "threads":
        proc = procs.device(n, 1, "hold", env=full)
    else:
        # Two messages in hand per child (the threads pool's tuner learns that from quick tasks;
        # on prefork it tunes in the child, where it cannot reach the worker's prefetch).
        command = worker_command(f"device{n}@%h", include="hold_channel", pool="prefork", extra=PREFETCH_TWO)
        proc = procs.start(command, f"d{n}", env=full)
    wait_until(device_is_up(f"device{n}@{HOST}"), 60, f"device{n}")
    return proc


def started(procs: Processes, proc: subprocess.Popen[bytes]) -> list[str]:
    """The tasks a device started (its ``START`` lines; a prefork child's come through Celery's log)."""
    return re.findall(r"START (\S+) [0-9.]+", procs.output(proc))


def finish(thread: threading.Thread, out: dict[str, Any]) -> RunSummary:
    thread.join(120)
    assert not thread.is_alive(), "the run did not complete"
    return cast("RunSummary", out["summary"])


def one_message_running(
    procs: Processes, pool: str, release: Path, **env: str
) -> tuple[subprocess.Popen[bytes], threading.Thread, dict[str, Any]]:
    """Device 1 runs the one message of a run of ``hold0, a, b`` (hold0 first, until ``release``)."""
    device1 = start_device(procs, 1, pool, release, **env)
    thread, out = run_in_thread(["hold0", "a", "b"], channel_size=10)
    wait_until(lambda: "hold0" in started(procs, device1), 60, "device1 to start hold0")
    return device1, thread, out


def restarted_on(procs: Processes, device: subprocess.Popen[bytes], release: Path) -> None:
    """hold0 starts again on ``device``; then every hold ends."""
    wait_until(lambda: "hold0" in started(procs, device), 30, "hold0 to start again on device2")
    release.touch()


def no_death_charged(r: redis.Redis) -> None:
    assert r.hlen(keys.lost(1)) == 0  # no task was charged a death
    assert mt.failed_count(1) == 0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("pool", POOLS)
def test_on_sigterm_what_a_device_holds_starts_elsewhere_at_once_and_its_task_finishes(
    procs: Processes, r: redis.Redis, tmp_path: Path, pool: str
) -> None:
    release = tmp_path / "release"
    device1 = start_device(procs, 1, pool, release)
    # Quick tasks first: a device holds a second message per slot only while its messages are quick.
    quick, held = [f"q{i}" for i in range(20)], [f"t{i}" for i in range(8)]
    tasks = [*quick, "hold0", *held]
    thread, out = run_in_thread(tasks, channel_size=1)  # a message a task
    wait_until(lambda: "hold0" in started(procs, device1), 60, "device1 to start hold0")
    wait_until(lambda: r.hlen(keys.inhand(D1)) >= 2, 30, "device1 to hold a message beside the one it runs")
    device2 = start_device(procs, 2, pool, release)
    os.kill(device1.pid, signal.SIGTERM)
    # What device1 held went back and ran on device2 while device1 still runs hold0: no reaper
    # could have taken it (device1 lives, and death detection is 120 s away).
    wait_until(lambda: set(held) <= set(mt.results(1, limit=None)), 60, "the held tasks to run on device2")
    assert device1.poll() is None, procs.output(device1)
    assert not set(started(procs, device1)) & set(held)  # nothing started on device1 after the signal
    release.touch()
    assert device1.wait(60) == ExitCode.OK, procs.output(device1)  # its task finished in its grace
    summary = finish(thread, out)
    assert sorted(mt.results(1, limit=None)) == sorted(tasks)  # each saved once
    assert summary.failed == 0 and runtime.ledger().stats(1).duplicates == 0
    no_death_charged(r)
    assert device2.poll() is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("pool", POOLS)
def test_a_task_past_the_grace_goes_back_uncharged_and_runs_elsewhere(
    procs: Processes, r: redis.Redis, tmp_path: Path, pool: str
) -> None:
    release = tmp_path / "release"
    device1, thread, out = one_message_running(procs, pool, release, MUTITASK_SHUTDOWN_GRACE="2")
    device2 = start_device(procs, 2, pool, release)
    os.kill(device1.pid, signal.SIGTERM)
    assert device1.wait(60) == ExitCode.HANDED_BACK, procs.output(device1)
    assert "its shutdown grace (2 s) ran out" in procs.output(device1)
    restarted_on(procs, device2, release)
    summary = finish(thread, out)
    assert sorted(mt.results(1, limit=None)) == ["a", "b", "hold0"]  # each saved once
    assert summary.failed == 0
    no_death_charged(r)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("pool", "second"), [("threads", signal.SIGINT), ("prefork", signal.SIGTERM)])
def test_told_twice_a_device_hands_everything_back_and_exits_at_once(
    procs: Processes, r: redis.Redis, tmp_path: Path, pool: str, second: signal.Signals
) -> None:
    release = tmp_path / "release"
    device1, thread, out = one_message_running(procs, pool, release)  # the default grace: 25 s
    os.kill(device1.pid, signal.SIGTERM)
    wait_until(lambda: "is leaving" in procs.output(device1), 30, "device1 to say it leaves")
    os.kill(device1.pid, second)
    assert device1.wait(20) == ExitCode.HANDED_BACK, procs.output(device1)  # well before its grace ran out
    assert "told twice to leave" in procs.output(device1)
    assert r.hlen(keys.inhand(D1)) == 0  # nothing left in its hands
    restarted_on(procs, start_device(procs, 2, pool, release), release)
    finish(thread, out)
    assert sorted(mt.results(1, limit=None)) == ["a", "b", "hold0"]
    no_death_charged(r)
