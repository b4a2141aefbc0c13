"""What the benchmarks share: a private Redis, devices as real processes, timing stats."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from mutitask_celery import runtime, settings  # noqa: E402
from mutitask_celery.tools.localredis import LocalRedis  # noqa: E402
from mutitask_celery.tools.processes import stop_process_groups  # noqa: E402


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own; this process (and its children) use it."""
    with LocalRedis() as server:
        os.environ["MUTITASK_REDIS_URL"] = server.url
        os.environ.setdefault("MUTITASK_PROGRESS", "off")  # the figures, not the progress lines
        settings._current = None
        runtime.reset()
        yield server.url


@contextmanager
def processes(
    commands: Sequence[Sequence[str]], env: dict[str, str] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start each command (quietly); stop them all at the end, whatever happens."""
    procs = [
        subprocess.Popen(
            list(c),
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for c in commands
    ]
    try:
        yield procs
    finally:
        stop_process_groups(procs, grace=15)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def devices_up(names: Sequence[str], timeout: float = 60, app: Any = None) -> None:
    """Wait until every named worker answers a ping."""
    if app is None:
        from mutitask_celery import app

    def all_up() -> bool:
        replies = app.control.ping(destination=list(names), timeout=0.5, limit=len(names))
        return len({n for r in replies for n in r}) == len(names)

    wait_for(all_up, timeout, f"devices {', '.join(names)}")


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)


def parse_args(parser: argparse.ArgumentParser, **small: Any) -> argparse.Namespace:
    """Parse, with ``--quick``: the same run at tiny sizes, so a test can check that every
    benchmark command in the README runs (its figures then mean nothing)."""
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, to check the script runs; the figures mean nothing"
    )
    args = parser.parse_args()
    if args.quick:
        for name, value in small.items():
            setattr(args, name, value)
    return args
