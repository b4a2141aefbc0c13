"""Exactly once when many things happen at once, with real devices, real SIGKILLs and every pool.

Each test rebuilds one of the scenarios of the issue "Exactly once under concurrency and scale":
a killed device among six reapers, a poison task beside innocent ones on a device of several
slots, a poison task on the prefork, solo and threads pools, a live device busy on the CPU next
to thousands of stale names, a reload while its tasks fail again, a warm shutdown that leaves
no stale note, and a celeryconfig.py that would break the promises.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from helpers.paths import ROOT, SCRIPTS
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.settings import fresh_settings
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime, settings
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
FAST = {"MUTITASK_DEAD_AFTER": "3"}  # a silent device is dead after 3 s (default 10)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[None]:
    """This process (the server thread) and the devices: dead after 3 s."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "3")
    fresh_settings()
    yield
    settings.forget()


def celery_device(
    procs: Processes,
    n: int,
    module: str,
    pool: str | None,
    concurrency: int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``celery -A mutitask_celery worker`` as device ``n`` (Celery's default pool when ``pool`` is None)."""
    args = worker_command(f"device{n}@%h", include=module, pool=pool, concurrency=concurrency)
    return procs.start(args, f"celery-device{n}-{pool or 'default'}", env=env, cwd=cwd)


def supervised(start: Callable[[], subprocess.Popen[bytes]], done: Callable[[], bool], timeout: float) -> int:
    """Run a device as systemd would (restart it whenever it dies) until ``done()``; returns restarts."""
    device = start()
    restarts = 0
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the run did not complete"
        if device.poll() is not None:
            restarts += 1
            device = start()
        time.sleep(0.1)  # polling a child process: there is nothing to block on
    return restarts


def outcomes(n: int) -> Callable[[], bool]:
    """Every one of ``n`` tasks of channel 1 has its outcome (saved or dead-lettered)."""
    return lambda: mt.results_count(1) + mt.failed_count(1) >= n


def test_a_killed_device_is_charged_only_what_it_was_running(
    procs: Processes, r: redis.Redis, fast: None, tmp_path: Path
) -> None:
    """device1 runs one long task and holds eight more when it is SIGKILLed; five live devices
    reap it at once. With MAX_ATTEMPTS=1, the running task dies once and is dead-lettered (it
    was running alone); a charge to any held message, or a death counted twice, would bury
    more."""
    (tmp_path / "celeryconfig.py").write_text("worker_prefetch_multiplier = 9\n")
    env = {**FAST, "MUTITASK_MAX_ATTEMPTS": "1", "PYTHONPATH": f"{tmp_path}:{ROOT}:{SCRIPTS}"}
    victim = celery_device(procs, 1, "poison_tasks", "threads", 1, env=env, cwd=tmp_path)
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1")
    runtime.ledger().publish(1, [("long", codec.encode("long"))])
    runtime.ledger().publish(1, [(f"s{n}", codec.encode(f"s{n}")) for n in range(8)])
    wait_until(lambda: r.hlen(keys.inhand(f"device1@{HOST}")) == 9, 30, "device1 to hold all nine")
    assert r.hget(keys.started(1), "long") is not None and r.hlen(keys.started(1)) == 1
    for n in range(2, 7):
        procs.device(n, 1, "slow", env={**env, "SLOW_SECONDS": "0.05"})
    wait_until(lambda: all(device_is_up(f"device{n}@{HOST}")() for n in range(2, 7)), 60, "five devices")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(outcomes(9), 60, "every outcome")
    (record,) = mt.failed(1)
    assert record.data == "long" and record.reason == "worker lost: the device died while running it, 1 time(s)"
    assert sorted(mt.results(1)) == [f"s{n}" for n in range(8)]
    stats = runtime.ledger().stats(1)
    assert (stats.succeeded, stats.failed, stats.duplicates) == (8, 1, 0)


def test_a_poison_task_beside_innocent_ones_is_the_only_one_buried(
    procs: Processes, r: redis.Redis, fast: None
) -> None:
    """A device of three slots runs the poison beside two innocent tasks and holds more; a
    supervisor restarts it whenever the poison kills it."""
    innocent = [f"i{n}" for n in range(12)]
    tasks = [*innocent[:2], "poison", *innocent[2:]]  # the device takes two innocent ones first
    thread, out = run_in_thread(tasks, channel_size=20)
    env = {**FAST, "TASK_SECONDS": "0.5"}
    restarts = supervised(
        lambda: procs.device(1, 1, "poison", "--concurrency", "3", env=env), lambda: not thread.is_alive(), 180
    )
    summary = out["summary"]
    assert (summary.published, summary.succeeded, summary.failed) == (13, 12, 1)
    (record,) = mt.failed(1)
    assert record.data == "poison" and record.reason.startswith("worker lost")
    assert sorted(mt.results(1)) == sorted(innocent)
    assert 3 <= restarts <= 4  # three deaths, the last ones alone (one more if the first was beside others)


@pytest.mark.parametrize(
    "pool,concurrency", [(None, 2), ("solo", 1), ("threads", 2)], ids=["prefork-default", "solo", "threads"]
)
def test_a_poison_task_in_a_batch_is_buried_on_every_pool(
    procs: Processes, r: redis.Redis, fast: None, pool: str | None, concurrency: int
) -> None:
    """``celery -A mutitask_celery worker`` (Celery's default pool is prefork: a poison task kills
    a pool child, not the device) and the solo and threads pools; the poison travels in a
    message of four tasks, as short tasks do."""
    items = [(f"id-{name}", codec.encode(name)) for name in ("a", "b", "poison", "c")]
    runtime.ledger().publish(1, items, batch=4)
    runtime.ledger().publish(1, [(f"id-{name}", codec.encode(name)) for name in ("d", "e")])
    restarts = supervised(
        lambda: celery_device(procs, 1, "poison_tasks", pool, concurrency, env=FAST), outcomes(6), 180
    )
    (record,) = mt.failed(1)
    assert record.data == "poison" and record.reason.startswith("worker lost")
    assert sorted(mt.results(1)) == ["a", "b", "c", "d", "e"]
    assert runtime.ledger().outstanding(1) == 0
    stats = runtime.ledger().stats(1)
    assert (stats.succeeded, stats.failed) == (5, 1)
    if pool is None:
        assert restarts == 0  # the device itself never died: only its pool children did


def test_a_live_device_busy_on_the_cpu_is_never_taken_for_dead(procs: Processes, r: redis.Redis, fast: None) -> None:
    """Thousands of names that will never beat again sit in the roster (container hostnames
    change at every restart); a live device runs a CPU-bound task for 12 s, three times the
    dead_after of 3 s, while another device reaps."""
    stale = {f"device{n}@gone-{n}": "1000000000.000000" for n in range(3000)}
    r.hset(keys.DEVICES_SEEN, mapping=stale)
    r.hset(keys.DEVICES_INFO, mapping={name: json.dumps({"channels": [1]}) for name in stale})
    busy = procs.device(1, 1, "busy", env={**FAST, "BUSY_SECONDS": "12"})
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1")
    runtime.ledger().publish(1, [("crunch", codec.encode("crunch"))])
    wait_until(lambda: r.hget(keys.started(1), "crunch") is not None, 30, "device1 to start the task")
    other = procs.device(2, 1, "slow", env={**FAST, "SLOW_SECONDS": "0"})
    wait_until(outcomes(1), 60, "the task's outcome")
    assert mt.results(1) == ["crunch"]
    stats = runtime.ledger().stats(1)
    assert stats.duplicates == 0 and r.hget(keys.lost(1), "crunch") is None
    assert "silent for" not in procs.output(other)
    assert busy.poll() is None
    # The stale names cost the reapers nothing: none of them is in the set the reapers scan.
    assert r.zcard(keys.DEVICES_BEATS) == 2


def test_a_reload_moves_what_was_there_and_ends(procs: Processes, r: redis.Redis, fast: None) -> None:
    """Every task fails again as soon as it is reloaded; the reload still moves each record once."""
    count = 2000  # several pages of the reload (500 records a page)
    runtime.ledger().publish(1, [(f"t{n}", codec.encode(n)) for n in range(count)], batch=100)
    procs.device(1, 1, "failing", env=FAST)
    wait_until(lambda: mt.failed_count(1) == count, 60, "every task to fail once")
    moved: list[int] = []
    reload = threading.Thread(target=lambda: moved.append(mt.reload_failed(channel=1)))
    reload.start()
    reload.join(60)
    assert not reload.is_alive() and moved == [count]
    wait_until(
        lambda: mt.failed_count(1) == count and runtime.ledger().outstanding(1) == 0, 60, "every task to fail again"
    )
    assert {record.failures for record in mt.failed(1, limit=None)} == {2}


def test_a_warm_shutdown_leaves_no_stale_note(procs: Processes, r: redis.Redis, fast: None, tmp_path: Path) -> None:
    """device1 holds a second message when it is told to stop: kombu puts it back with its
    delivery tag, device1 forgets it, device2 runs it, and device1 restarting under its name
    takes nothing from device2."""
    (tmp_path / "celeryconfig.py").write_text("worker_prefetch_multiplier = 2\n")
    env = {**FAST, "PYTHONPATH": f"{tmp_path}:{ROOT}:{SCRIPTS}", "TASK_SECONDS": "2"}
    first = celery_device(procs, 1, "poison_tasks", "threads", 1, env=env, cwd=tmp_path)
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1")
    runtime.ledger().publish(1, [("T", codec.encode("T")), ("M", codec.encode("M"))])
    name = f"device1@{HOST}"
    wait_until(lambda: r.hlen(keys.inhand(name)) == 2, 30, "device1 to hold both messages")
    first.send_signal(signal.SIGTERM)  # warm shutdown: T finishes, M goes back
    assert first.wait(30) == 0
    assert r.hlen(keys.inhand(name)) == 0
    celery_device(procs, 2, "poison_tasks", "threads", 1, env=env, cwd=tmp_path)
    wait_until(lambda: r.hget(keys.started(1), "M") is not None, 30, "device2 to start M")
    celery_device(procs, 1, "poison_tasks", "threads", 1, env=env, cwd=tmp_path)  # device1 again
    wait_until(device_is_up(name), 30, "device1 again")
    wait_until(outcomes(2), 30, "both outcomes")
    assert sorted(mt.results(1)) == ["M", "T"]
    assert runtime.ledger().stats(1).duplicates == 0 and r.hlen(keys.lost(1)) == 0


@pytest.mark.parametrize(
    "config,complaint",
    [
        ("task_acks_late = False\n", "task_acks_late is off"),
        ("broker_transport_options = {'global_keyprefix': 'app1:'}\n", "global_keyprefix"),
    ],
)
def test_a_celeryconfig_that_breaks_the_promises_is_refused(
    procs: Processes, r: redis.Redis, tmp_path: Path, config: str, complaint: str
) -> None:
    (tmp_path / "celeryconfig.py").write_text(config)
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}:{SCRIPTS}"}
    device = celery_device(procs, 1, "channel_one", "threads", 1, env=env, cwd=tmp_path)
    assert device.wait(60) == 2
    assert complaint in procs.output(device)
    server = procs.python(SCRIPTS / "server.py", "3", name="server", env=env, cwd=tmp_path)
    assert server.wait(60) == 2
    out = procs.output(server)
    assert complaint in out and "Traceback" not in out
    assert r.hlen(keys.pending(1)) == 0  # refused before a task was published


def test_reloaded_tasks_go_back_through_back_pressure(procs: Processes, r: redis.Redis, fast: None) -> None:
    """A big reload, no server running: the tasks wait in the channel's backlog, and the
    devices feed them in as they make room; the channel never holds more than its size."""
    sys.path.insert(0, str(ROOT / "bench"))
    from fill import fill_dead_letters

    count, size = 3000, 40
    runtime.ledger().channel_sizes({1: size})
    ids = set(fill_dead_letters(count))
    assert mt.reload_failed(channel=1) == count and mt.failed_count() == 0
    assert r.zcard(keys.backlog(1)) + len(r.lrange(keys.queue(1), 0, -1)) >= count - size
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            pipe = r.pipeline(transaction=True)
            pipe.hlen(keys.pending(1)).get(keys.held(1)).zcard(keys.backlog(1))
            outstanding, held, backlog = pipe.execute()
            seen.append(int(outstanding) - int(held or 0) - int(backlog))
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for n in (1, 2):
            procs.device(n, 1, "echo", env=FAST)
        wait_until(lambda: mt.results_count(1) == count, 120, "every reloaded task's result")
    finally:
        done.set()
        watcher.join()
    assert max(seen) <= size and r.zcard(keys.backlog(1)) == 0 and runtime.ledger().outstanding(1) == 0
    assert {task for _, task in mt.results(1, limit=None)} == {f"task {n}" for n in range(count)}
    assert len(ids) == count
