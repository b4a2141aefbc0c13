"""Task functions past their time limit are capped per process: at the cap (or when no thread
can start at all) no task fails for it; the device hands its message back untouched and stops
with exit code 6, and another device runs what it held."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import threading

import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.device import time_limits
from mutitask_celery.errors import ExitCode, TooManyLateRunners
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
D1, D2 = f"device1@{HOST}", f"device2@{HOST}"


def test_no_room_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setenv("MUTITASK_MAX_LATE_RUNNERS", "1")
    runners = time_limits.Runners()
    runners.check_room()  # none late yet
    with pytest.raises(time_limits.TimedOut):
        runners.call_with_limit(lambda _: release.wait(30), None, 0.1, "t-late")
    try:
        with pytest.raises(TooManyLateRunners, match=r"^1 task function\(s\) still run past their time limit"):
            runners.check_room()
        monkeypatch.setenv("MUTITASK_MAX_LATE_RUNNERS", "none")
        runners.check_room()  # no cap: only a thread that cannot start stops the device
    finally:
        release.set()
    wait_until(lambda: runners.abandoned() == 0, 10, "the late call to end")


def test_a_thread_that_cannot_start_is_no_task_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process has no thread left to give: the call raises TooManyLateRunners, never a
    RuntimeError that would fail the task."""
    go, caught, runners = threading.Event(), [], time_limits.Runners()

    def call() -> None:  # on a thread of its own: it has no runner yet
        go.wait(10)
        try:
            runners.call_with_limit(lambda x: x, "ok", 5.0, "t-ok")
        except TooManyLateRunners as exc:
            caught.append(str(exc))

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    caller = threading.Thread(target=call)
    caller.start()
    monkeypatch.setattr(threading.Thread, "start", refuse)
    go.set()
    caller.join(10)
    monkeypatch.undo()
    assert caught and caught[0].startswith("cannot start a thread for the next task function (can't start new thread)")


def start_device(procs: Processes, n: int, pool: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Device ``n`` of channel 1, one task at a time, a 0.5 s limit: the legacy client (threads)
    or ``celery worker`` on the prefork pool."""
    env = {"TIME_LIMIT": "0.5", "HANG_SECONDS": "300", **env}
    if pool == "threads":
        return procs.python(SCRIPTS / "device.py", str(n), "1", "hang", "--time-limit", "0.5", name=f"d{n}", env=env)
    return procs.start(worker_command(f"device{n}@%h", include="hang_channel", pool=None), f"d{n}-{pool}", env=env)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_device_at_its_cap_hands_back_and_stops_with_code_6(procs: Processes, r: redis.Redis, pool: str) -> None:
    device1 = start_device(procs, 1, pool, {"MUTITASK_MAX_LATE_RUNNERS": "3"})
    wait_until(device_is_up(D1), 60, "device1")
    hung = [f"hang{i}" for i in range(6)]
    healthy = [f"ok{i}" for i in range(30)]
    tasks = [t for i in range(6) for t in (hung[i], *healthy[5 * i : 5 * i + 5])]
    run, out = run_in_thread(tasks, channel_size=4)
    wait_until(lambda: device1.poll() is not None, 90, "device1 to stop at its cap of late runners")
    assert device1.returncode == ExitCode.LATE_RUNNERS
    log = procs.output(device1)
    assert "3 task function(s) still run past their time limit in this process (MUTITASK_MAX_LATE_RUNNERS is 3)" in log
    assert "This device takes no more tasks and stops (exit code 6)" in log
    assert mt.failed_count(1) == 3  # the three that timed out: nothing failed for want of a thread
    start_device(procs, 2, pool, {})  # the fresh process a supervisor would start (the default cap, 32)
    wait_until(device_is_up(D2), 60, "device2")
    run.join(120)
    assert not run.is_alive(), "the run did not complete"
    summary = out["summary"]
    assert (summary.published, summary.succeeded, summary.failed) == (36, 30, 6)
    assert sorted(mt.results(1)) == sorted(healthy)  # each saved once
    assert {(rec.data, rec.reason, rec.failures) for rec in mt.failed(1)} == {
        (t, "timed out after 0.5 s", 1) for t in hung
    }
    assert runtime.ledger().stats(1).duplicates == 0
    assert r.hlen(keys.lost(1)) == 0  # the message it handed back was charged no death


def address_space(pid: int) -> int:
    """Bytes of address space the process maps now (VmSize)."""
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    return kb * 1024


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_a_device_that_cannot_start_a_thread_hands_back_and_stops_with_code_6(procs: Processes, r: redis.Redis) -> None:
    """No cap: the device's address space is capped instead (``prlimit``), so that after about
    a dozen hung task functions no thread can start (as after thousands on a long crawl)."""
    device1 = start_device(procs, 1, "threads", {"MUTITASK_MAX_LATE_RUNNERS": "none", "MALLOC_ARENA_MAX": "2"})
    wait_until(device_is_up(D1), 60, "device1")
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]  # a thread's stack, as glibc sizes it
    stack = stack if 0 < stack < 2**30 else 8 * 2**20
    room = address_space(device1.pid) + 12 * stack
    subprocess.run(["prlimit", f"--pid={device1.pid}", f"--as={room}"], check=True)
    hung = [f"hang{i}" for i in range(40)]
    healthy = [f"ok{i}" for i in range(40)]
    run, out = run_in_thread([t for pair in zip(hung, healthy, strict=True) for t in pair], channel_size=4)
    wait_until(lambda: device1.poll() is not None, 120, "device1 to stop when no thread can start")
    assert device1.returncode == ExitCode.LATE_RUNNERS
    log = procs.output(device1)
    assert "cannot start a thread for the next task function (can't start new thread)" in log
    assert "This device takes no more tasks and stops (exit code 6)" in log
    start_device(procs, 2, "threads", {})
    wait_until(device_is_up(D2), 60, "device2")
    run.join(180)
    assert not run.is_alive(), "the run did not complete"
    assert (out["summary"].succeeded, out["summary"].failed) == (40, 40)
    assert sorted(mt.results(1)) == sorted(healthy)
    assert {(rec.data, rec.reason, rec.failures) for rec in mt.failed(1)} == {
        (t, "timed out after 0.5 s", 1) for t in hung
    }
    assert r.hlen(keys.lost(1)) == 0
