"""Starting and stopping the processes a demo, a benchmark or a test runs: all of them, always.

Each is started in its own session (``start_new_session=True``), so its whole
process group gets the signal: first SIGTERM (a device finishes its task in
hand), then SIGKILL for whatever is still there after the grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence


def stop_process_groups(procs: Iterable[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds in all, then SIGKILL the rest."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def worker_command(
    node: str,
    queues: str = "channel1",
    include: str | None = None,
    pool: str | None = "threads",
    concurrency: int = 1,
    app: str = "mutitask_celery",
    extra: Sequence[str] = (),
) -> list[str]:
    """``celery -A mutitask_celery worker`` as a device named ``node`` (``device3@%h``) on
    ``queues``, importing ``include`` (the module that registers its task functions);
    ``pool`` None: Celery's default (prefork). Quiet: no mingle, no gossip."""
    args = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues, "-n", node]
    if include:
        args += ["-I", include]
    if pool is not None:
        args += ["--pool", pool]
    return [*args, "-c", str(concurrency), "--without-mingle", "--without-gossip", *extra]
