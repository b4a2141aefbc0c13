"""Rate limits per channel, one budget across all devices (``lua/take_tokens.lua``)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import runtime
from mutitask_celery.books.rate_limits import check_rate, check_rates, describe, parse_rate
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.legacy.server import BaseConfig, Terminal
from mutitask_celery.serving import serve

HOST = socket.gethostname()


@pytest.mark.parametrize("bad", [0, -2, "20", True, float("nan"), float("inf")])
def test_a_rate_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="a rate limit must be a positive number of tasks a second"):
        check_rate(bad)


def test_rates_as_typed_and_for_a_run() -> None:
    assert parse_rate("20") == 20.0 and parse_rate("0.5") == 0.5 and parse_rate("off") is None
    for bad in ("fast", "-1", "0"):
        with pytest.raises(ConfigurationError, match="a rate limit must be a positive number"):
            parse_rate(bad)
    assert check_rates({1: 20, 2: 0.5}, 2) == {1: 20.0, 2: 0.5}
    with pytest.raises(ConfigurationError, match=r"rate_limits names channel 3, but this run has channel\(s\) 1 to 2"):
        check_rates({3: 20.0}, 2)
    with pytest.raises(ConfigurationError, match="rate_limits must be a dict"):
        check_rates([20.0], 1)
    assert describe({}) == "rate limits: none"
    assert describe({2: 0.5, 1: 20.0}) == "rate limits: channel 1 20/s, channel 2 0.5/s"


def test_a_bad_rate_in_the_server_config_publishes_nothing(r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:  # the legacy script ends with one clear line, exit code 2
        Terminal(baseConfig=BaseConfig(1, rate_limits={2: 5.0})).run(iter(["a"]))
    assert exited.value.code == 2 and "rate_limits names channel 2" in caplog.text
    with pytest.raises(ConfigurationError, match="rate_limits must be a dict"):
        BaseConfig(1, rate_limits=20)  # type: ignore[arg-type]
    assert runtime.ledger().stats(1).published == 0 and mt.rate_limits() == {}


def test_many_takers_share_one_budget(r: redis.Redis) -> None:
    """Eight threads, each with a client of its own, take as fast as they can for 2 s at 50/s:
    the budget lets through what 50/s allows (one interval of catch-up at most), not 8 times it."""
    mt.set_rate_limit(1, 50)
    barrier = threading.Barrier(8)
    taken: list[float] = []
    lock = threading.Lock()

    def taker() -> None:
        from mutitask_celery.books.rate_limits import RateLimits

        limits = RateLimits(redis.Redis.from_url(runtime.settings.current().redis_url))
        barrier.wait()
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            wait, limit = limits.take(1, 1)
            assert limit == 50.0
            if wait == 0:
                with lock:
                    taken.append(time.monotonic())

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 2.0 * 50 - 5 <= len(taken) <= 2.0 * 50 + 2, len(taken)
    mt.set_rate_limit(1, None)
    assert runtime.rate_limits().take(1, 1000) == (0.0, None)  # no limit: nothing waits


def starts_of(procs: Processes, devices: list[subprocess.Popen[bytes]]) -> list[float]:
    return sorted(s.at for d in devices for s in procs.starts(d))


def most_in_a_second(times: list[float]) -> int:
    """The most starts within any one-second window."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_devices_together_keep_to_the_limit_and_a_change_takes_effect(procs: Processes, r: redis.Redis) -> None:
    env = {"SLOW_SECONDS": "0"}  # 'slow' prints START <task> <time>, then returns at once
    devices = [procs.device(n, 1, "slow", env=env) for n in (1, 2, 3, 4)]  # one slot each: whole START lines
    for n in (1, 2, 3, 4):
        wait_until(device_is_up(f"device{n}@{HOST}"), 60, f"device{n}")
    mt.set_rate_limit(1, 10)
    thread, out = run_in_thread([str(n) for n in range(400)], channel_size=50)
    wait_until(lambda: len(starts_of(procs, devices)) >= 40, 60, "40 starts at 10/s")
    changed = time.time()
    mt.set_rate_limit(1, 40)  # running devices follow within a second
    wait_until(lambda: len([t for t in starts_of(procs, devices) if t > changed + 1]) >= 120, 60, "starts at 40/s")
    mt.set_rate_limit(1, None)
    thread.join(120)
    assert not thread.is_alive() and out["summary"].succeeded == 400
    times = starts_of(procs, devices)
    assert len(times) == 400 and sorted(mt.results(1)) == sorted(str(n) for n in range(400))
    slow = [t for t in times if t < changed]
    fast = [t for t in times if changed + 1 < t < changed + 1 + 3]
    assert most_in_a_second(slow) <= 10 + 2, slow
    assert most_in_a_second(fast) <= 40 + 2 and len(fast) > 3 * 10 + 2, fast  # faster than before, not unbounded
    assert len({s.task for d in devices for s in procs.starts(d)}) == 400  # each ran once
    assert sum(1 for d in devices if procs.starts(d)) >= 3  # the budget was shared, not one device's


def test_a_device_waiting_for_the_budget_answers_pause_and_stop_at_once(procs: Processes, r: redis.Redis) -> None:
    name = f"device1@{HOST}"
    dev = procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0"})
    wait_until(device_is_up(name), 60, "device1")
    mt.set_rate_limit(1, 0.1)  # one start every 10 s
    thread, out = run_in_thread(["a", "b", "c"], channel_size=5)
    wait_until(lambda: procs.starts(dev), 30, "the first start")
    asked = time.monotonic()
    assert mt.pause(name) == [name]  # the device answers while its next message waits for the budget
    assert mt.devices()[0].state.value == "paused"
    mt.start(name)
    assert len(procs.starts(dev)) == 1  # the next waits for the budget (10 s)
    assert mt.stop(name) == [name]
    assert dev.wait(15) is not None and time.monotonic() - asked < 15  # it did not wait out the budget
    assert runtime.ledger().outstanding(1) == 2  # the two not started are kept, not lost
    mt.set_rate_limit(1, None)
    procs.device(2, 1, "slow", env={"SLOW_SECONDS": "0"})
    thread.join(60)
    assert not thread.is_alive() and sorted(mt.results(1)) == ["a", "b", "c"]


def test_the_command_line_and_the_console_set_and_show_limits(r: redis.Redis, redis_url: str) -> None:
    def mutitask(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mutitask_celery", *args, "--redis-url", redis_url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    done = mutitask("rate", "1", "20")
    assert done.returncode == 0 and done.stdout.strip() == "rate limits: channel 1 20/s"
    assert mt.rate_limits() == {1: 20.0}
    assert json.loads(mutitask("rate", "--json").stdout) == {"1": 20.0}
    bad = mutitask("rate", "1", "fast")
    assert bad.returncode == 2 and "a rate limit must be a positive number of tasks a second or off" in bad.stderr
    assert "rate limits: channel 1 20/s" in mutitask("status").stdout
    assert mutitask("rate", "1", "off").stdout.strip() == "rate limits: none" and mt.rate_limits() == {}

    summary_out = io.StringIO()
    console_in = io.StringIO("rate 2 7.5\nrate 2 fast\ndetect_all\nrate 2 off\n")
    procs_free = serve.serve(iter([]), channel_size=5, stdin=console_in, out=summary_out)
    assert procs_free.published == 0
    text = summary_out.getvalue()
    assert "channel 2: at most 7.5 task(s) a second" in text
    assert "rate: a rate limit must be a positive number of tasks a second or off, got 'fast'" in text
    assert "rate limits: channel 2 7.5/s" in text and "channel 2: no rate limit" in text
