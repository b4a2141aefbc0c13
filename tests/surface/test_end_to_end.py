"""Server and devices as real processes against a real redis-server, each test on
both brokers: the books' Redis and RabbitMQ (the ``broker`` fixture: ``[redis]``,
``[amqp]``)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.runs import expected_double, poison_run, run_in_thread, run_with_a_device_killed
from helpers.services import Broker
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.books.transports.kombu_broker import KombuBroker
from mutitask_celery.control import DeviceState
from mutitask_celery.serving import serve
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
FAST = {"MUTITASK_DEAD_AFTER": "3"}  # Redis broker: a silent device is dead after 3 s (default 10)

pytestmark = pytest.mark.usefixtures("broker")  # every test: [redis] and [amqp]


def summary_of(procs: Processes, server: subprocess.Popen[bytes]) -> dict[str, dict[str, int]]:
    line = [x for x in procs.output(server).splitlines() if x.startswith("SUMMARY ")][-1]
    return json.loads(line[len("SUMMARY ") :])


def test_legacy_scripts_run_every_task_once(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1)
    procs.device(2, 1)
    server = procs.python(SCRIPTS / "server.py", "300", "20", name="server")
    assert server.wait(120) == 0, procs.output(server)
    bad = sum(1 for n in range(300) if expected_double(n))
    assert f"channel 1: published 300, succeeded {300 - bad}, failed {bad}" in procs.output(server)
    summary = summary_of(procs, server)["1"]
    assert (summary["published"], summary["succeeded"], summary["failed"]) == (300, 300 - bad, bad)
    assert sorted(mt.results(1)) == sorted(n * 2 for n in range(300) if not expected_double(n))
    failed = {int(f.data): f for f in mt.failed(1)}
    assert set(failed) == {n for n in range(300) if expected_double(n)}
    for n, record in failed.items():
        assert record.reason == expected_double(n)
        assert record.device in (f"device1@{HOST}", f"device2@{HOST}")
        assert (record.traceback != "") == record.reason.startswith("ValueError")
        assert time.time() - 120 < record.last_failed <= time.time()
    assert runtime.ledger().outstanding(1) == 0


def waiting(r: redis.Redis, channel: int) -> int:
    """Tasks waiting in the channel: published, not yet taken by a device (what ChannelSize bounds)."""
    pipe = r.pipeline(transaction=True)
    pipe.hlen(keys.pending(channel))
    pipe.get(keys.held(channel))
    outstanding, held = pipe.execute()
    return int(outstanding) - int(held or 0)


def test_back_pressure_never_exceeds_channel_size(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0.01"})
    procs.device(2, 1, "slow", env={"SLOW_SECONDS": "0.01"})
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:  # samples the channel while the run goes on
        while not done.is_set():
            seen.append(waiting(r, 1))
            done.wait(0.002)

    def generator():  # ...and each time the generator is pulled
        for i in range(200):
            seen.append(waiting(r, 1))
            yield str(i + 1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        summary = serve.serve(generator(), channel_size=7, stdin=io.StringIO(""), out=io.StringIO())
    finally:
        done.set()
        watcher.join()
    assert summary.published == 200 and summary.succeeded + summary.failed == 200
    assert max(seen) <= 7  # never more than ChannelSize tasks waiting in the channel
    assert runtime.ledger().outstanding(1) == 0 and int(r.get(keys.held(1)) or 0) == 0


def test_two_channels_each_with_its_devices(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1)
    procs.device(2, 2, "echo")
    server = procs.python(SCRIPTS / "server.py", "40", "10", "2", name="server")
    assert server.wait(120) == 0, procs.output(server)
    summary = summary_of(procs, server)
    assert summary["1"]["published"] == summary["2"]["published"] == 40
    assert summary["2"]["succeeded"] == 40
    assert sorted(int(task) for _, task in mt.results(2)) == list(range(1000, 1040))


def test_text_and_native_task_formats(procs: Processes, r: redis.Redis) -> None:
    import numpy as np

    values = ["plain str", 7, (1, "a"), {"k": [1.5]}, np.array([[1, 2], [3, 4]], dtype=np.uint8)]
    procs.device(1, 1, "echo")
    serve.serve(iter(values), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    got = sorted(mt.results(1))
    assert ["str", "plain str"] in got
    assert ["str", "7"] in got and ["str", "(1, 'a')"] in got and ["str", "{'k': [1.5]}"] in got
    assert ["str", "[[1, 2], [3, 4]]"] in got  # numpy arrays as nested lists, as eval() expects

    procs.device(2, 2, "echo", "--native")
    mt.clear_results(1)
    serve.serve([iter([]), iter(values)], channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    kinds = sorted(kind for kind, _ in mt.results(2))
    assert kinds == sorted(["str", "int", "tuple", "dict", "ndarray"])


def test_failed_tasks_reload_and_then_succeed(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    flag = tmp_path / "now-it-works"
    procs.device(1, 1, "flaky", env={"FLAKY_FLAG": str(flag)})
    summary = serve.serve(iter(["a", "b", "c"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.failed == 3 and mt.failed_count(1) == 3
    assert {f.reason for f in mt.failed(1)} == {"returned None"}
    flag.touch()
    assert mt.reload_failed() == 3
    wait_until(lambda: mt.results_count(1) == 3, 30, "reloaded tasks to succeed")
    assert sorted(mt.results(1)) == ["a", "b", "c"] and mt.failed_count() == 0
    assert runtime.ledger().outstanding(1) == 0


def test_save_function_failure_keeps_the_result(procs: Processes, r: redis.Redis) -> None:
    dev = procs.device(1, 1, "badsave")
    serve.serve(iter(["16", "17", "27"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    failed = {f.data: f for f in mt.failed(1)}
    assert set(failed) == {"17", "27"}
    assert failed["17"].reason == "save function failed: OSError: disk full for 17"
    assert failed["17"].result == "17" and "OSError" in failed["17"].traceback
    wait_until(lambda: "saved 16" in procs.output(dev), 10, "the device's print to reach its output")


def test_celery_worker_command_is_a_device_beside_a_legacy_one(procs: Processes, r: redis.Redis) -> None:
    celery = worker_command("device3@%h", include="channel_one")
    procs.start(celery, "celery-device3", env={"DEVICE_TAG": "celery"})
    procs.device(1, 1, "tag", env={"DEVICE_TAG": "legacy"})
    wait_until(device_is_up(f"device3@{HOST}"), 30, "device3 (celery worker) to answer")
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1 (legacy script) to answer")
    summary = serve.serve((str(i) for i in range(120)), channel_size=4, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.succeeded == 120
    results = mt.results(1)
    assert sorted(int(t) for _, t in results) == list(range(120))
    assert {tag for tag, _ in results} == {"celery", "legacy"}


def test_celeryconfig_imports_make_a_celery_worker_a_device(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text('imports = ["channel_one"]\n')
    celery = worker_command("device5@%h")
    procs.start(celery, "celery-device5", env={"DEVICE_TAG": "from-config"}, cwd=tmp_path)
    summary = serve.serve(iter(["a", "b"]), channel_size=2, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.succeeded == 2
    assert sorted(mt.results(1)) == [["from-config", "a"], ["from-config", "b"]]


def test_message_for_a_channel_without_function_is_dead_lettered(procs: Processes, r: redis.Redis) -> None:
    celery = worker_command("device4@%h", queues="channel2")
    procs.start(celery, "celery-device4")
    summary = serve.serve([iter([]), iter(["x"])], channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.channels[2].failed == 1
    (record,) = mt.failed(2)
    assert record.reason == f"no task function registered for channel 2 on device4@{HOST}"
    assert record.data == "x"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_task_in_hand_then_exits(
    sig: signal.Signals, procs: Processes, r: redis.Redis, broker: Broker
) -> None:
    dev = procs.device(1, 1, "slow", env={"SLOW_SECONDS": "2"})
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1 to answer")
    runtime.ledger().publish(1, [("t1", '"in hand"'), ("t2", '"next"')])
    wait_until(lambda: len(procs.starts(dev)) == 1, 10, "the device to start the first task")
    os.kill(dev.pid, sig)
    started = time.monotonic()
    assert dev.wait(15) == 0
    assert time.monotonic() - started < 10
    assert mt.results(1) == ["in hand"]  # the task in hand finished and was saved
    assert runtime.ledger().outstanding(1) == 1  # the other is still outstanding, not lost
    assert broker.queued(keys.queue(1)) == 1


def test_server_script_exits_zero_with_piped_commands(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    procs.device(1, 1)
    commands = tmp_path / "commands.txt"
    commands.write_text("help\nnot_a_command\nreset_task_max 3\n")
    with open(commands, "rb") as stdin:
        server = procs.python(SCRIPTS / "server.py", "30", name="server", stdin=stdin)
        assert server.wait(120) == 0
    out = procs.output(server)
    assert "unknown command 'not_a_command'" in out
    assert "channel 1: published 30, succeeded" in out
    assert "Traceback" not in out


def test_unserializable_item_is_dead_lettered_and_the_run_goes_on(
    procs: Processes, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    procs.device(1, 1, "echo")
    marker = object()
    summary = serve.serve(iter(["a", marker, "b"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert (summary.published, summary.succeeded, summary.failed) == (2, 2, 1)
    (record,) = mt.failed(1)
    assert record.reason.startswith("unserializable") and record.data == repr(marker)
    assert record.device == "server"
    assert "channel 1 item 1 cannot be sent" in caplog.text


def test_generator_that_raises_midway(procs: Processes, r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    procs.device(1, 1, "echo")

    def tasks():  # type: ignore[no-untyped-def]
        yield "a"
        yield "b"
        raise OSError("disk gone")

    summary = serve.serve(tasks(), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert (summary.published, summary.succeeded) == (2, 2)
    assert "the task generator of channel 1 raised at item 2" in caplog.text and "disk gone" in caplog.text


def test_retries_on_a_real_device(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1, "shaky", "--retries", "2")
    procs.device(2, 2, "shaky", "--retries", "1")
    summary = serve.serve([iter(["a", "b"]), iter(["c"])], channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert sorted(mt.results(1)) == [["a", 3], ["b", 3]]  # third try succeeded
    assert summary.channels[2].failed == 1  # one retry was not enough
    (record,) = mt.failed(2)
    assert record.reason == "ConnectionError: try 2 of c failed (after 1 retry)"


def start_times(procs: Processes, dev: subprocess.Popen[bytes]) -> list[float]:
    return [float(line.split()[2]) for line in procs.output(dev).splitlines() if line.startswith("START ")]


def test_a_device_killed_mid_task_loses_nothing(
    procs: Processes, r: redis.Redis, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL while a task runs: RabbitMQ hands the message to another device at once (the
    connection dropped), on Redis the reaper does after MUTITASK_DEAD_AFTER; either way every
    task ends exactly once in the books."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "3")  # this process's reaper (Redis broker)
    count = 300
    out = run_with_a_device_killed(procs, count, env=FAST)
    summary = out["summary"]
    good = [n * 2 for n in range(count) if not expected_double(n)]
    assert sorted(mt.results(1)) == good  # every success saved exactly once
    assert sorted(int(f.data) for f in mt.failed(1)) == [n for n in range(count) if expected_double(n)]
    assert (summary.published, summary.succeeded, summary.failed) == (count, len(good), count - len(good))
    assert summary.channels[1].duplicates == 0 and runtime.ledger().outstanding(1) == 0


def test_pause_holds_the_run_and_start_resumes_it(procs: Processes, r: redis.Redis, broker: Broker) -> None:
    name = f"device1@{HOST}"
    dev = procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0.2"})
    wait_until(device_is_up(name), 30, "device1")
    thread, out = run_in_thread([str(n) for n in range(15)], channel_size=5)
    wait_until(lambda: len(procs.starts(dev)) >= 2, 30, "two tasks to start")
    assert mt.pause("all") == [name]
    paused_at = time.time()

    def idle() -> bool:
        (device,) = [d for d in mt.devices() if d.name == name]
        return device.state is DeviceState.PAUSED and device.in_hand == 0

    wait_until(idle, 10, "the task in hand to finish")
    started = start_times(procs, dev)
    assert all(when < paused_at for when in started), (started, paused_at)
    wait_until(lambda: mt.results_count(1) == len(started), 10, "the results of the tasks that ran")
    assert runtime.ledger().outstanding(1) > 0 and broker.queued(keys.queue(1)) > 0  # waiting, not lost
    assert thread.is_alive()
    resumed_at = time.time()
    assert mt.start("all") == [name]
    thread.join(60)
    assert not thread.is_alive(), "the run did not complete after start"
    assert out["summary"].succeeded == 15 and sorted(mt.results(1), key=int) == [str(n) for n in range(15)]
    assert not [when for when in start_times(procs, dev) if paused_at <= when < resumed_at]  # none while paused
    assert mt.stop("all") == [name]  # and a warm shutdown through remote control ends the device
    assert dev.wait(15) == 0


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)  # the Redis broker's: faults/test_faults.py
def test_poison_task_is_dead_lettered_after_three_deaths(procs: Processes, r: redis.Redis, broker: Broker) -> None:
    """RabbitMQ redelivers a killed device's message by itself; the devices count those
    redeliveries, so a task that kills every device running it is dead-lettered all the same."""
    run = poison_run(procs)
    assert run.deaths == 3
    assert (run.summary.published, run.summary.succeeded, run.summary.failed) == (4, 3, 1)
    (record,) = mt.failed(1)
    assert record.data == "poison" and record.reason.startswith("worker lost")
    assert sorted(mt.results(1)) == ["a", "b", "c"]
    assert r.hlen(keys.lost(1)) == 0 and r.hlen(keys.started(1)) == 0


class Died(BaseException):
    """The reloading process dies (as under SIGKILL) between the move and the publish."""


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)  # on Redis the move and the push are one script
def test_a_reload_that_dies_before_publishing_is_published_by_the_next_run(
    procs: Processes, r: redis.Redis, broker: Broker, tmp_path: Path
) -> None:
    flag = tmp_path / "now-it-works"
    procs.device(1, 1, "flaky", env={"FLAKY_FLAG": str(flag)})
    assert serve.serve(iter(["a", "b", "c"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO()).failed == 3
    other = runtime.transport()
    assert isinstance(other, KombuBroker)
    publisher = other.publisher

    def dies(*args: Any, **kwargs: Any) -> None:
        raise Died

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Died):
        patch.setattr(publisher, "send", dies)
        mt.reload_failed()
    journal = [str(task_id) for task_id in r.zrange(keys.unsent(1), 0, -1)]
    assert mt.failed_count() == 0 and runtime.ledger().outstanding(1) == 3 and len(journal) == 3
    assert broker.queued(keys.queue(1)) == 0  # moved out of the store, never published: only the journal has them
    r.zadd(keys.unsent(1), dict.fromkeys(journal, 0), xx=True)  # as if the reload died long ago
    flag.touch()
    summary = serve.serve(iter([]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.succeeded == 3 and sorted(mt.results(1)) == ["a", "b", "c"]
    assert r.zcard(keys.unsent(1)) == 0 and runtime.ledger().outstanding(1) == 0
