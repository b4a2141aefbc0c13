"""Filtered reloads and deletes of a run's dead letters, end to end: real devices fail real tasks
with two different exceptions (a site that is down, and a real bug), first on device1, then on
device2; ``mutitask failed`` runs as a process. A reload by reason moves exactly the
ConnectionErrors (as many as its ``--dry-run`` said), which then succeed once the site is back;
the bugs stay untouched; a delete by time window and one by device take exactly theirs."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import runtime
from mutitask_celery.connection import redis_now
from mutitask_celery.serving import serve

pytestmark = pytest.mark.services

HOST = socket.gethostname()
D1, D2 = f"device1@{HOST}", f"device2@{HOST}"


def mutitask(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mutitask_celery", *args, "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run(tasks: list[str]) -> None:
    """Serve ``tasks`` on channel 1 until each has an outcome."""
    summary = serve.serve(iter(tasks), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.published == len(tasks)


def batch(start: int) -> list[str]:
    """Ten pages of a site that is down, three pages with a real bug, two that work."""
    return (
        [f"site-{n}" for n in range(start, start + 10)]
        + [f"bug-{n}" for n in range(start, start + 3)]
        + [f"ok-{n}" for n in range(start, start + 2)]
    )


def test_reload_by_reason_delete_by_window_and_by_device(
    procs: Processes, r: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    site_up = tmp_path / "site-is-up"
    env = {"SITE_UP": str(site_up)}
    procs.device(1, 1, "outage", env=env)
    wait_until(device_is_up(D1), 30, "device1")
    run(batch(0))  # device1 alone
    between = redis_now(runtime.store().client)
    assert mt.pause("device1") == [D1]
    procs.device(2, 1, "outage", env=env)
    wait_until(device_is_up(D2), 30, "device2")
    run(batch(100))  # device2 alone: device1 is paused
    records = mt.failed(limit=None)
    assert len(records) == 26 and {(f.device, f.reason.split(":")[0]) for f in records} == {
        (D1, "ConnectionError"),
        (D1, "ValueError"),
        (D2, "ConnectionError"),
        (D2, "ValueError"),
    }
    down = {f.id for f in records if f.reason.startswith("ConnectionError: cannot reach the site")}
    bugs = {f.id: f for f in records if f.id not in down}
    assert len(down) == 20 and len(bugs) == 6

    dry = mutitask("failed", "reload", "--reason", "ConnectionError*", "--dry-run", "--json", url=redis_url)
    assert json.loads(dry.stdout) == {"would_reload": 20} and mt.failed_count() == 26
    site_up.touch()  # the site is back: the reloaded pages now work
    done = mutitask("failed", "reload", "--reason", "ConnectionError*", "--json", url=redis_url)
    assert json.loads(done.stdout) == {"reloaded": 20}  # what the dry run said
    assert {f.id: f for f in mt.failed(limit=None)} == bugs  # the bugs untouched, failures and all
    wait_until(lambda: len(mt.results(1, limit=None)) == 4 + 20, 60, "the reloaded pages to succeed")
    assert sorted(v for v in mt.results(1, limit=None) if v.startswith("site")) == sorted(
        t for t in batch(0) + batch(100) if t.startswith("site")
    )
    assert mt.failed_count() == 6

    before = {i for i, f in bugs.items() if f.last_failed <= between}
    window = ["--until", datetime.fromtimestamp(between, timezone.utc).isoformat()]  # to the microsecond
    assert json.loads(mutitask("failed", "count", *window, "--json", url=redis_url).stdout)["total"] == 3
    assert mutitask("failed", "delete", *window, "--dry-run", url=redis_url).stdout.strip() == (
        "would delete 3 failed task(s)"
    )
    assert json.loads(mutitask("failed", "delete", *window, "--json", url=redis_url).stdout) == {"deleted": 3}
    assert {f.id for f in mt.failed(limit=None)} == set(bugs) - before and all(bugs[i].device == D1 for i in before)

    assert mt.delete_failed(device="device1") == 0  # device1's went with the window
    assert mt.delete_failed(device="device2", reason="ValueError", dry_run=True) == 3
    gone = mutitask("failed", "delete", "--device", "device2", "--reason", "ValueError", "--json", url=redis_url)
    assert json.loads(gone.stdout) == {"deleted": 3} and mt.failed_count() == 0
