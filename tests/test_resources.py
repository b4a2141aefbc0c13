"""Resource and clock faults: Redis evicting keys, a host whose clock runs ahead. Each gives a
clear word and loses nothing (books/integrity.py, books/dead_letters.py)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
from conftest import HELPERS, Processes, device_is_up, fresh_settings, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.integrity import Watermarks
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.connection import redis_now
from mutitask_celery.errors import BooksLost, ExitCode
from mutitask_celery.tools.localredis import LocalRedis
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()


class OwnRedis(NamedTuple):
    """A redis-server of the test's own (its memory settings are the test's to change)."""

    server: LocalRedis
    client: redis.Redis

    def fill_up_at(self, headroom: int) -> None:
        """Set ``maxmemory`` to what Redis uses now plus ``headroom`` bytes."""
        self.client.config_set("maxmemory", int(self.client.info("memory")["used_memory"]) + headroom)


@pytest.fixture
def own_redis(procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., OwnRedis]]:
    """Starts a redis-server (with the given extra options) as MUTITASK_REDIS_URL of this process
    and its children; the test's processes are stopped before it."""
    started: list[LocalRedis] = []

    def start(*options: str) -> OwnRedis:
        folder = tmp_path / f"redis{len(started)}"
        folder.mkdir()
        server = LocalRedis(workdir=folder, extra_args=options).start()
        started.append(server)
        monkeypatch.setenv("MUTITASK_REDIS_URL", server.url)
        monkeypatch.delenv("MUTITASK_BROKER_URL", raising=False)
        fresh_settings()
        return OwnRedis(server, redis.Redis(port=server.port, decode_responses=True))

    try:
        yield start
    finally:
        procs.stop_all()
        for server in started:
            server.close()
        monkeypatch.undo()
        fresh_settings()


def padded_devices(procs: Processes, count: int = 2) -> list[subprocess.Popen[bytes]]:
    """Devices of channel 1 whose results are 4 KB each (tests/helpers/padded_channel.py)."""
    devices = [
        procs.start(worker_command(f"device{n}@%h", include="padded_channel", concurrency=2), f"device{n}")
        for n in range(1, count + 1)
    ]
    for n in range(1, count + 1):
        wait_until(device_is_up(f"device{n}@{HOST}"), 60, f"device{n} to start")
    return devices


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


# -- eviction is not a restart -------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_books_lost_to_eviction_name_eviction_not_a_restart(
    procs: Processes, own_redis: Callable[..., OwnRedis]
) -> None:
    """An operator sets an evicting policy mid-run (the start check cannot see that) and Redis
    evicts a counter of the books: the server stops with exit code 4 and says that Redis evicted
    keys, not that it restarted. (The counter is made the one key a volatile policy may evict, so
    that the eviction hits the books every time.)"""
    r = own_redis()
    padded_devices(procs)
    server = procs.python(HELPERS / "server.py", "3000", "50", name="server")
    wait_until(lambda: r.client.llen(keys.results(1)) >= 100, 60, "a first hundred results")
    r.client.expire(keys.stats(1), 3600)
    r.client.config_set("maxmemory-policy", "volatile-lru")
    r.fill_up_at(256 * 1024)
    wait_until(lambda: r.client.ttl(keys.stats(1)) < 0, 60, "Redis to evict the channel's counters")
    r.client.config_set("maxmemory", 0)
    assert server.wait(120) == ExitCode.BOOKS_LOST, procs.output(server)
    out = procs.output(server)
    said = r"Redis lost data since .*\(Redis evicted \d+ keys? \(maxmemory-policy volatile-lru\)\): channel 1"
    assert re.search(said, out), out
    assert "restarted" not in out


def test_books_lost_without_a_restart_do_not_say_restarted(r: redis.Redis) -> None:
    marks = Watermarks()
    client = runtime.ledger().client
    marks.check({"published": 5}, {}, client)
    with pytest.raises(BooksLost) as lost:
        marks.check({"published": 1}, marks.mark(), client)
    assert "restarted" not in str(lost.value) and "evicted" not in str(lost.value)


def test_books_lost_to_a_restart_say_it_restarted(own_redis: Callable[..., OwnRedis]) -> None:
    r = own_redis()
    marks = Watermarks()
    marks.check({"published": 5}, {}, r.client)
    r.server.stop()
    r.server.start()  # without its data

    def says_restarted() -> bool:
        with pytest.raises(BooksLost) as lost:
            marks.check({"published": 0}, marks.mark(), r.client)
        return bool(re.search(r"\(Redis restarted \d+ s ago\)", str(lost.value)))

    wait_until(says_restarted, 10, "the loss to name the restart")  # once surely after the books were whole
