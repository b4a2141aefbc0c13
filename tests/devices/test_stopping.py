"""``mutitask stop`` of a device whose task hangs: the device lives on in its warm shutdown,
so the stop says it is still stopping and names the task (exit 75), and status shows it
``stopping`` with its task in hand, until the task ends or the process is killed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from helpers.processes import Processes
from helpers.settings import fresh_settings
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.errors import ExitCode
from mutitask_celery.web import metrics, views

HOST = socket.gethostname()
D1, D2 = f"device1@{HOST}", f"device2@{HOST}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mutitask_celery", *args], capture_output=True, text=True, timeout=120, check=False
    )


def row(name: str) -> dict[str, object]:
    return next(d for d in json.loads(cli("status", "--json").stdout)["devices"] if d["name"] == name)


def holding(procs: Processes, release: Path) -> tuple[subprocess.Popen[bytes], str]:
    """device1 running task "hold-1", which holds until ``release`` exists; device2 idle beside it."""
    env = {"RELEASE_FILE": str(release)}
    device1 = procs.device(1, 1, "hold", env=env)
    wait_until(device_is_up(D1), 30, "device1")
    task_id = messages.new_task_id()
    runtime.ledger().publish(1, [(task_id, codec.encode("hold-1"))])
    wait_until(lambda: "START hold-1 " in procs.output(device1), 30, "device1 to start the task")
    procs.device(2, 1, "hold", env=env)
    wait_until(device_is_up(D2), 30, "device2")
    return device1, task_id


def test_stop_names_the_task_a_device_still_runs_until_it_ends(
    procs: Processes, r: redis.Redis, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    device1, task_id = holding(procs, release)
    stop = cli("stop", "device1")  # waits its 10 s: the task holds
    assert stop.returncode == ExitCode.STILL_STOPPING, stop
    assert stop.stdout.splitlines()[0] == "stopped: none"
    assert f"still stopping: {D1}" in stop.stdout and f"task {task_id} of channel 1" in stop.stdout
    assert device1.poll() is None
    status = row(D1)
    assert (status["state"], status["code"], status["in_hand"]) == ("stopping", 0, 1)
    assert row(D2)["state"] == "running"
    # The web page's device list and /metrics read the same.
    assert next(d for d in views.device_rows() if d["name"] == D1)["state"] == "stopping"
    text = metrics.render(views.Overview(views.RateHistory()).build()).decode()
    assert f'mutitask_device_state{{device="{D1}",state="stopping"}} 1.0' in text
    again = json.loads(cli("stop", "device1", "--wait", "0.5", "--json").stdout)  # asked again: still stopping
    assert again["stopped"] == [] and [r["task_ids"] for r in again["stopping"][D1]] == [[task_id]]

    release.touch()  # the task ends: so does the warm shutdown
    assert device1.wait(30) == 0
    wait_until(lambda: row(D1)["state"] == "offline", 10, "status to show device1 offline")
    assert row(D1)["in_hand"] == 0
    gone = cli("stop", "device1")
    assert gone.returncode == ExitCode.FAILED and f"not running: {D1}" in gone.stdout
    assert mt.results(1) == ["hold-1"]


def test_a_device_stopping_on_sigterm_shows_stopping_and_once_killed_is_gone(
    procs: Processes, r: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (systemd's stop) starts the same warm shutdown: the device says so with its
    next heartbeat; a stop then finds it already stopping. Killed, it falls silent."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "3")  # for the devices' reapers and the commands alike
    fresh_settings()
    release = tmp_path / "release"
    device1, task_id = holding(procs, release)
    device1.send_signal(signal.SIGTERM)
    wait_until(lambda: row(D1)["state"] == "stopping", 15, "status to show device1 stopping")
    assert row(D1)["in_hand"] == 1
    stop = cli("stop", "device1", "--wait", "0.5")
    assert stop.returncode == ExitCode.STILL_STOPPING and f"task {task_id} of channel 1" in stop.stdout
    device1.send_signal(signal.SIGKILL)
    device1.wait(10)
    wait_until(lambda: row(D1)["state"] == "offline", 20, "status to show the killed device offline")
    gone = cli("stop", "device1")
    assert gone.returncode == ExitCode.FAILED and f"not running: {D1}" in gone.stdout
    release.touch()
    wait_until(lambda: mt.results_count(1) == 1, 30, "device2 to run the task device1 held")
    assert mt.results(1) == ["hold-1"] and mt.failed_count(1) == 0


def test_a_late_word_of_a_shutdown_does_not_undo_its_end(r: redis.Redis) -> None:
    """The heartbeat thread may say "stopping" a moment after the device said it ended; a new
    life of the name forgets both."""
    from mutitask_celery.control import Ending

    devices = runtime.devices()
    devices.ending("device7@h", Ending.STOPPED)
    devices.ending("device7@h", Ending.STOPPING)
    assert r.hget(keys.DEVICES_LEAVING, "device7@h") == "stopped"
    devices.register("device7@h", [1], "h", 1)
    assert r.hget(keys.DEVICES_LEAVING, "device7@h") is None
