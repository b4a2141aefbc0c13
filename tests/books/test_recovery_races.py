"""Recovery under concurrency, made to happen: many reapers at once on one dead device,
with a barrier so they all read before any acts, repeated trials; on a real redis-server.

Deliveries are made as kombu's Redis transport makes them (``RPOP`` off the queue, then
``HSET unacked`` + ``ZADD unacked_index``, then the device's note in hand through
:meth:`Devices.heard`), so the reapers meet the exact state a dead device leaves.
tests/devices/test_exactly_once.py does the same with real devices and real SIGKILLs.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
from helpers.settings import fresh_settings

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Outcome
from mutitask_celery.books.recovery.reaper import Reaper
from mutitask_celery.books.transports.kombu_broker import KombuBroker
from mutitask_celery.books.transports.redis_broker import RedisBroker
from mutitask_celery.connection import redis_now
from mutitask_celery.control import Taken

TRIALS = 5
REAPERS = 6


def deliver(r: redis.Redis, channel: int, device: str, started: bool = True, alone: bool = False) -> tuple[str, str]:
    """One message to ``device`` as kombu delivers it; ``started``: it began running it
    (``alone``: with no other task of its process beside it)."""
    raw = r.rpop(keys.queue(channel))
    assert raw is not None
    envelope = json.loads(raw)
    tag = envelope["properties"]["delivery_tag"]
    r.hset(keys.KOMBU_UNACKED, tag, json.dumps([envelope, "", keys.queue(channel)]))
    r.zadd(keys.KOMBU_UNACKED_INDEX, {tag: time.time()})
    message_id = envelope["headers"]["id"]
    tasks = len(messages.body_of(envelope)[0][1])
    runtime.devices().heard(device, in_hand=Taken(message_id, tag, tasks, channel))
    if started:
        runtime.devices().started(device, channel, message_id, alone=alone)
    return message_id, tag


def silence(r: redis.Redis, device: str, ago: float = 100.0) -> None:
    """``device`` was last heard ``ago`` seconds ago (it died then)."""
    then = redis_now(r) - ago
    r.hset(keys.DEVICES_SEEN, device, f"{then:.6f}")
    r.zadd(keys.DEVICES_BEATS, {device: then})


class BarrierClient:
    """A client whose first read of kombu's unacked hash waits for the other reapers'."""

    def __init__(self, real: redis.Redis, barrier: threading.Barrier) -> None:
        self._real, self._barrier, self._waited = real, barrier, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def hget(self, key: str, field: str) -> Any:
        value = self._real.hget(key, field)
        if key == keys.KOMBU_UNACKED and not self._waited:
            self._waited = True
            self._barrier.wait(10)  # every reaper has read the entry before any acts
        return value


def reap_together(r: redis.Redis, url: str, max_attempts: int = 3, barrier: bool = True) -> None:
    wall = threading.Barrier(REAPERS)
    ledger = runtime.ledger()
    reapers = []
    for _ in range(REAPERS):
        client = redis.Redis.from_url(url, decode_responses=True)
        reapers.append(
            Reaper(
                ledger,
                dead_after=10,
                max_attempts=max_attempts,
                client=BarrierClient(client, wall) if barrier else client,  # type: ignore[arg-type]
            )
        )
    threads = [threading.Thread(target=reaper.reap) for reaper in reapers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("barrier", [True, False], ids=["barrier", "free-for-all"])
def test_many_reapers_count_one_death_once(r: redis.Redis, redis_url: str, barrier: bool) -> None:
    for trial in range(TRIALS):
        r.flushdb()
        ids = [f"t{trial}-{i}" for i in range(40)]
        runtime.ledger().publish(1, [(t, '"x"') for t in ids])
        for _ in ids:
            deliver(r, 1, "device9@h")
        silence(r, "device9@h")
        reap_together(r, redis_url, max_attempts=1000, barrier=barrier)
        assert Counter(int(n) for n in r.hmget(keys.lost(1), ids)) == {1: 40}  # one death, counted once
        assert r.llen(keys.queue(1)) == 40 and r.hlen(keys.KOMBU_UNACKED) == 0
        assert r.hlen(keys.inhand("device9@h")) == 0 and r.hlen(keys.started(1)) == 0
        assert r.get(keys.held(1)) == "0"  # the notes' tasks left the count of tasks in hand
        assert r.zscore(keys.DEVICES_BEATS, "device9@h") is None  # retired: nothing left in hand


def test_the_death_that_buries_a_task_is_counted_once_and_keeps_no_copy(r: redis.Redis, redis_url: str) -> None:
    for trial in range(TRIALS):
        r.flushdb()
        task = f"p{trial}"
        runtime.ledger().publish(1, [(task, '"poison"')])
        r.hset(keys.lost(1), task, 2)  # it has killed two devices already
        deliver(r, 1, "device9@h", alone=True)
        silence(r, "device9@h")
        reap_together(r, redis_url)
        (record,) = mt.failed(1)
        assert record.id == task and record.reason == "worker lost: the device died while running it, 3 time(s)"
        assert record.device == "device9@h"
        assert r.llen(keys.queue(1)) == 0 and r.hlen(keys.pending(1)) == 0 and r.hlen(keys.lost(1)) == 0
        assert r.hget(keys.stats(1), "failed") == "1"
        # Burying wrote no heartbeat for the dead device: it stays dead, and retired.
        assert float(r.hget(keys.DEVICES_SEEN, "device9@h") or 0) < redis_now(r) - 50


def test_a_death_beside_other_tasks_never_buries(r: redis.Redis, redis_url: str) -> None:
    """At its third death the task was not running alone: the death may be a neighbour's."""
    runtime.ledger().publish(1, [("t", '"t"')])
    r.hset(keys.lost(1), "t", 2)
    deliver(r, 1, "device9@h", alone=False)
    silence(r, "device9@h")
    reap_together(r, redis_url)
    assert mt.failed_count() == 0 and r.hget(keys.lost(1), "t") == "3"
    (queued,) = r.lrange(keys.queue(1), 0, -1)
    assert messages.body_of(json.loads(queued))[1] == {"suspect": True}


def test_held_messages_go_back_untouched_and_started_ones_alone(r: redis.Redis, redis_url: str) -> None:
    """A device dies running a batch of three and holding two single messages it never started."""
    ledger = runtime.ledger()
    ledger.publish(1, [("b1", '"1"'), ("b2", '"2"'), ("b3", '"3"')], batch=3)
    batch_id, _ = deliver(r, 1, "device9@h", started=True)
    ledger.publish(1, [("h1", '"4"'), ("h2", '"5"')])
    held = [deliver(r, 1, "device9@h", started=False)[0] for _ in range(2)]
    silence(r, "device9@h")
    reap_together(r, redis_url)
    assert r.hgetall(keys.lost(1)) == {"b1": "1", "b2": "1", "b3": "1"}  # only the started ones
    queued = [json.loads(raw) for raw in r.lrange(keys.queue(1), 0, -1)]
    singles = {m["headers"]["id"]: messages.body_of(m) for m in queued}
    assert set(singles) == {"b1", "b2", "b3", *held}
    for task in ("b1", "b2", "b3"):
        assert singles[task][1] == {"suspect": True}  # each started task runs alone from now on
    for message_id in held:
        assert singles[message_id][1] == {}
    assert batch_id not in singles


def test_a_device_heard_from_again_keeps_what_it_holds(r: redis.Redis, redis_url: str) -> None:
    runtime.ledger().publish(1, [("a", '"a"'), ("b", '"b"')])
    deliver(r, 1, "device9@h")
    deliver(r, 1, "device9@h")
    silence(r, "device9@h")
    reaper = Reaper(runtime.ledger(), dead_after=10)
    judged = r.hget(keys.DEVICES_SEEN, "device9@h")
    runtime.devices().heard("device9@h")  # back from a network cut, just before the reaper acts
    assert reaper.recover("device9@h", seen=judged) == 0
    assert r.hlen(keys.inhand("device9@h")) == 2 and r.hlen(keys.KOMBU_UNACKED) == 2 and not r.hlen(keys.lost(1))


def test_a_stale_note_never_takes_back_another_devices_delivery(r: redis.Redis, redis_url: str) -> None:
    """device1 held M; kombu put M back with the same delivery tag at its warm shutdown, but
    its note stayed; device2 took M (same tag) and runs it. device1 restarts under its name."""
    runtime.ledger().publish(1, [("M", '"long task"')])
    _, tag = deliver(r, 1, "device1@h", started=False)
    raw = r.hget(keys.KOMBU_UNACKED, tag)
    message, _, queue = json.loads(raw)
    pipe = r.pipeline()  # kombu's restore_by_tag: same payload, same tag, back on the queue
    pipe.zrem(keys.KOMBU_UNACKED_INDEX, tag).hdel(keys.KOMBU_UNACKED, tag).rpush(queue, json.dumps(message))
    pipe.execute()
    time.sleep(0.002)  # kombu stamps deliveries with time(): make the two stamps differ
    _, tag2 = deliver(r, 1, "device2@h")
    assert tag2 == tag
    assert Reaper(runtime.ledger()).recover("device1@h") == 0  # what lifecycle.DeviceLife.init does
    assert r.hexists(keys.KOMBU_UNACKED, tag) and r.llen(keys.queue(1)) == 0
    assert r.hget(keys.lost(1), "M") is None and r.hlen(keys.inhand("device1@h")) == 0


def test_a_late_ack_does_not_remove_the_next_delivery(r: redis.Redis, redis_url: str) -> None:
    """A restored message gets a delivery tag of its own: the dead device's late ack (by the old
    tag) cannot drop the entry of the device that runs it now."""
    runtime.ledger().publish(1, [("M", '"m"')])
    _, old = deliver(r, 1, "device9@h", started=False)
    silence(r, "device9@h")
    Reaper(runtime.ledger(), dead_after=10).reap()
    _, new = deliver(r, 1, "device2@h")
    assert new != old
    r.hdel(keys.KOMBU_UNACKED, old)  # device9, back from a cut, acks what it had
    assert r.hexists(keys.KOMBU_UNACKED, new)


def test_a_retried_finish_applies_once(r: redis.Redis, redis_url: str) -> None:
    """redis-py would resend an EVALSHA whose reply timed out; our finish is one step, by id."""
    runtime.ledger().publish(1, [("a", '"a"'), ("b", '"b"')], batch=2)
    outcomes = [Outcome("a", ok=True, result='"A"'), Outcome("b", ok=False, reason="returned None")]
    first = runtime.ledger().finish(1, "device1@h", outcomes, step="s1", writer="w")
    again = runtime.ledger().finish(1, "device1@h", outcomes, step="s1", writer="w")
    assert first == again == (1, 1, 0, 2, 0, ())
    assert r.hget(keys.stats(1), "duplicates") is None and mt.results(1) == ["A"]
    assert r.hget(keys.DEVICES_DONE, "device1@h") == "2"


def test_a_retried_publish_applies_once(r: redis.Redis, redis_url: str) -> None:
    items = [("a", '"a"'), ("b", '"b"')]
    runtime.ledger().publish(1, items, step="p1")
    runtime.ledger().finish(1, "device1@h", [Outcome("a", ok=True, result='"A"')])  # a device was quick
    runtime.ledger().publish(1, items, step="p1")  # the first reply was lost: the same step again
    assert r.hget(keys.stats(1), "published") == "2" and r.llen(keys.queue(1)) == 2
    assert r.hkeys(keys.pending(1)) == ["b"]


def test_our_redis_clients_never_resend_a_command(redis_url: str) -> None:
    client = runtime.ledger().client
    retry = client.get_retry()
    assert retry is not None and retry.get_retries() == 0
    assert not client.connection_pool.connection_kwargs.get("retry_on_timeout")


def test_a_suspect_runs_with_no_other_task_beside_it() -> None:
    """Eight threads at a barrier, ordinary tasks and suspects mixed, many rounds: whenever a
    suspect runs, nothing else does; ordinary tasks do share the device."""
    from mutitask_celery.device.isolation import Isolation

    device = Isolation()
    running: list[str] = []
    lock = threading.Lock()
    overlaps: list[list[str]] = []
    shared = []
    barrier = threading.Barrier(8)

    def work(kind: str) -> None:
        barrier.wait()
        for _ in range(50):
            with device.slot(alone=kind == "suspect"):
                with lock:
                    running.append(kind)
                    if "suspect" in running and len(running) > 1:
                        overlaps.append(list(running))
                    if running.count("ordinary") > 1:
                        shared.append(1)
                time.sleep(0.0005)
                with lock:
                    running.remove(kind)

    threads = [threading.Thread(target=work, args=("suspect" if n % 4 == 0 else "ordinary",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert overlaps == [] and shared  # suspects alone, ordinary tasks side by side


@pytest.mark.parametrize("suspect", [True, False], ids=["suspect", "ordinary"])
def test_nothing_starts_beside_a_suspect_until_its_outcome_is_recorded(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, suspect: bool
) -> None:
    """A suspect's start mark stands until its finish step: a task let in beside it before
    that (a poison one, killing the process) would charge it a death it did not cause. Seen
    in the chaos soak as a healthy task buried after three such deaths."""
    from mutitask_celery import codec
    from mutitask_celery.channels import register_channel
    from mutitask_celery.device import lifecycle, tasks

    register_channel(1, lambda task: task)
    seen: list[tuple[bool, int]] = []
    finish = tasks._finish
    life = lifecycle.DeviceLife("device1@h")  # the device the task finds on its app, as in a worker
    monkeypatch.setattr(tasks.app, lifecycle.DEVICE_ATTRIBUTE, life, raising=False)

    def watched(*args: Any, **kwargs: Any) -> Any:
        seen.append((life.isolation._alone, life.isolation._running))
        return finish(*args, **kwargs)

    monkeypatch.setattr(tasks, "_finish", watched)
    task_id = "t-suspect"
    r.hset(keys.pending(1), task_id, codec.encode("healthy"))
    tasks.run_items.apply(args=[1, [[task_id, codec.encode("healthy")]]], kwargs={"suspect": suspect})
    assert seen == [(True, 0)] if suspect else seen == [(False, 1)]  # the slot still held, as taken
    assert mt.results(1) == ["healthy"] and not r.hexists(keys.pending(1), task_id)


def test_delete_by_channel_takes_what_was_there_and_ends(r: redis.Redis, redis_url: str) -> None:
    """Records keep arriving while a whole channel is deleted (a device failing a backlog)."""
    store = runtime.store()
    for n in range(1200):  # more than two pages
        store.add_unpublishable(1, f"old{n}", "unserializable")
    real_zrangebyscore = store.client.zrangebyscore
    arrivals = iter(range(10_000))

    def arriving(*args: Any, **kwargs: Any) -> Any:
        page = real_zrangebyscore(*args, **kwargs)
        for _ in range(300):  # each page fetched, 300 new failures land
            store.add_unpublishable(1, f"new{next(arrivals)}", "unserializable")
        return page

    store.client.zrangebyscore = arriving  # type: ignore[method-assign]
    try:
        assert store.delete(channel=1) == 1200
    finally:
        store.client.zrangebyscore = real_zrangebyscore  # type: ignore[method-assign]
    assert all(record.data.startswith("new") for record in store.failed(1, limit=100))


def test_forgotten_devices_leave_the_roster_and_status_says_so(r: redis.Redis, redis_url: str) -> None:
    import subprocess
    import sys

    now = redis_now(r)
    r.hset(
        keys.DEVICES_SEEN,
        mapping={
            "device7@old": f"{now - 90000:.6f}",
            "device8@old": f"{now - 90000:.6f}",
            "device9@busy": f"{now - 90000:.6f}",
            "device1@new": f"{now - 5:.6f}",
        },
    )
    r.hset(
        keys.DEVICES_INFO,
        mapping={
            n: json.dumps({"channels": [1]}) for n in ("device7@old", "device8@old", "device9@busy", "device1@new")
        },
    )
    r.hset(keys.inhand("device9@busy"), "m", "tag|1|1|1")  # still holds a message: kept for a reaper
    forgotten = Reaper(runtime.ledger(), forget_after=86400).forget_silent()
    assert sorted(forgotten) == ["device7@old", "device8@old"]
    assert sorted(r.hkeys(keys.DEVICES_INFO)) == ["device1@new", "device9@busy"]
    out = subprocess.run(
        [sys.executable, "-m", "mutitask_celery", "status", "--timeout", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "forgotten: 2 device(s) silent for over 86400 s" in out.stdout
    assert runtime.devices().heard("device7@old") == -1  # back after all: its counts start afresh
    assert runtime.devices().heard("device7@old") == 0


def test_the_heartbeat_outlives_any_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mutitask_celery.device import lifecycle

    life = lifecycle.DeviceLife("device1@h")
    calls: list[int] = []

    def duty() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug, not a Redis error")
        if len(calls) == 2:
            raise redis.ConnectionError("Redis away")
        if len(calls) == 4:
            life.stopping.set()

    thread = threading.Thread(target=life.every, args=(0.01, duty, "test duty"))
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and len(calls) == 4


def test_one_redis_named_two_ways_is_recognised(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("MUTITASK_REDIS_URL", f"redis://127.0.0.1:{redis_server.port}/0")
    monkeypatch.setenv("MUTITASK_BROKER_URL", f"redis://localhost:{redis_server.port}/0")
    fresh_settings()
    try:
        assert runtime.broker_is_store() and isinstance(runtime.transport(), RedisBroker)
        monkeypatch.setenv("MUTITASK_BROKER_URL", f"redis://localhost:{redis_server.port}/1")  # another database
        assert not runtime.broker_is_store() and isinstance(runtime.transport(), KombuBroker)
    finally:
        monkeypatch.undo()
        fresh_settings()


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:s3cr3t@h:1/0",
        "rediss://:s3cr3t@h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required",
        "redis://h:1/0?password=s3cr3t",
        "rediss://u:s3cr3t@h/0?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_password=s3cr3t",
        "amqp://guest:s3cr3t@rabbit:5672/vhost",
        "redis://h/0?token=s3cr3t&socket_timeout=5",
    ],
)
def test_every_secret_is_masked_in_every_url_form(url: str) -> None:
    from mutitask_celery.settings import mask_url

    masked = mask_url(url)
    assert "s3cr3t" not in masked and "***" in masked
    assert "ssl_ca_certs=/etc/ca.pem" in masked or "ssl_ca_certs" not in url  # paths are not secrets
