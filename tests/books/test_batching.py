"""Short tasks travel several to a message; each keeps its own outcome. Slow tasks travel alone."""

from __future__ import annotations

import io

import redis
from helpers.processes import Processes
from helpers.runs import expected_double

import mutitask_celery as mt
from mutitask_celery import runtime
from mutitask_celery.books.ledger import MAX_BATCH, ChannelStats
from mutitask_celery.serving import serve
from mutitask_celery.serving.producer import _Batcher


def test_short_tasks_share_messages_and_keep_their_own_outcomes(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1)
    procs.device(2, 1)
    count = 3000
    summary = serve.serve((str(n) for n in range(count)), channel_size=400, stdin=io.StringIO(""), out=io.StringIO())
    stats = runtime.ledger().stats(1)
    assert stats.messages < count / 5  # batched...
    good = [n * 2 for n in range(count) if not expected_double(n)]
    assert sorted(mt.results(1, limit=None)) == good  # ...yet every result saved once
    failed = {int(f.data): f.reason for f in mt.failed(1, limit=None)}
    assert failed == {n: expected_double(n) for n in range(count) if expected_double(n)}  # each failure alone
    assert (summary.succeeded, summary.failed, summary.channels[1].duplicates) == (len(good), len(failed), 0)


def test_slow_tasks_travel_one_per_message(procs: Processes, r: redis.Redis) -> None:
    procs.device(1, 1, "slow", env={"SLOW_SECONDS": "0.1"})
    serve.serve((str(n) for n in range(20)), channel_size=40, stdin=io.StringIO(""), out=io.StringIO())
    stats = runtime.ledger().stats(1)
    assert stats.succeeded == 20 and stats.messages == 20


def test_batch_size_follows_the_measured_task_time() -> None:
    batcher = _Batcher(ChannelStats())
    assert batcher.take(room=1000, waiting=0, channel_size=1000) == _Batcher.PROBE  # not measured yet
    batcher.update(ChannelStats(timed=100, busy=0.01))  # 0.1 ms a task
    assert batcher.batch(1000) == MAX_BATCH and batcher.batch(40) == 40  # no message larger than the channel
    batcher.update(ChannelStats(timed=200, busy=0.01 + 0.1))  # now 1 ms a task: 100 a message
    assert batcher.batch(1000) == 100
    assert batcher.take(room=150, waiting=850, channel_size=1000) == 100  # whole messages only
    assert batcher.take(room=50, waiting=950, channel_size=1000) == 0  # wait for room for one
    batcher.update(ChannelStats(timed=210, busy=0.11 + 10 * 0.5))  # now 0.5 s a task
    assert batcher.batch(1000) == 1
    batcher.update(ChannelStats(timed=220, busy=0.11 + 10 * 0.5 + 10 * 0.05))  # 50 ms: two a message
    assert batcher.batch(1000) == 2
