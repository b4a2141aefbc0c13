"""Server runs inside the test's own process: a run in a thread, and the poison-task run."""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helpers.processes import Processes
    from mutitask_celery.serving.producer import RunSummary


def run_in_thread(tasks: list[str], channel_size: int = 10) -> tuple[threading.Thread, dict[str, Any]]:
    """A server run of ``tasks`` in a thread; its RunSummary lands in ``out["summary"]``."""
    from mutitask_celery.serving import serve

    out: dict[str, Any] = {}

    def run() -> None:
        out["summary"] = serve.serve(iter(tasks), channel_size=channel_size, stdin=io.StringIO(""), out=io.StringIO())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@dataclass(frozen=True)
class PoisonRun:
    """What :func:`poison_run` saw: how often the poison killed device1, and the run's summary."""

    deaths: int
    summary: RunSummary


def poison_run(procs: Processes, env: dict[str, str] | None = None) -> PoisonRun:
    """Serve a, poison, b, c to a 'poison' device1 that a supervisor restarts whenever the
    poison kills it (exit code 3), until the run completes; the test asserts on the outcome.

    Raises AssertionError when the run has not completed within 120 s or the device exits
    with another code (it did not die of the poison)."""
    thread, out = run_in_thread(["a", "poison", "b", "c"])
    deaths = 0
    device = procs.device(1, 1, "poison", env=env)
    deadline = time.monotonic() + 120
    while thread.is_alive():  # a supervisor: restart the device whenever it dies
        if time.monotonic() > deadline:
            raise AssertionError("the run did not complete")
        if device.poll() is not None:
            if device.returncode != 3:
                raise AssertionError(f"device1 exited with {device.returncode}, not 3 (killed by the poison)")
            deaths += 1
            device = procs.device(1, 1, "poison", env=env)
        thread.join(0.2)
    return PoisonRun(deaths, out["summary"])


def expected_double(n: int) -> str:
    """Why the 'double' device (tests/scripts/device.py) fails task ``n``, or "" when it succeeds."""
    if n % 10 == 0:
        return "returned None"
    if n % 13 == 0:
        return f"ValueError: unlucky {n}"
    return ""


def run_with_a_device_killed(procs: Processes, count: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A run of ``count`` tasks (in a thread) on channel 1 while device3 holds a task it would run
    for a minute; devices 1 and 2 join, and device3 is SIGKILLed once the run is under way.
    Returns the run's ``out`` (its summary under ``"summary"``), once it completed."""
    import signal
    import socket

    import mutitask_celery as mt
    from helpers.waits import device_is_up, wait_until
    from mutitask_celery import runtime

    victim = procs.device(3, 1, "slow", env={"SLOW_SECONDS": "60", **(env or {})})
    wait_until(device_is_up(f"device3@{socket.gethostname()}"), 30, "device3")
    thread, out = run_in_thread([str(n) for n in range(count)])
    wait_until(lambda: procs.starts(victim), 30, "device3 to start a task")
    procs.device(1, 1, env=env)
    procs.device(2, 1, env=env)
    wait_until(lambda: mt.results_count(1) >= 50, 60, "the run to be under way")
    assert runtime.ledger().outstanding(1) > 0
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    thread.join(120)
    assert not thread.is_alive(), "the run did not complete"
    return out


def seed_shape_run(procs: Processes, count: int, env: dict[str, str], save_file: Path) -> subprocess.Popen[bytes]:
    """The seed's shape, as the failover tests run it: a legacy server script serving ``count``
    tasks to each of two channels, device 1 saving channel 1's results to Redis (the default
    save function), device 2 channel 2's with a user's save function to ``save_file``, two
    tasks at a time each. Returns the server's process; its summary is its last line."""
    from helpers.paths import SCRIPTS

    env = {**env, "DEVICE_TAG": "d", "SAVE_FILE": str(save_file)}
    procs.device(1, 1, "tag", "--concurrency", "2", env=env)
    procs.device(2, 2, "tag", "--concurrency", "2", "--save-file", env=env)
    return procs.python(SCRIPTS / "server.py", str(count), "50", "2", name="server", env=env)


def seed_shape_saved(client: Any, save_file: Path) -> tuple[list[str], list[str]]:
    """What a :func:`seed_shape_run` saved so far: channel 1's results (Redis, ``client`` on the
    master now) and channel 2's (the save function's file)."""
    one = [json.loads(v)[1] for v in client.lrange("ResultChannel1", 0, -1)]
    lines = save_file.read_text().splitlines() if save_file.exists() else []
    return one, [line.rsplit("'", 2)[1] for line in lines]  # a line: str(['d', '1000'])
