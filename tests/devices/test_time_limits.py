"""Time limits on every pool: a hung task is dead-lettered as ``timed out after N s``, its
slot takes the next task, and what it returns late is never saved."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import threading
import time

import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import runtime
from mutitask_celery.channels import check_time_limit
from mutitask_celery.device import time_limits
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.serving import serve
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
DEVICE = f"device1@{HOST}"


def test_a_call_in_time_gives_its_value_or_its_error() -> None:
    runners = time_limits.Runners()
    assert runners.call_with_limit(lambda x: x * 2, 21, 5.0) == 42
    assert runners.call_with_limit(lambda x: x, "no limit", None) == "no limit"

    def boom(_: object) -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside") as caught:
        runners.call_with_limit(boom, None, 5.0)
    assert any(frame.name == "boom" for frame in caught.traceback)  # the user's frame, for the record


def test_a_call_past_its_limit_is_given_up_and_its_late_result_dropped(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    ran: list[str] = []

    def hangs(task: str) -> str:
        release.wait(30)
        ran.append(task)
        return task

    runners = time_limits.Runners()
    started = time.monotonic()
    with pytest.raises(time_limits.TimedOut, match=r"^timed out after 0.3 s$"):
        runners.call_with_limit(hangs, "late", 0.3, "t-late")
    assert time.monotonic() - started < 5  # given up on, not waited for
    assert runners.abandoned() == 1
    assert runners.call_with_limit(lambda x: x, "next", 5.0) == "next"  # a new runner takes the next one
    release.set()
    wait_until(lambda: runners.abandoned() == 0, 10, "the late call to end")
    assert ran == ["late"]
    assert "task t-late returned after its time limit: dropped" in caplog.text


@pytest.mark.parametrize("bad", [0, -1, "2", True, float("nan"), float("inf")])
def test_a_time_limit_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="time_limit must be a positive number of seconds"):
        check_time_limit(bad)
    with pytest.raises(ConfigurationError, match="time_limit must be a positive number"):
        mt.register_channel(99, str, time_limit=bad)  # type: ignore[arg-type]
    assert check_time_limit(None) is None and check_time_limit(2) == 2.0


def start_device(procs: Processes, pool: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Device 1 of channel 1, one task at a time, time limit $TIME_LIMIT: the legacy client
    (threads) or ``celery worker`` on the prefork or solo pool."""
    limit = env["TIME_LIMIT"]
    if pool == "threads":
        args = ["1", "1", "hang", "--time-limit", limit, *(["--retries", env["RETRIES"]] if "RETRIES" in env else [])]
        return procs.python(SCRIPTS / "device.py", *args, name=f"device1-{pool}", env=env)
    return procs.start(worker_command("device1@%h", include="hang_channel", pool=pool), f"device1-{pool}", env=env)


def start_times(output: str) -> dict[str, float]:
    """When each task started (its ``START`` line; a prefork child's comes through Celery's log)."""
    return {task: float(at) for task, at in re.findall(r"START (\S+) ([0-9.]+)", output)}


@pytest.mark.parametrize("pool", ["threads", "prefork", "solo"])
def test_a_hung_task_times_out_and_the_run_goes_on(procs: Processes, r: redis.Redis, pool: str) -> None:
    device = start_device(procs, pool, {"TIME_LIMIT": "2", "HANG_SECONDS": "60"})
    wait_until(device_is_up(DEVICE), 60, "device1")
    started = time.monotonic()
    summary = serve.serve(iter(["a", "hang", "b", "c"]), channel_size=1, stdin=io.StringIO(""), out=io.StringIO())
    assert time.monotonic() - started < 40, "the run waited for the hung task"
    assert (summary.published, summary.succeeded, summary.failed) == (4, 3, 1)
    (record,) = mt.failed(1)
    assert (record.data, record.reason, record.device) == ("hang", "timed out after 2 s", DEVICE)
    assert sorted(mt.results(1)) == ["a", "b", "c"]
    starts = start_times(procs.output(device))
    assert 1.5 < starts["b"] - starts["hang"] < 2 + 3  # the slot took the next task within seconds of the limit
    assert summary.channels[1].duplicates == 0


def test_retries_apply_to_a_timeout(procs: Processes, r: redis.Redis) -> None:
    device = start_device(procs, "threads", {"TIME_LIMIT": "1", "RETRIES": "1", "HANG_SECONDS": "60"})
    wait_until(device_is_up(DEVICE), 60, "device1")
    summary = serve.serve(iter(["hang", "ok"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert (summary.succeeded, summary.failed) == (1, 1)
    (record,) = mt.failed(1)
    assert record.reason == "timed out after 1 s (after 1 retry)"
    assert procs.output(device).count("START hang ") == 2


def test_a_late_result_is_never_saved_nor_recorded_twice(procs: Processes, r: redis.Redis) -> None:
    device = start_device(procs, "threads", {"TIME_LIMIT": "1", "HANG_SECONDS": "3"})
    wait_until(device_is_up(DEVICE), 60, "device1")
    summary = serve.serve(iter(["hang", "after"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert (summary.succeeded, summary.failed) == (1, 1)
    wait_until(lambda: "returned after its time limit" in procs.output(device), 20, "the late return")
    assert mt.results(1) == ["after"] and mt.failed_count(1) == 1
    assert mt.failed(1)[0].failures == 1
    stats = runtime.ledger().stats(1)
    assert (stats.succeeded, stats.failed, stats.duplicates) == (1, 1, 0)
