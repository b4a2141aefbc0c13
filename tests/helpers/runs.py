"""Server runs inside the test's own process: a run in a thread, and the poison-task run."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
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
