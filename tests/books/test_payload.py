"""Data-heavy tasks: channels bounded in bytes as well as in tasks, messages that do not
bundle big tasks, and a run of arrays whose Redis memory stays within the budget."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest
import redis
from helpers.processes import Processes
from helpers.runs import run_in_thread
from helpers.settings import fresh_settings
from helpers.waits import device_is_up, wait_until

import mutitask_celery as mt
from mutitask_celery import codec, keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import MESSAGE_BYTES, ChannelStats, Outgoing, _groups
from mutitask_celery.serving.producer import _Feed
from mutitask_celery.tools.processes import worker_command

HOST = socket.gethostname()
KB = 1024
MB = 1024 * KB


def _publish(channel: int, items: list[messages.Item], budget: int) -> bool:
    out = Outgoing(channel, items, 1, messages.new_task_id(), byte_budget=budget)
    went, _books = runtime.ledger().round([out], [], room_for=50)
    return channel in went


def test_a_channel_takes_no_more_data_than_its_budget_while_tasks_wait(r: redis.Redis) -> None:
    data = '"' + "x" * 998 + '"'  # 1000 bytes a task
    assert _publish(1, [("t1", data)], budget=2500)
    assert _publish(1, [("t2", data)], budget=2500)  # 2000 of 2500
    assert not _publish(1, [("t3", data)], budget=2500)  # 3000: waits for room
    assert _publish(1, [("t3", data)], budget=0)  # no byte bound: the count alone
    assert r.hlen(keys.pending(1)) == 3


def test_a_task_larger_than_the_budget_travels_alone_when_nothing_waits(r: redis.Redis) -> None:
    big = '"' + "x" * 9998 + '"'
    assert _publish(1, [("big", big)], budget=1000)  # nothing waits: it goes, not blocking the run
    assert not _publish(1, [("small", '"a"')], budget=1000)  # now it waits, over the budget
    r.set(keys.held(1), 1)  # a device took it: nothing waits again
    assert _publish(1, [("small", '"a"')], budget=1000)


def test_messages_bundle_tasks_up_to_a_size_then_a_big_task_travels_alone() -> None:
    small = [(f"s{i}", "x" * 1000) for i in range(10)]
    assert [len(g) for g in _groups(small, 4)] == [4, 4, 2]  # the count bounds small tasks
    big = [(f"b{i}", "x" * (MESSAGE_BYTES // 2 + 1)) for i in range(3)]
    assert [len(g) for g in _groups(big, 500)] == [1, 1, 1]
    huge = [("h", "x" * (3 * MESSAGE_BYTES)), ("s", "x")]
    assert [len(g) for g in _groups(huge, 500)] == [1, 1]


def test_a_step_takes_items_up_to_its_share_of_the_budget(r: redis.Redis) -> None:
    arrays = iter(np.zeros(100 * KB, dtype=np.uint8) for _ in range(20))
    feed = _Feed(1, arrays, runtime.ledger().stats(1), held_known=True)
    one = len(codec.encode(np.zeros(100 * KB, dtype=np.uint8)))
    taken = feed.take(20, runtime.store(), max_bytes=3 * one)
    assert len(taken) == 3
    assert len(feed.take(20, runtime.store(), max_bytes=1)) == 1  # at least one
    assert feed.largest == one


def test_the_byte_check_is_asked_for_only_when_the_count_does_not_bound_the_bytes() -> None:
    feed = _Feed(1, iter(()), ChannelStats(), held_known=True)
    feed.largest = 1000
    assert feed.byte_budget(100_000, channel_size=50) == 0  # 50 x 1000 bytes fit: no sum in Redis
    assert feed.byte_budget(100_000, channel_size=500) == 100_000
    assert feed.byte_budget(None, channel_size=500) == 0


@pytest.mark.timeout(300)
def test_a_run_of_arrays_keeps_redis_within_the_channels_byte_budget(
    procs: Processes, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty 256 KiB arrays, ChannelSize 50 (the count alone would let all of them wait) and
    slow devices: with a 2 MiB budget Redis grows by a few budgets, not by the whole run; every
    array's sum comes back once."""
    budget = 2 * MB
    monkeypatch.setenv("MUTITASK_CHANNEL_BYTES", str(budget))
    fresh_settings()
    for n in (1, 2):
        procs.start(worker_command(f"device{n}@%h", include="array_channel"), f"device{n}")
    for n in (1, 2):
        wait_until(device_is_up(f"device{n}@{HOST}"), 60, f"device{n} to start")
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 256, 256 * KB, dtype=np.uint8) for _ in range(40)]
    text = len(codec.encode(arrays[0]))  # one task's data as it travels
    start = int(r.info("memory")["used_memory"])
    peak = start
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.wait(0.01):
            peak = max(peak, int(r.info("memory")["used_memory"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    thread, out = run_in_thread(arrays, channel_size=50)  # type: ignore[arg-type]
    thread.join(240)
    sampling.set()
    sampler.join()
    assert not thread.is_alive(), "the run did not complete"
    summary = out["summary"]
    assert (summary.published, summary.succeeded, summary.failed) == (40, 40, 0)
    assert sorted(mt.results(1, limit=None)) == sorted(int(a.sum()) for a in arrays)
    # While tasks wait, the outstanding data (the devices' too) stays within the budget plus one
    # step (a quarter of it); when nothing waits, it is what the devices hold (two messages a
    # slot) plus a step. Redis keeps it twice (the books and the message), and for a moment
    # again in its clients' buffers (the step's EVALSHA carries a step twice; each device's
    # fetch and its kombu "unacked" copy one task each); its allocator rounds big strings up.
    held = 2 * 2 * text
    step = max(budget // 4, text)
    buffers = 2 * step + 2 * 2 * text
    bound = int(1.25 * (2 * (max(budget, held) + step) + buffers)) + 2 * MB
    assert peak - start <= bound, f"Redis grew by {peak - start} bytes (bound {bound}, one task {text})"
    assert 40 * text * 2 > 2 * bound  # the count alone (all forty waiting) would pass it twice over


def test_a_big_tasks_data_stays_in_the_books_and_its_message_small(r: redis.Redis) -> None:
    """Its message names it (the device reads the data from pending:<ch>, once); small tasks
    beside it travel in the message, spliced in as JSON."""
    big = codec.encode(np.arange(100 * KB, dtype=np.uint8))
    runtime.ledger().publish(1, [("big", big), ("small", '"a"')], batch=2)
    (message,) = r.lrange(keys.queue(1), 0, -1)
    assert len(message) < 4 * KB
    assert messages.carried(json.loads(message)) == (1, [("big", ""), ("small", '"a"')])
    assert r.hget(keys.pending(1), "big") == big


def test_a_device_reads_a_tasks_data_from_the_books_and_skips_one_finished_elsewhere(r: redis.Redis) -> None:
    from mutitask_celery.device.tasks import _task_data

    r.hset(keys.pending(1), "big", '"data"')
    got = _task_data(1, [["big", None, messages.REF], ["gone", None, messages.REF], ["small", '"a"']])
    assert got == [("big", b'"data"'), ("gone", None), ("small", '"a"')]


def test_a_task_too_long_for_redis_is_dead_lettered_with_its_start_and_nothing_else_lost(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A str past codec.MAX_TEXT cannot travel; its record keeps the start of it (the whole of
    it could not be written either), and the items around it go on."""
    monkeypatch.setattr(codec, "MAX_TEXT", 5000)
    feed = _Feed(1, iter(["before", "y" * 8000, "after"]), ChannelStats(), held_known=True)
    items = feed.take(10, runtime.store())
    assert [codec.decode(data) for _, data in items] == ["before", "after"]
    (record,) = mt.failed(1)
    assert record.reason.startswith("unserializable:") and "MAX_TEXT" in record.reason
    assert str(record.data).startswith("'yyy") and len(str(record.data)) < 5000


def test_a_big_array_travels_as_a_frame_and_its_dead_letter_reads_reloads_and_runs_as_it_was(
    r: redis.Redis,
) -> None:
    """The books keep a big array's memory as it lies (no base64); a failure's record reads back
    the same array (the API, the web page's text), and a reload feeds it by reference again,
    the feeding process reading no data."""
    from mutitask_celery.books.ledger import Outcome
    from mutitask_celery.connection import raw_twin
    from mutitask_celery.device.tasks import _task_data
    from mutitask_celery.web import views

    array = np.arange(256 * KB, dtype=np.int32).reshape(512, 512)
    (item,) = _Feed(1, iter([array]), ChannelStats(), held_known=True).take(1, runtime.store(), binary=True)
    task_id, data = item
    assert codec.is_frame(data) and len(data) < array.nbytes + KB
    assert _publish(1, [item], budget=0)
    assert raw_twin(r).hget(keys.pending(1), task_id) == data
    (message,) = r.lrange(keys.queue(1), 0, -1)
    assert len(message) < 4 * KB and '"shape":[512,512]' in json.loads(message)["headers"]["argsrepr"]
    ((_, read),) = _task_data(1, [[task_id, None, messages.REF]])
    assert np.array_equal(codec.decode(read), array)  # what the device runs
    r.delete(keys.queue(1))

    runtime.ledger().finish(1, "device1@h", [Outcome(task_id, ok=False, reason="ValueError: no")])
    (record,) = mt.failed(1)
    assert np.array_equal(record.data, array) and record.data.dtype == array.dtype
    assert np.array_equal(runtime.store().get(task_id).data, array)
    assert views.dead_record(task_id)["data"]["text"].startswith("[[0, 1, 2")

    assert mt.reload_failed(1) == 1
    (message,) = r.lrange(keys.queue(1), 0, -1)
    assert messages.carried(json.loads(message)) == (1, [(task_id, "")])  # by reference, again
    assert raw_twin(r).hget(keys.pending(1), task_id) == data and mt.failed(1) == []


def test_big_arguments_go_to_redis_uncopied_and_whole(r: redis.Redis, redis_url: str) -> None:
    """Our clients send a big bytes argument as it is (see connection._Packer): commands,
    pipelines and scripts store it whole, beside small ones packed the usual way."""
    from mutitask_celery.connection import BIG_ARGUMENT, raw_twin, redis_client

    client = redis_client(redis_url)
    big = bytes(range(256)) * (BIG_ARGUMENT // 64)
    client.set("big", big)
    pipe = client.pipeline(transaction=True)
    pipe.set("small", "é")
    pipe.hset("h", mapping={"a": big + b"!", "b": "x"})
    pipe.execute()
    client.eval("redis.call('SET', KEYS[1], ARGV[1]); return 1", 1, "scripted", big)
    raw = raw_twin(client)
    assert raw.mget("big", "small", "scripted") == [big, "é".encode(), big]
    assert raw.hgetall("h") == {b"a": big + b"!", b"b": b"x"}
