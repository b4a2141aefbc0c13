"""Device status and control with real worker processes and a real redis-server."""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.control import Device, DeviceState
from mutitask_celery.serving import serve

HOST = socket.gethostname()
D1, D2 = f"device1@{HOST}", f"device2@{HOST}"


def status(name: str) -> Device:
    return next(d for d in mt.devices() if d.name == name)


def state_is(name: str, state: DeviceState) -> Callable[[], bool]:
    return lambda: status(name).state is state


def publish(values: list[str], channel: int = 1) -> None:
    runtime.ledger().publish(channel, [(messages.new_task_id(), codec.encode(v)) for v in values])


def test_state_transitions(procs: Processes, r: redis.Redis) -> None:
    dev = procs.device(1, 1)
    wait_until(device_is_up(D1), 30, "device1")
    wait_until(state_is(D1, DeviceState.RUNNING), 10, "device1 running")
    record = status(D1)
    assert record.channels == [1] and record.state.code == 1 and record.last_heard is not None
    assert mt.pause(1) == [D1]
    assert status(D1).state is DeviceState.PAUSED and status(D1).state.code == 0
    assert mt.start("device1") == [D1]
    assert status(D1).state is DeviceState.RUNNING
    publish(["1", "2", "3"])
    wait_until(lambda: status(D1).done == 3, 20, "three tasks done")
    assert mt.stop([D1]) == [D1]
    assert dev.wait(15) == 0
    assert status(D1).state is DeviceState.OFFLINE and status(D1).state.code == -1


@pytest.mark.parametrize("seconds, count, holds", [("0.5", 8, 1), ("0.05", 60, 2)], ids=["slow", "quick"])
def test_pause_lets_the_task_in_hand_finish_and_starts_no_other(
    procs: Processes, r: redis.Redis, seconds: str, count: int, holds: int
) -> None:
    """Quick tasks: the device holds a second message (prefetch 2), and still starts it only if not paused."""
    dev = procs.device(1, 1, "slow", env={"SLOW_SECONDS": seconds})
    wait_until(device_is_up(D1), 30, "device1")
    publish([str(i) for i in range(count)])
    wait_until(lambda: len(procs.starts(dev)) >= 5 * holds - 3, 30, "tasks to start")
    stats = mt.app.control.inspect(destination=[D1], timeout=5, limit=1).stats() or {}
    assert stats[D1]["prefetch_count"] == holds
    assert mt.pause("all") == [D1]
    paused_at = time.time()
    wait_until(lambda: status(D1).in_hand == 0, 10, "the task in hand to finish")
    started = procs.starts(dev)
    assert all(when < paused_at for _, when in started), (started, paused_at)
    # Every task started before the pause ended saved; the rest are still waiting, none lost.
    wait_until(lambda: mt.results_count(1) == len(started), 10, "the results of the tasks that ran")
    assert runtime.ledger().outstanding(1) == count - len(started)
    assert mt.start("all") == [D1]
    wait_until(lambda: mt.results_count(1) == count, 30, "the rest after start")


def test_pause_survives_a_restart(procs: Processes, r: redis.Redis) -> None:
    first = procs.device(1, 1, "tag", env={"DEVICE_TAG": "one"})
    wait_until(device_is_up(D1), 30, "device1")
    assert mt.pause(1) == [D1]
    first.send_signal(signal.SIGTERM)
    assert first.wait(15) == 0
    procs.device(1, 1, "tag", env={"DEVICE_TAG": "one"})  # the same device comes back...
    wait_until(device_is_up(D1), 30, "device1 again")
    wait_until(state_is(D1, DeviceState.PAUSED), 10, "device1 to come back paused")  # ...paused
    publish(["a", "b"])
    procs.device(2, 1, "tag", env={"DEVICE_TAG": "two"})
    wait_until(lambda: mt.results_count(1) == 2, 30, "device2 to do the work")
    assert sorted(mt.results(1)) == [["two", "a"], ["two", "b"]]
    assert mt.start(1) == [D1]
    mt.pause(2)
    publish(["c"])
    wait_until(lambda: mt.results_count(1) == 3, 30, "device1 to work after start")
    assert mt.results(1)[-1] == ["one", "c"]


def test_expected_device_that_never_came_is_offline(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1)
    wait_until(device_is_up(D1), 30, "device1")
    serve.serve(iter(["1"]), channel_size=5, stdin=io.StringIO(""), out=io.StringIO(), expected_devices=3)
    found = {d.name: d for d in mt.devices()}
    assert found[D1].state is DeviceState.RUNNING
    assert found["device2"].state is DeviceState.OFFLINE and found["device3"].state is DeviceState.OFFLINE
    assert found["device3"].last_heard is None


def test_a_killed_device_shows_offline(procs: Processes, r: redis.Redis) -> None:
    dev = procs.device(1, 1)
    wait_until(device_is_up(D1), 30, "device1")
    dev.send_signal(signal.SIGKILL)
    dev.wait(10)
    assert status(D1).state is DeviceState.OFFLINE


def test_start_paused_waits_for_start_all(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1, "echo")
    wait_until(device_is_up(D1), 30, "device1")
    read_end, write_end = os.pipe()
    result: dict[str, object] = {}
    with os.fdopen(read_end) as commands, os.fdopen(write_end, "w") as operator:
        run = threading.Thread(
            target=lambda: result.update(
                summary=serve.serve(
                    iter(["x", "y"]), channel_size=5, stdin=commands, out=io.StringIO(), start_paused=True
                )
            )
        )
        run.start()
        wait_until(lambda: r.llen(keys.queue(1)) == 2, 30, "both tasks to wait on the queue")
        assert status(D1).state is DeviceState.PAUSED and status(D1).done == 0
        operator.write("start_all\n")
        operator.flush()
        run.join(60)
    assert not run.is_alive()
    assert result["summary"].succeeded == 2  # type: ignore[attr-defined]


def test_console_on_a_terminal_controls_devices(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0.05"})
    dev2 = procs.device(2, 1, "slow", env={"SLOW_SECONDS": "0.05"})
    wait_until(device_is_up(D1), 30, "device1")
    wait_until(device_is_up(D2), 30, "device2")
    leader, follower = pty.openpty()
    server = procs.start([sys.executable, str(SCRIPTS / "server.py"), "400", "5"], "server", stdin=follower)
    os.close(follower)

    def shows(text: str) -> Callable[[], bool]:  # the server's output so far holds text
        return lambda: text in procs.output(server)

    try:
        wait_until(shows("console ready"), 30, "the console")
        os.write(leader, b"pause_one 2\n")
        wait_until(shows(f"paused: {D2}"), 30, "pause_one's answer")
        os.write(leader, b"detect_one 2\n")
        wait_until(shows(f"{D2}  0     paused"), 30, "device2 shown paused with code 0")
        os.write(leader, b"detect_all\n")
        wait_until(shows(f"{D1}  1     running"), 30, "device1 shown running with code 1")
        os.write(leader, b"help pause_one\n")
        wait_until(shows("pause_one N: device N stops taking new tasks"), 30, "help for one command")
        os.write(leader, b"pause_one x\n")
        wait_until(shows("N must be a non-negative integer"), 30, "a bad argument refused")
        os.write(leader, b"detect_fail_task_channel 1\n")
        wait_until(shows("channel 1: 0 failed task(s)"), 30, "a dead-letter command on the terminal")
        os.write(leader, b"start_one 2\n")
        wait_until(shows(f"started: {D2}"), 30, "start_one's answer")
        os.write(leader, b"stop\n")
        wait_until(shows("stopped 2 device(s)"), 60, "stop to stop the devices")
        assert server.wait(30) == 0
        assert dev2.wait(30) == 0
    finally:
        os.close(leader)
    assert "Traceback" not in procs.output(server)


def test_piped_console_commands(procs: Processes, r: redis.Redis, tmp_path: object) -> None:
    procs.device(1, 1)
    wait_until(device_is_up(D1), 30, "device1")
    server = procs.python(SCRIPTS / "server.py", "20", name="server", stdin=subprocess.PIPE)
    assert server.stdin is not None
    server.stdin.write(b"add_device\ndetect_all\nfoo bar\n")
    server.stdin.close()
    assert server.wait(60) == 0
    out = procs.output(server)
    assert "expecting 3 device(s)" in out and f"{D1}  1     running" in out
    assert "device3" in out and "unknown command 'foo'" in out
    assert "channel 1: published 20" in out


def test_cli_status_pause_start_stop(procs: Processes, r: redis.Redis, redis_url: str) -> None:
    dev = procs.device(1, 1)
    wait_until(device_is_up(D1), 30, "device1")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mutitask_celery", *args], capture_output=True, text=True, timeout=60, check=False
        )

    (row,) = json.loads(cli("status", "--json").stdout)["devices"]
    assert row["name"] == D1 and row["state"] == "running" and row["code"] == 1
    assert cli("pause", "device1").stdout.strip() == f"paused: {D1}"
    assert "paused" in cli("status").stdout
    assert json.loads(cli("start", "--all", "--json").stdout) == {"started": [D1]}
    assert cli("pause").returncode == 2
    assert cli("stop", "1").returncode == 0
    assert dev.wait(15) == 0
    assert cli("pause", "device9").returncode == 1  # nobody answered


def consuming(name: str) -> list[str]:
    queues = mt.app.control.inspect(destination=[name], timeout=2, limit=1).active_queues() or {}
    return [q["name"] for q in queues.get(name, [])]


def test_a_wish_written_while_the_device_was_out_of_reach_is_picked_up(procs: Processes, r: redis.Redis) -> None:
    """No remote control reached the device (only Redis changed): its heartbeat finds the
    wish within seconds, and it stops (or resumes) consuming instead of handing messages back."""
    procs.device(1, 1)
    wait_until(device_is_up(D1), 30, "device1")
    assert consuming(D1) == ["channel1"]
    devices = runtime.devices()
    devices._want([D1], DeviceState.PAUSED)  # as a pause whose control message never arrived
    wait_until(lambda: consuming(D1) == [], 15, "device1 to stop consuming")
    publish(["1", "2"])
    assert status(D1).state is DeviceState.PAUSED
    devices._want([D1], DeviceState.RUNNING)
    wait_until(lambda: consuming(D1) == ["channel1"], 15, "device1 to consume again")
    wait_until(lambda: mt.results_count(1) == 2, 20, "the two tasks after the resume")
