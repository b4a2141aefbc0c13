"""Resource and clock faults: a full Redis (``maxmemory``), an evicting policy, a host whose
clock runs ahead. Each gives a clear word and loses nothing (mutitask_celery/memory.py,
kombu_guard.py, books/integrity.py, books/dead_letters.py)."""

from __future__ import annotations

import io
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
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.settings import fresh_settings
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, memory, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.integrity import Watermarks
from mutitask_celery.books.ledger import Finished, Outcome
from mutitask_celery.connection import exit_on_unreachable, redis_now
from mutitask_celery.errors import BooksLost, ExitCode, RedisOutOfMemory
from mutitask_celery.settings import HEARTBEAT
from mutitask_celery.tools.localredis import LocalRedis
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
MB = 1024 * 1024
FULL = re.compile(r"Redis is out of memory: maxmemory [\d.]+ [KMG]?B (all but )?reached \([^)]*policy noeviction\)")


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
    """Devices of channel 1 whose results are 4 KB each (tests/scripts/padded_channel.py)."""
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
        [sys.executable, str(SCRIPTS / "skewed.py"), "7200", str(SCRIPTS / "device.py"), "1", "1", "failing"],
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
    # Paused until Redis is about to evict: the run (3,000 tasks in about a second here) once
    # ended before the limit was set, and nothing was evicted.
    assert len(mt.pause()) == 2
    server = procs.python(SCRIPTS / "server.py", "3000", "50", name="server")
    wait_until(lambda: r.client.hlen(keys.pending(1)) >= 10, 60, "tasks in the channel")
    r.client.expire(keys.stats(1), 3600)
    r.client.config_set("maxmemory-policy", "volatile-lru")
    assert len(mt.start()) == 2
    r.fill_up_at(64 * 1024)  # 16 results of 4 KB take it
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


# -- a full Redis (maxmemory, noeviction) ------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_full_redis_makes_devices_wait_and_loses_nothing(
    procs: Processes, own_redis: Callable[..., OwnRedis]
) -> None:
    """Redis fills up mid-run with results: devices wait (no exit, no crash loop), the server
    names the cause; once memory is lifted the run completes, every task saved exactly once."""
    tasks = 1000
    r = own_redis()
    devices = padded_devices(procs)
    r.fill_up_at(2 * MB)  # about 500 of the 900 results fit
    server = procs.python(SCRIPTS / "server.py", str(tasks), "50", name="server")
    wait_until(lambda: FULL.search(procs.output(server)), 120, "the server to say that Redis is full")
    met = wait_until(
        lambda: [n for n, d in enumerate(devices, 1) if FULL.search(procs.output(d))], 120, "a device to meet it"
    )
    full_since = redis_now(r.client)
    for n in met:  # it waits, alive: its heartbeat goes on (in Redis's clock) while Redis is full
        wait_until(
            lambda n=n: float(r.client.hget(keys.DEVICES_SEEN, f"device{n}@{HOST}") or 0) > full_since + 2 * HEARTBEAT,
            30,
            f"device{n} to beat while Redis is full",
        )
    assert all(d.poll() is None for d in devices), "a device exited when Redis was full"
    assert server.poll() is None, procs.output(server)
    r.client.config_set("maxmemory", 0)  # the operator gives Redis room
    assert server.wait(120) == 0, procs.output(server)
    out = procs.output(server)
    assert "Traceback" not in out
    assert all(d.poll() is None for d in devices), "a device exited"
    saved = [str(value).split("|")[0] for value in mt.results(1, limit=None)]
    assert sorted(saved) == sorted(str(i) for i in range(tasks) if i % 10)  # each once
    assert sorted(record.data for record in mt.failed(1, limit=None)) == sorted(
        str(i) for i in range(tasks) if i % 10 == 0
    )
    assert runtime.ledger().outstanding(1) == 0
    for device in devices:
        assert "Unrecoverable error" not in procs.output(device)


@pytest.mark.timeout(240)
def test_the_servers_publish_waits_out_a_full_redis(
    procs: Processes, own_redis: Callable[..., OwnRedis], caplog: pytest.LogCaptureFixture
) -> None:
    """Big tasks fill Redis as the server publishes them: it says so and waits, no traceback;
    with room again (and a device) every task is done once."""
    r = own_redis()
    r.fill_up_at(1 * MB)
    tasks = [f"{i}|{'y' * 50_000}" for i in range(60)]  # 3 MB of tasks
    thread, out = run_in_thread(tasks, channel_size=50)
    wait_until(lambda: FULL.search(caplog.text), 60, "the server to say that Redis is full")
    assert thread.is_alive()  # it waits (said once, by whichever of its threads met the limit first)
    r.client.config_set("maxmemory", 0)
    procs.start(worker_command("device1@%h", include="channel_one"), "device1")
    thread.join(120)
    assert not thread.is_alive(), "the run did not complete once Redis had room"
    summary = out["summary"]
    assert (summary.published, summary.succeeded, summary.failed) == (60, 60, 0)
    assert sorted(task for _, task in mt.results(1, limit=None)) == sorted(tasks)


def test_a_server_that_waits_longer_than_its_patience_stops_with_exit_code_7(
    own_redis: Callable[..., OwnRedis], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mutitask_celery.serving import producer, serve

    r = own_redis()
    r.client.config_set("maxmemory", 1)  # full from the start
    monkeypatch.setattr(producer, "RECONNECT_FOR", 1.0)
    with pytest.raises(SystemExit) as stopped, exit_on_unreachable():
        serve.serve(iter(["a", "b"]), channel_size=10, stdin=io.StringIO(""), out=io.StringIO())
    assert stopped.value.code == ExitCode.OUT_OF_MEMORY == 7
    assert re.search(
        r"Redis is out of memory: maxmemory 1 B reached \(policy noeviction\) for more than 1s", caplog.text
    )


def test_the_server_calls_redis_full_at_its_limit_even_when_a_small_write_fits(
    own_redis: Callable[..., OwnRedis], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the limit Redis's use flaps by its clients' buffers: the server's small probe finds
    room while devices' larger writes are refused (CI once saw a run stall with the server
    saying nothing). Within a few per cent of maxmemory the server says Redis is full; it
    says it has room again only well under the limit."""
    from mutitask_celery.serving.producer import _Full

    r = own_redis()
    full = _Full(r.client, keys.room_probe())
    monkeypatch.setattr(memory, "has_room", lambda client, probe: True)  # the probe squeezed through
    r.fill_up_at(20 * 1024)  # within 5% of about 1 MB: no room for a device's message
    full.look()
    assert FULL.search(caplog.text), caplog.text
    caplog.clear()
    r.fill_up_at(1024)  # still near: nothing more said
    full.look()
    assert caplog.text == ""
    r.client.config_set("maxmemory", 0)
    full.look()
    assert "Redis has room again" in caplog.text


def test_recording_outcomes_waits_while_redis_is_full(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit: a device's finish refused for memory waits for room (the message is kept, not
    given back)."""
    from mutitask_celery.device import tasks

    refusals = 5
    real = runtime.ledger().finish

    def finish(*args: object, **kwargs: object) -> Finished:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    runtime.ledger().publish(1, [("t1", '"a"')])
    monkeypatch.setattr(runtime.ledger(), "finish", finish)
    monkeypatch.setattr(tasks.time, "sleep", lambda _: None)
    life = tasks.DeviceLife("device1@h")  # its marks of the device's finished tasks start afresh
    done = tasks._finish(
        life, tasks.Delivery(1, "device1@h", "m1", "run1"), [Outcome("t1", ok=True, result='"A"')], 0.0
    )
    assert refusals == 0 and done.succeeded == 1


def test_a_heartbeat_is_taken_by_a_full_redis(own_redis: Callable[..., OwnRedis]) -> None:
    """A device's heartbeat must go on while Redis is full, or reapers would take the tasks of a
    device that is only waiting (lua/heard.lua writes a delete first)."""
    r = own_redis()
    runtime.devices().heard("device1@h")
    r.client.config_set("maxmemory", 1)
    with pytest.raises(redis.OutOfMemoryError):
        r.client.set("anything", "x")
    before = r.client.hget(keys.DEVICES_SEEN, "device1@h")
    wait_until(lambda: redis_now(r.client) > float(before or 0), 5, "Redis's clock to move")
    runtime.devices().heard("device1@h")
    assert r.client.hget(keys.DEVICES_SEEN, "device1@h") != before


def test_out_of_memory_is_a_named_error_with_exit_code_7() -> None:
    assert issubclass(RedisOutOfMemory, mt.MutitaskError) and ExitCode.OUT_OF_MEMORY == 7
    with pytest.raises(SystemExit) as stopped, exit_on_unreachable():
        raise redis.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert stopped.value.code == 7


# -- an evicting policy -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_an_evicting_redis_is_refused_at_start(procs: Processes, own_redis: Callable[..., OwnRedis]) -> None:
    own_redis("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    server = procs.python(SCRIPTS / "server.py", "10", name="server")
    device = procs.start(worker_command("device1@%h", include="channel_one"), "device1")
    for proc in (server, device):
        assert proc.wait(60) == ExitCode.USAGE, procs.output(proc)
        out = procs.output(proc)
        assert "evicts keys when full (maxmemory-policy allkeys-lru, maxmemory 64.0 MB)" in out
        assert "CONFIG SET maxmemory-policy noeviction" in out and "Traceback" not in out


@pytest.mark.timeout(120)
def test_an_evicting_policy_without_a_limit_is_warned_about(
    procs: Processes, own_redis: Callable[..., OwnRedis]
) -> None:
    own_redis("--maxmemory-policy", "volatile-lru")
    device = procs.start(worker_command("device1@%h", include="channel_one"), "device1")
    wait_until(device_is_up(f"device1@{HOST}"), 60, "device1 to start")
    server = procs.python(SCRIPTS / "server.py", "20", name="server")
    assert server.wait(60) == 0, procs.output(server)
    for proc in (server, device):
        assert "maxmemory-policy volatile-lru: harmless while maxmemory is 0" in procs.output(proc)
