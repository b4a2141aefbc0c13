"""The backlog an autoscaler reads, in tasks, against a real run: a server run in a thread, real
legacy device scripts, ``mutitask web`` as a process and ``mutitask`` as a command.

While the run goes on, ``GET /api/scaler`` says the outstanding count at some instant between two
readings of the books taken around it (so within what moved meanwhile, about a message's tasks),
and that count is published minus finished. With every device paused nothing moves: the web API,
``/metrics`` and ``mutitask status --json`` then say exactly the tasks not finished, all alike.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.waits import device_is_up, wait_until
from prometheus_client.parser import text_string_to_metric_families

import mutitask_celery as mt
from mutitask_celery import runtime, settings
from mutitask_celery.connection import redis_now
from mutitask_celery.control import DeviceState, Ending
from mutitask_celery.tools.localredis import free_port
from mutitask_celery.web import scaler

HOST = socket.gethostname()
D1, D2 = f"device1@{HOST}", f"device2@{HOST}"
USER, PASSWORD = "keda", "scaler-test-password"
CHANNEL_SIZE = 10
SLOW = {"SLOW_SECONDS": "0.2"}  # a task's time: the run lasts while the test reads it


@dataclass(frozen=True)
class Instant:
    """Channel 1's books at one instant (one MULTI: nothing changes between its reads)."""

    outstanding: int
    published: int
    finished: int  # succeeded and failed
    held: int
    started: int  # messages a device is running

    @property
    def not_finished(self) -> int:
        return self.published - self.finished


def books_now(r: redis.Redis) -> Instant:
    names = runtime.keys()
    pipe = r.pipeline(transaction=True)
    pipe.hlen(names.pending(1))
    pipe.hmget(names.stats(1), "published", "succeeded", "failed")
    pipe.get(names.held(1))
    pipe.hlen(names.started(1))
    outstanding, (published, succeeded, failed), held, started = pipe.execute()
    counts = [int(n or 0) for n in (published, succeeded, failed)]
    return Instant(outstanding, counts[0], counts[1] + counts[2], int(held or 0), started)


def assert_between(figure: int, before: Instant, after: Instant) -> None:
    """``figure`` is the outstanding count at some instant between ``before`` and ``after``: no lower
    than ``before``'s less what finished meanwhile, no higher than it plus what was published."""
    low = before.outstanding - (after.finished - before.finished)
    high = before.outstanding + (after.published - before.published)
    assert low <= figure <= high, (figure, before, after)


@dataclass
class Web:
    url: str
    session: requests.Session

    def scaler(self) -> dict[str, Any]:
        reply = self.session.get(self.url + "/api/scaler", timeout=30)
        assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("application/json")
        figures: dict[str, Any] = reply.json()
        return figures

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.session.get(self.url + "/metrics", timeout=30).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
def web(procs: Processes, r: redis.Redis) -> Web:
    port = free_port()
    env = {"MUTITASK_WEB_USER": USER, "MUTITASK_WEB_PASSWORD": PASSWORD}
    proc = procs.start([sys.executable, "-m", "mutitask_celery", "web", "--port", str(port)], "web", env=env)
    wait_until(lambda: "mutitask web: " in procs.output(proc) or proc.poll() is not None, 30, "mutitask web")
    assert proc.poll() is None, procs.output(proc)
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return Web(f"http://127.0.0.1:{port}", session)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mutitask_celery", *args], capture_output=True, text=True, timeout=120, check=False
    )


def status_scaler() -> dict[str, Any]:
    done = cli("status", "--json")
    assert done.returncode == 0, done.stderr
    figures: dict[str, Any] = json.loads(done.stdout)["scaler"]
    return figures


def two_slow_devices(procs: Processes) -> None:
    for n in (1, 2):
        procs.device(n, 1, "slow", env=SLOW)
    for name in (D1, D2):
        wait_until(device_is_up(name), 30, name)


def test_devices_are_counted_from_the_books_alone(r: redis.Redis) -> None:
    """What each device wrote decides its state: no remote control is asked (none of these
    devices runs), so a poll costs the same with a hundred devices gone."""
    devices = runtime.devices()
    for n, channels in ((1, [1]), (2, [1, 2]), (3, [2]), (4, [1]), (5, [2])):
        devices.register(f"device{n}@h", channels, "h", 1000 + n)
    devices.pause(["device2"])  # none answers: the wish is kept, and read
    devices.ending("device3@h", Ending.STOPPING)
    devices.ending("device4@h", Ending.STOPPED)
    r.hset(runtime.keys().devices_seen, "device5@h", redis_now(r) - settings.current().dead_after - 1)
    devices.set_expected(6)
    states = {p.name: p.state for p in devices.presence()}
    assert states == {
        "device1@h": DeviceState.RUNNING,
        "device2@h": DeviceState.PAUSED,
        "device3@h": DeviceState.STOPPING,
        "device4@h": DeviceState.OFFLINE,  # said it ended
        "device5@h": DeviceState.OFFLINE,  # silent for dead_after
        "device6": DeviceState.OFFLINE,  # expected, never came
    }
    assert scaler.figures().as_dict() == {
        "backlog": 0,
        "devices": 3,
        "channels": {"1": {"backlog": 0, "devices": 2}, "2": {"backlog": 0, "devices": 2}},
    }


def test_while_a_run_goes_on_the_backlog_is_the_books_outstanding_count(
    web: Web, procs: Processes, r: redis.Redis
) -> None:
    assert requests.get(web.url + "/api/scaler", timeout=30).status_code == 401  # the same login as all
    two_slow_devices(procs)
    tasks = 100
    thread, out = run_in_thread([str(n) for n in range(tasks)], channel_size=CHANNEL_SIZE)
    wait_until(lambda: mt.results_count(1) >= 4, 60, "the run to be under way")

    assert books_now(r).published < tasks  # the generator has more: the readings below are mid-run
    for n in range(5):  # spread over the run: a reading every few tasks finished
        wait_until(lambda n=n: mt.results_count(1) >= 4 + 6 * n, 60, "the run to go on")
        before = books_now(r)
        figures = web.scaler()
        after = books_now(r)
        assert before.outstanding == before.not_finished and after.outstanding == after.not_finished
        assert_between(figures["backlog"], before, after)
        assert abs(figures["backlog"] - before.outstanding) <= CHANNEL_SIZE  # a message at most here
        assert figures["channels"]["1"]["backlog"] == figures["backlog"]  # one channel
        assert figures["devices"] == figures["channels"]["1"]["devices"] == 2
    before = books_now(r)
    scraped = web.metrics()
    after = books_now(r)
    backlog = scraped[("mutitask_backlog_tasks", (("channel", "1"),))]
    assert_between(int(backlog), before, after)
    assert backlog == scraped[("mutitask_outstanding", (("channel", "1"),))]  # the same books read
    before = books_now(r)
    figures = status_scaler()
    after = books_now(r)
    assert_between(figures["backlog"], before, after)

    thread.join(120)
    assert not thread.is_alive(), "the run did not complete"
    assert out["summary"].published == tasks
    assert web.scaler()["backlog"] == 0 == status_scaler()["backlog"]


def still(r: redis.Redis, tasks: int) -> bool:
    """Nothing moves on channel 1: no task in a device's hands, none running, and the server
    published all it may (the channel full, or the generator done)."""
    now = books_now(r)
    waiting = now.outstanding - now.held
    return now.held == 0 and now.started == 0 and (waiting >= CHANNEL_SIZE or now.published == tasks)


def test_with_the_devices_paused_every_reader_says_exactly_the_tasks_not_finished(
    web: Web, procs: Processes, r: redis.Redis
) -> None:
    two_slow_devices(procs)
    tasks = 60
    thread, out = run_in_thread([str(n) for n in range(tasks)], channel_size=CHANNEL_SIZE)
    wait_until(lambda: mt.results_count(1) >= 4, 60, "the run to be under way")
    runtime.store().add_unpublishable(2, "not JSON-able", "test")  # channel 2: known, nothing to do
    paused = cli("pause", "--all", "--json")
    assert json.loads(paused.stdout) == {"paused": [D1, D2]}, paused.stderr
    wait_until(lambda: still(r, tasks), 60, "the devices to finish their tasks in hand")

    first = books_now(r)
    figures = web.scaler()
    scraped = web.metrics()
    overview = web.session.get(web.url + "/api/overview", timeout=30).json()
    from_cli = status_scaler()
    assert books_now(r) == first, "the books moved while every device was paused"
    assert first.outstanding == first.not_finished > 0
    assert figures == {
        "backlog": first.not_finished,
        "devices": 2,  # paused is not offline
        "channels": {"1": {"backlog": first.not_finished, "devices": 2}, "2": {"backlog": 0, "devices": 0}},
    }
    assert from_cli == figures == overview["scaler"]
    assert scraped[("mutitask_backlog_tasks", (("channel", "1"),))] == first.not_finished
    assert scraped[("mutitask_backlog_tasks", (("channel", "2"),))] == 0
    assert scraped[("mutitask_devices", (("state", "paused"),))] == 2
    assert scraped[("mutitask_devices", (("state", "running"),))] == 0
    at_work = sum(scraped[("mutitask_devices", (("state", s),))] for s in ("running", "paused", "stopping"))
    assert at_work == figures["devices"]

    assert json.loads(cli("start", "--all", "--json").stdout) == {"started": [D1, D2]}
    thread.join(120)
    assert not thread.is_alive(), "the run did not complete"
    assert out["summary"].published == tasks
    stopped = cli("stop", "--all", "--json")
    assert sorted(json.loads(stopped.stdout)["stopped"]) == [D1, D2], stopped.stdout
    nothing = {"backlog": 0, "devices": 0}
    # Devices that said they ended are offline at once: no wait for their silence.
    assert web.scaler() == {**nothing, "channels": {"1": nothing, "2": nothing}}
