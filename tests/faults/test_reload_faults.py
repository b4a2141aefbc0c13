"""A reload killed halfway with SIGKILL loses nothing and doubles nothing; its tasks go back
through back-pressure (the channel's backlog), never flooding the channel."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import redis
from helpers.paths import ROOT

import mutitask_celery as mt
from mutitask_celery import keys, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import ChannelBooks

sys.path.insert(0, str(ROOT / "bench"))
from fill import fill_dead_letters  # noqa: E402

N = 30_000


def queued_ids(r: redis.Redis, channel: int) -> list[str]:
    ids = []
    for raw in r.lrange(keys.queue(channel), 0, -1):
        args = messages.body_of(json.loads(raw))[0]
        ids += [item[0] for item in args[1]]
    return ids


def back(r: redis.Redis, channel: int) -> list[str]:
    """Reloaded tasks: in the channel's backlog, or fed into the channel already."""
    return [*r.zrange(keys.backlog(channel), 0, -1), *queued_ids(r, channel)]


def test_reload_killed_halfway_then_finished(r: redis.Redis, redis_url: str) -> None:
    ids = set(fill_dead_letters(N))
    assert mt.failed_count() == N and r.llen(keys.queue(1)) == 0
    reload = subprocess.Popen([sys.executable, "-m", "mutitask_celery", "failed", "reload", "--all"])
    try:
        # A page of the reload takes tens of milliseconds and the whole of it a few pages: look
        # every millisecond (not with wait_until's growing delays), so the kill lands halfway.
        deadline = time.monotonic() + 60
        while mt.failed_count() > N * 0.8 and reload.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        reload.send_signal(signal.SIGKILL)
    finally:
        reload.wait()
    assert reload.returncode == -signal.SIGKILL, "the reload finished before it could be killed"
    in_store = set(r.zrange(keys.dead_index(), 0, -1))
    in_queue = back(r, 1)
    assert 0 < len(in_store) < N
    assert len(in_store) + len(in_queue) == N  # nothing lost...
    assert not in_store & set(in_queue) and len(set(in_queue)) == len(in_queue)  # ...nothing in both, nothing twice
    assert in_store | set(in_queue) == ids

    assert mt.reload_failed() == len(in_store)  # a second reload finishes the job
    final = back(r, 1)
    assert mt.failed_count() == 0 and len(final) == N and set(final) == ids
    assert r.hlen(keys.pending(1)) == N  # every reloaded task is outstanding again in the books
    assert len(queued_ids(r, 1)) <= 50  # but in the channel only as many as its size (the seed's 50)


def test_feeding_a_backlog_another_process_just_emptied_feeds_nothing(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The books said a reload waits in the backlog, then a device fed it before this process
    read it (the chaos soak met it: the server stopped with 'wrong number of arguments for
    hmget'): nothing to feed, no error."""
    ledger = runtime.ledger()
    read = ledger.books

    def stale(channels: list[int]) -> dict[int, ChannelBooks]:
        return {ch: dataclasses.replace(b, backlog=1) for ch, b in read(channels).items()}

    monkeypatch.setattr(ledger, "books", stale)
    assert ledger.feed_backlog(1, 50) == 0
