"""One server per run and per channel, one process per device name: real processes, real
signals (SIGKILL, SIGSTOP/SIGCONT), a real Redis. A second server or device is refused with
exit code 5 and a message naming the live holder; a holder that died (or froze) lets go."""

from __future__ import annotations

import json
import signal
import socket
import subprocess

import pytest
import redis
from helpers.paths import SCRIPTS
from helpers.processes import Processes
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.leases import Holder, Leases, node, running
from mutitask_celery.books.ledger import Outgoing
from mutitask_celery.errors import ExitCode, LeaseHeld, LeaseLost
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
FAST = {"MUTITASK_DEAD_AFTER": "3"}  # leases (and dead devices) expire after 3 s instead of 10


def holder(r: redis.Redis, key: str) -> Holder | None:
    value = r.get(key)
    return Holder.parse(str(value)) if value is not None else None


def device(procs: Processes, label: str, behaviour: str, **env: str) -> subprocess.Popen[bytes]:
    """A legacy client script as device1 of channel 1, with a log of its own (``label``)."""
    return procs.python(SCRIPTS / "device.py", "1", "1", behaviour, name=f"device1-{label}", env=env)


def one_refused(procs: Processes, pair: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], ...]:
    """Wait until one of two processes has exited; returns (the refused one, the other)."""
    wait_until(lambda: any(p.poll() is not None for p in pair), 60, "one of the two to be refused")
    refused = next(p for p in pair if p.poll() is not None)
    other = next(p for p in pair if p is not refused)
    assert refused.returncode == ExitCode.IN_USE, procs.output(refused)
    assert other.poll() is None, procs.output(other)
    return refused, other


def summary_of(procs: Processes, server: subprocess.Popen[bytes]) -> dict[str, int]:
    line = [x for x in procs.output(server).splitlines() if x.startswith("SUMMARY ")][-1]
    summary: dict[str, int] = json.loads(line[len("SUMMARY ") :])["1"]
    return summary


def test_two_servers_of_one_run_started_at_once_one_runs_the_other_is_refused(procs: Processes, r: redis.Redis) -> None:
    count = 300
    pair = [procs.python(SCRIPTS / "resume_server.py", str(count), name=f"server-{n}") for n in "ab"]
    refused, winner = one_refused(procs, pair)  # no device yet: the winner waits for its tasks
    said = procs.output(refused)
    assert f"run 'default' is in use by another live process: pid {winner.pid} on {HOST}" in said, said
    assert "One server per run" in said and said.count("Traceback") == 0, said
    for n in (1, 2):
        procs.device(n, 1, "tag", env={"DEVICE_TAG": f"d{n}"})
    assert winner.wait(180) == 0, procs.output(winner)
    assert sorted((task for _, task in mt.results(1, limit=None)), key=int) == [str(n) for n in range(count)]
    stats = runtime.ledger().stats(1)
    assert (stats.published, stats.duplicates) == (count, 0)  # each task published once, run once
    assert summary_of(procs, winner)["published"] == count
    assert r.get(keys.run_lease("default")) is None and r.get(keys.channel_lease(1)) is None  # let go at its end


def test_two_servers_on_one_channel_without_a_run_name_one_is_refused(procs: Processes, r: redis.Redis) -> None:
    count = 200
    pair = [procs.python(SCRIPTS / "server.py", str(count), name=f"server-{n}") for n in "ab"]
    refused, winner = one_refused(procs, pair)
    said = procs.output(refused)
    assert f"channel 1 is in use by another live process: pid {winner.pid} on {HOST}" in said, said
    assert "One server per channel" in said and "SUMMARY" not in said, said
    procs.device(1, 1)
    assert winner.wait(180) == 0, procs.output(winner)
    stats = runtime.ledger().stats(1)
    assert (stats.published, stats.duplicates) == (count, 0)
    assert mt.results_count(1) + mt.failed_count(1) == count  # every task ended once


def test_a_second_device_under_a_live_name_is_refused_and_takes_nothing(procs: Processes, r: redis.Redis) -> None:
    name = f"device1@{HOST}"
    live = device(procs, "live", "slow", SLOW_SECONDS="12")
    wait_until(device_is_up(name), 30, "device1")
    runtime.ledger().publish(1, [(messages.new_task_id(), codec.encode("held"))])
    wait_until(lambda: [s.task for s in procs.starts(live)] == ["held"], 30, "device1 to start the task")
    script = device(procs, "copy", "slow", SLOW_SECONDS="0")  # a copied client script, same deviceID
    celery = procs.start(worker_command("device1@%h", include="channel_one"), "celery-device1")
    for dup in (script, celery):
        assert dup.wait(60) == ExitCode.IN_USE, procs.output(dup)
        said = procs.output(dup)
        assert f"the device name {name} is in use by another live process: pid {live.pid} on {HOST}" in said, said
        assert "took back" not in said, said
    assert live.poll() is None and r.hlen(keys.inhand(name)) == 1  # the live one keeps what it holds
    assert (held := holder(r, keys.device_lease(name))) is not None and held.pid == live.pid
    wait_until(lambda: mt.results(1) == ["held"], 30, "the live device's result")
    assert [s.task for s in procs.starts(live)] == ["held"] and procs.starts(script) == []
    assert runtime.ledger().stats(1).duplicates == 0  # nothing ran twice


def test_a_device_killed_and_restarted_at_once_takes_its_name_and_what_it_held(
    procs: Processes, r: redis.Redis
) -> None:
    name = f"device1@{HOST}"
    first = procs.device(1, 1, "slow", env={"SLOW_SECONDS": "30"})
    wait_until(device_is_up(name), 30, "device1")
    runtime.ledger().publish(1, [(messages.new_task_id(), codec.encode("held"))])
    wait_until(lambda: [s.task for s in procs.starts(first)] == ["held"], 30, "device1 to start the task")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    again = procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0"})  # its lease lasts 10 s: no waiting for it
    wait_until(lambda: [s.task for s in procs.starts(again)] == ["held"], 8, "the restarted device1 to take it back")
    assert (held := holder(r, keys.device_lease(name))) is not None and held.pid == again.pid
    assert f"(pid {first.pid} on {HOST}" in procs.output(again) and "is gone: taking it over" in procs.output(again)
    wait_until(lambda: mt.results(1) == ["held"], 10, "the result")


def test_a_frozen_servers_channel_can_be_taken_and_the_thawed_server_publishes_nothing(
    procs: Processes, r: redis.Redis
) -> None:
    frozen = procs.python(SCRIPTS / "server.py", "50", "5", name="server-frozen", env=FAST)  # tasks "0".."49"
    wait_until(lambda: runtime.ledger().stats(1).published == 5, 30, "the first server to fill channel 1 (size 5)")
    wait_until(lambda: holder(r, keys.channel_lease(1)), 10, "its lease")
    frozen.send_signal(signal.SIGSTOP)  # a stuck host: its lease is no longer renewed
    try:
        taker = procs.python(  # tasks "1000".."1039", channel size 20
            SCRIPTS / "resume_server.py", "40", "--offset", "1000", "--fresh", name="server-new", env=FAST
        )
        wait_until(lambda: runtime.ledger().stats(1).published > 5, 30, "the new server to publish")
        assert (held := holder(r, keys.channel_lease(1))) is not None and held.pid == taker.pid
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(30) == ExitCode.IN_USE, procs.output(frozen)
    said = procs.output(frozen)
    assert f"lease lost: channel 1 was taken over by pid {taker.pid} on {HOST}" in said, said
    procs.device(1, 1, "tag", env=FAST)
    assert taker.wait(120) == 0, procs.output(taker)
    done = sorted((task for _, task in mt.results(1, limit=None)), key=int)
    assert done == [str(n) for n in range(5)] + [str(n) for n in range(1000, 1040)]  # the thawed one published no more
    stats = runtime.ledger().stats(1)
    assert (stats.published, stats.duplicates, runtime.ledger().outstanding(1)) == (45, 0, 0)


def test_a_frozen_device_whose_name_was_taken_stops_when_thawed(procs: Processes, r: redis.Redis) -> None:
    name = f"device1@{HOST}"
    frozen = device(procs, "frozen", "slow", SLOW_SECONDS="30", **FAST)
    wait_until(device_is_up(name), 30, "device1")
    frozen.send_signal(signal.SIGSTOP)
    try:
        taker = device(procs, "taker", "slow", SLOW_SECONDS="0", **FAST)
        wait_until(lambda: (h := holder(r, keys.device_lease(name))) and h.pid == taker.pid, 30, "the name taken")
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(60) == ExitCode.IN_USE, procs.output(frozen)
    assert f"lease lost: the device name {name} was taken over by pid {taker.pid}" in procs.output(frozen)
    assert taker.poll() is None and holder(r, keys.device_lease(name)) is not None


def test_a_publish_step_fenced_by_a_lease_another_server_took_publishes_nothing(r: redis.Redis) -> None:
    """The fence itself, in one Lua step: the old holder's step publishes nothing and says so."""
    old = Leases(runtime.books_client(), ttl=0.3)
    lease = old.take(keys.channel_lease(1), "channel 1", "")
    old.release()  # as if its holder had stopped renewing it, and it had expired
    new = Leases(runtime.books_client(), ttl=5)
    try:
        new.take(keys.channel_lease(1), "channel 1", "")
        out = Outgoing(1, [("t1", codec.encode("x"))], 1, messages.new_task_id(), lease=lease)
        with pytest.raises(LeaseLost, match=f"lease lost: channel 1 was taken over by pid {new.leases[0].holder.pid}"):
            runtime.ledger().round([out], [])
        assert runtime.ledger().stats(1).published == 0 and r.llen(keys.queue(1)) == 0
        mine = Outgoing(1, [("t2", codec.encode("y"))], 1, messages.new_task_id(), lease=new.leases[0])
        assert runtime.ledger().round([mine], [])[0] == {1}  # its holder's step goes through
    finally:
        new.release()


def test_a_lapsed_lease_nobody_took_is_taken_back_by_its_holder(r: redis.Redis) -> None:
    """Redis away (or the process frozen) longer than the lease lasts, and nobody took it: its
    holder keeps it (a Redis restart must not end a run); renewals and releases are the holder's only."""
    mine = Leases(runtime.books_client(), ttl=5)
    try:
        lease = mine.take(keys.channel_lease(1), "channel 1", "")
        r.delete(keys.channel_lease(1))  # expired
        mine.keep()
        assert mine.lost is None and r.get(keys.channel_lease(1)) == lease.value
        other = Leases(runtime.books_client(), ttl=5)
        with pytest.raises(LeaseHeld, match="channel 1 is in use by another live process"):
            other.take(keys.channel_lease(1), "channel 1", "", wait=0)
        other.release()
        assert r.get(keys.channel_lease(1)) == lease.value  # a refused taker lets go of nothing
    finally:
        mine.release()
    assert r.get(keys.channel_lease(1)) is None and r.hget(keys.LEASE_HOLDERS, keys.channel_lease(1)) == ""
    late = Outgoing(1, [("t", codec.encode("late"))], 1, messages.new_task_id(), lease=lease)
    with pytest.raises(LeaseLost):  # released: a late step of its holder's cannot take it back
        runtime.ledger().round([late], [])
    assert runtime.ledger().stats(1).published == 0


def test_a_killed_process_not_yet_reaped_counts_as_gone() -> None:
    """A zombie (killed, its parent not yet waiting for it) runs no more: a device restarted
    by a supervisor that has not reaped the old one yet takes its name over at once."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert running(child.pid)
        child.send_signal(signal.SIGKILL)
        wait_until(lambda: not running(child.pid), 10, "the killed, unreaped child to count as gone")
    finally:
        child.kill()
        child.wait()
    gone = Holder(HOST, node(), child.pid, "t", 0.0)
    assert gone.gone() and not Holder("elsewhere", node(), child.pid, "t", 0.0).gone()
    assert Holder.parse("not json") is None and Holder.parse(gone.value) == gone
