"""The server's sweep: what it may put back, what it must leave alone, and how soon it runs
after something stranded a message while every device lived (a Redis restart)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import redis
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.services import RestartableRedis
from helpers.settings import FAST, fresh_settings
from helpers.waits import device_is_up, wait_until
from kombu.exceptions import OperationalError

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.books.recovery.reaper import Reaper
from mutitask_celery.control import Taken

HOST = socket.gethostname()


def _reaper() -> Reaper:
    reaper = runtime.recovery()
    assert isinstance(reaper, Reaper)
    return reaper


def _queued_ids(r: redis.Redis, channel: int) -> list[str]:
    ids: list[str] = []
    for raw in r.lrange(keys.queue(channel), 0, -1):
        body = messages.body_of(json.loads(raw))
        ids += [str(item[0]) for item in body[0][1]]
    return ids


def test_the_sweep_leaves_reloaded_tasks_waiting_in_the_backlog_alone(r: redis.Redis) -> None:
    """Reloaded tasks wait in the books' backlog, on no queue, until devices make room: they
    are not stranded, and publishing them again ran each twice and flooded the channel."""
    ledger = runtime.ledger()
    ids = [messages.new_task_id() for _ in range(120)]
    ledger.publish(1, [(t, codec.encode(f"f{n}")) for n, t in enumerate(ids)], batch=10)
    r.delete(keys.queue(1))  # as if devices had taken them all...
    ledger.finish(1, "device1@test", [Outcome(t, ok=False, reason="returned None") for t in ids])  # ...and failed
    assert mt.reload_failed(channel=1) == 120
    queued = _queued_ids(r, 1)
    assert 0 < len(queued) <= 50  # the first ones went out, ChannelSize at a time
    reaper = _reaper()
    assert reaper.sweep([1]) == 0
    assert reaper.sweep([1]) == 0  # confirmed at two sweeps: a stranded task would go out now
    assert sorted(_queued_ids(r, 1)) == sorted(queued)  # nothing published twice
    assert r.zcard(keys.backlog(1)) == 120 - len(queued)


@pytest.mark.unit
def test_queued_ids_reads_our_envelope() -> None:
    """The helper above reads the same envelope the sweep reads (a guard for the test itself)."""
    message = json.dumps({"body": base64.b64encode(json.dumps([[1, [["a", "1"]]], {}, {}]).encode()).decode()})
    assert messages.body_of(json.loads(message))[0][1] == [["a", "1"]]


class _SweepCount:
    """Counts the sweeps of every reaper of this process (the server's runs in a thread here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done = 0
        original = Reaper.sweep

        def counted(reaper: Reaper, channels: Sequence[int]) -> int:
            try:
                return original(reaper, channels)
            finally:
                self.done += 1

        monkeypatch.setattr(Reaper, "sweep", counted)


def _strand_one_message(client: redis.Redis) -> list[str]:
    """Take one message off channel 1's queue and drop it, as kombu's ``BRPOP`` does when Redis
    goes away before the unacked record is written (or the reply is lost at ``SHUTDOWN``):
    on no queue, in no unacked entry, in no device's note. Returns its task ids."""
    raw = wait_until(lambda: client.rpop(keys.queue(1)), 30, "a message on the queue")
    return [str(item[0]) for item in messages.body_of(json.loads(raw))[0][1]]


def _paused_device_and_run(
    procs: Processes, tasks: list[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, threading.Thread, dict[str, Any], _SweepCount]:
    """A paused device1 (it lives, takes nothing), a server run of ``tasks`` in a thread, and
    the server's start-up sweeps done: anything stranded from now on waits for a sweep that
    something must call for."""
    sweeps = _SweepCount(monkeypatch)
    mt.pause("all")
    device = procs.device(1, 1, "double")
    wait_until(device_is_up(f"device1@{HOST}"), 30, "device1")
    thread, out = run_in_thread(tasks, channel_size=50)
    wait_until(lambda: sweeps.done >= 2, 30, "the server's start-up sweeps")
    return device, thread, out, sweeps


def _started_all() -> bool:
    """``start all``, False while the connections left from before a restart still fail."""
    try:
        return bool(mt.start("all"))
    except (redis.RedisError, OperationalError, OSError):
        return False


def _finished(thread: threading.Thread, out: dict[str, Any], within: float = 120) -> Any:
    thread.join(within)
    assert not thread.is_alive(), "the run did not complete"
    return out["summary"]


def _assert_all_saved_once(thread: threading.Thread, out: dict[str, Any], tasks: list[str], within: float) -> None:
    thread.join(within)  # the safety sweep comes after 300 s: only a called-for sweep ends the run sooner
    assert not thread.is_alive(), "the stranded task was not published again"
    good = sorted(int(t) * 2 for t in tasks if int(t) % 10 and int(t) % 13)
    assert sorted(mt.results(1, limit=None)) == good  # every success saved exactly once
    assert out["summary"].published == len(tasks) and runtime.ledger().outstanding(1) == 0


def test_a_message_stranded_while_every_device_lives_goes_out_again_within_seconds(
    procs: Processes, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No device died, Redis did not restart: the channel shows tasks waiting and an empty
    queue. The server notices the stall and sweeps, instead of waiting for its safety sweep."""
    tasks = [str(n) for n in range(1, 40)]
    _, thread, out, _ = _paused_device_and_run(procs, tasks, monkeypatch)
    stranded = _strand_one_message(r)
    assert stranded and all(r.hexists(keys.pending(1), t) for t in stranded)
    mt.start("all")
    _assert_all_saved_once(thread, out, tasks, within=60)


def test_after_a_redis_restart_with_live_devices_a_stranded_message_goes_out_again(
    procs: Processes, restartable_redis: RestartableRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarts while every device lives; a message popped as it went away is on no queue
    and in no note. A device that reconnects (and the server) call for a sweep: the run goes
    on within seconds, and the books' held counts and notes end consistent."""
    client = redis.Redis.from_url(restartable_redis.url, decode_responses=True)
    tasks = [str(n) for n in range(1, 40)]
    device, thread, out, _ = _paused_device_and_run(procs, tasks, monkeypatch)
    _strand_one_message(client)
    client.close()
    restartable_redis.stop()
    wait_until(lambda: "Cannot connect to redis" in procs.output(device), 30, "the device to find Redis gone")
    restartable_redis.start_again()
    client = redis.Redis.from_url(restartable_redis.url, decode_responses=True)
    wait_until(_started_all, 30, "the device to answer again")
    _assert_all_saved_once(thread, out, tasks, within=60)
    assert int(client.get(keys.held(1)) or 0) == 0
    wait_until(lambda: client.hlen(keys.inhand(f"device1@{HOST}")) == 0, 10, "no note left in device1's hands")
    client.close()


def test_a_device_does_not_note_a_delivery_kombu_no_longer_holds(r: redis.Redis) -> None:
    """A note step that Redis forgot in a restart is made again when the next message is noted,
    after its message finished: noting it then left a stale note (with no score) that held
    ``held:1`` up for good, and later runs filled the channel past its size by that much."""
    devices = runtime.devices()
    devices.heard("device1@test", in_hand=Taken("finished-message", "gone-tag", 19, 1))
    assert r.hlen(keys.inhand("device1@test")) == 0
    assert int(r.get(keys.held(1)) or 0) == 0
    r.zadd(keys.KOMBU_UNACKED_INDEX, {"live-tag": 1700000000.5})  # a delivery kombu holds is noted
    devices.heard("device1@test", in_hand=Taken("live-message", "live-tag", 3, 1))
    assert r.hget(keys.inhand("device1@test"), "live-message") == "live-tag|1700000000.5|3|1"
    assert int(r.get(keys.held(1)) or 0) == 3


def test_the_sweep_drops_stale_notes_and_counts_held_again(r: redis.Redis) -> None:
    """What a Redis restart left behind (stale notes, a drifted count) is mended by the sweep,
    confirmed at two sweeps; a note of a delivery kombu still holds stays."""
    devices = runtime.devices()
    devices.heard("device1@test")  # alive
    r.zadd(keys.KOMBU_UNACKED_INDEX, {"live-tag": 1700000000.5})
    devices.heard("device1@test", in_hand=Taken("live-message", "live-tag", 3, 1))
    r.hset(keys.inhand("device1@test"), "finished-message", "gone-tag||19|1")  # as the old step left it
    r.incrby(keys.held(1), 19 + 56)  # ... and a count that drifted besides
    reaper = _reaper()
    reaper.sweep([1])
    assert r.hexists(keys.inhand("device1@test"), "finished-message")  # one look is not enough
    reaper.sweep([1])
    assert r.hgetall(keys.inhand("device1@test")) == {"live-message": "live-tag|1700000000.5|3|1"}
    assert int(r.get(keys.held(1)) or 0) == 3


def test_live_devices_keep_what_they_hold_across_a_redis_outage_longer_than_dead_after(
    procs: Processes, restartable_redis: RestartableRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Redis is away no device can beat; at its return every device has looked silent
    for the whole outage. A reaper that judged them then (before their first heartbeat) took
    what live devices held, and those tasks ran twice. Reapers judge no silence until they
    have watched Redis for dead_after seconds again."""
    monkeypatch.setenv("MUTITASK_DEAD_AFTER", "3")
    fresh_settings()
    devices = [procs.device(n, 1, "slow", "--concurrency", "2", env={**FAST, "SLOW_SECONDS": "1"}) for n in (1, 2, 3)]
    for n in (1, 2, 3):
        wait_until(device_is_up(f"device{n}@{HOST}"), 30, f"device{n}")
    tasks = [f"t{n}" for n in range(60)]
    thread, out = run_in_thread(tasks, channel_size=10)
    client = redis.Redis.from_url(restartable_redis.url, decode_responses=True)
    wait_until(lambda: all(client.hlen(keys.inhand(f"device{n}@{HOST}")) for n in (1, 2, 3)), 60, "every device busy")
    client.close()
    restartable_redis.stop()
    down_until = time.monotonic() + 3 + 4  # the outage is the fault: it outlasts dead_after (3 s) by 4 s
    wait_until(
        lambda: all("Cannot connect to redis" in procs.output(d) for d in devices), 30, "every device to lose Redis"
    )
    wait_until(lambda: time.monotonic() >= down_until, 30, "the outage to outlast dead_after")
    restartable_redis.start_again()
    summary = _finished(thread, out)
    assert sorted(mt.results(1, limit=None)) == sorted(tasks)
    ran = [s.task for d in devices for s in procs.starts(d)]
    assert sorted(ran) == sorted(tasks)  # no task taken from a live device and run again
    assert summary.channels[1].duplicates == 0


def test_a_run_leaves_no_unacked_entry_of_a_finished_message_behind(
    procs: Processes, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device killed after recording a message's outcomes and before acknowledging it leaves
    kombu's unacked entry behind, in no device's note: nothing reads it again, and it stayed
    there for good once the run's last sweep had passed. The run's end drops it."""
    device, thread, out, _ = _paused_device_and_run(procs, [str(n) for n in range(1, 12)], monkeypatch)
    envelope = json.loads(messages.build(runtime.ledger().app, keys.queue(1), 1, [("finished-task", '"x"')]))
    r.hset(keys.KOMBU_UNACKED, "orphan-tag", json.dumps([envelope, "", keys.queue(1)]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {"orphan-tag": 1700000000.5})
    mt.start("all")
    _finished(thread, out)
    assert not r.hexists(keys.KOMBU_UNACKED, "orphan-tag")
    assert r.zscore(keys.KOMBU_UNACKED_INDEX, "orphan-tag") is None
