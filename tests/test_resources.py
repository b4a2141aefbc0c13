"""Resource and clock faults: a host whose clock runs ahead. Each gives a clear word and
loses nothing (books/dead_letters.py)."""

from __future__ import annotations

import socket
import sys
import time

import pytest
import redis
from conftest import HELPERS, Processes, device_is_up, fresh_settings, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.connection import redis_now

HOST = socket.gethostname()


# -- retention in Redis's clock ----------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_device_whose_clock_runs_ahead_keeps_fresh_dead_letters(
    procs: Processes, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device 2 h ahead of Redis, retention 1 h: the records it writes are seconds old, and stay
    (every device prunes after a failed task)."""
    monkeypatch.setenv("MUTITASK_DEAD_LETTER_MAX_AGE", "3600")
    fresh_settings()
    procs.start(
        [sys.executable, str(HELPERS / "skewed.py"), "7200", str(HELPERS / "device.py"), "1", "1", "failing"],
        "device1-skewed",
    )
    wait_until(device_is_up(f"device1@{HOST}"), 60, "the skewed device to start")
    ids = [messages.new_task_id() for _ in range(5)]
    runtime.ledger().publish(1, [(task_id, codec.encode(f"t{n}")) for n, task_id in enumerate(ids)])
    wait_until(lambda: runtime.ledger().outstanding(1) == 0, 60, "the tasks to fail")
    # One more message: the device (one task at a time) has pruned after the first ones by the time it is done.
    runtime.ledger().publish(1, [(messages.new_task_id(), codec.encode("last"))])
    wait_until(lambda: runtime.ledger().outstanding(1) == 0, 60, "the last task to fail")
    assert sorted(record.id for record in mt.failed(1) if record.id in ids) == sorted(ids)
    assert mt.failed_dropped(1) == 0


def test_retention_drops_old_records_in_redis_clock_on_a_host_behind(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host 2 h behind still drops records older than the limit by Redis's clock."""
    monkeypatch.setenv("MUTITASK_DEAD_LETTER_MAX_AGE", "1")
    fresh_settings()
    ids = [messages.new_task_id() for _ in range(3)]
    runtime.ledger().publish(1, [(task_id, '"x"') for task_id in ids])
    runtime.ledger().finish(1, "device1@h", [Outcome(task_id, ok=False, reason="returned None") for task_id in ids])
    failed_at = max(record.last_failed for record in mt.failed(1))
    wait_until(lambda: redis_now(r) > failed_at + 1.5, 10, "the records to be older than the limit")
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 7200)
    assert runtime.store().prune() == 3
    assert mt.failed_count(1) == 0 and mt.failed_dropped(1) == 3
