"""The books of every channel, kept in Redis, and the atomic steps that change them.

A task is *outstanding* from the moment it is published until a device
finishes it: it sits in ``pending:<ch>`` with its data. Finishing is one Lua
script: it removes the task from ``pending`` and, in the same step, appends the
result (default save function) or writes the dead-letter record, and counts.
So a result is saved once and a failure recorded once, even when a message is
delivered twice (the second finish finds nothing pending and is counted as a
duplicate run). The server's back-pressure reads ``HLEN pending``, which works
whatever the broker is.

On the Redis broker a task enters the books and its queue in one transaction;
on another broker (RabbitMQ) it enters the books and a journal first, and
:mod:`.publisher` sends it (see there, and :meth:`Ledger.resend_unsent`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from celery import Celery

from . import keys, messages
from .connection import LUA_NOW, text
from .publisher import BrokerPublisher

log = logging.getLogger(__name__)

NOTIFY_KEEP = 64  # wake-up tokens kept per channel; the server only needs one
UNSENT_GRACE = 10.0  # seconds after which a journal entry is a publisher's that died (a call takes ms)
UNSENT_BATCH = 500

_FINISH = ("""
local rec_prefix, now, device, channel, busy = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local ok, failed, dup = 0, 0, 0
for i = 7, #ARGV, 5 do
  local kind, id, result, reason, tb = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local data = redis.call('HGET', KEYS[1], id)
  if not data then
    dup = dup + 1
  else
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[12], id)
    local meta = redis.call('HGET', KEYS[2], id)
    if meta then redis.call('HDEL', KEYS[2], id) end
    if kind == 'ok' then
      if result ~= '' then redis.call('RPUSH', KEYS[5], result) end
      ok = ok + 1
    else
      local failures, first = 1, now
      if meta then
        local f, t = string.match(meta, '^(%d+)|(.+)$')
        if f then failures = tonumber(f) + 1; first = t end
      end
      redis.call('HSET', rec_prefix .. id, 'v', '1', 'id', id, 'channel', channel,
        'data', data, 'reason', reason, 'traceback', tb, 'device', device,
        'first_failed', first, 'last_failed', now, 'failures', failures, 'result', result)
      redis.call('ZADD', KEYS[6], now, id)
      redis.call('ZADD', KEYS[7], now, id)
      redis.call('SADD', KEYS[8], channel)
      failed = failed + 1
    end
  end
end
if ok > 0 then redis.call('HINCRBY', KEYS[3], 'succeeded', ok) end
if failed > 0 then redis.call('HINCRBY', KEYS[3], 'failed', failed) end
if dup > 0 then redis.call('HINCRBY', KEYS[3], 'duplicates', dup) end
redis.call('HINCRBY', KEYS[3], 'messages', 1)
redis.call('HINCRBY', KEYS[3], 'timed', ok + failed + dup)
redis.call('HINCRBYFLOAT', KEYS[3], 'busy', busy)
local done = redis.call('HINCRBY', KEYS[9], device, ok + failed + dup)
if ARGV[5] ~= '' then redis.call('HDEL', KEYS[11], ARGV[5]) end
redis.call('HSET', KEYS[10], device, """ + LUA_NOW + """)
if ok + failed > 0 then
  redis.call('LPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], 0, NOTIFY_LAST)
end
return {ok, failed, dup, done}
""").replace("NOTIFY_LAST", str(NOTIFY_KEEP - 1))


@dataclass(frozen=True)
class Outcome:
    """How one task ended on a device.

    ``result`` is the JSON-encoded result for the default save function to
    append (``''`` when a user's save function already took it, or for a
    failure without a result); ``reason`` is empty for a success.
    """

    task_id: str
    ok: bool
    result: str = ""
    reason: str = ""
    traceback: str = ""


class Finished(NamedTuple):
    """What one finish step did."""

    succeeded: int
    failed: int
    duplicates: int
    device_done: int  # the device's finished-task count after this step (see integrity)


@dataclass(frozen=True)
class ChannelStats:
    """Counters of a channel since its keys were created."""

    published: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    reloaded: int = 0
    messages: int = 0  # messages finished (one carries one or more tasks)
    timed: int = 0  # tasks whose run time is in ``busy``
    busy: float = 0.0  # seconds devices spent running tasks


class Ledger:
    """Reads and changes the books of the channels in one Redis database."""

    def __init__(self, client: redis.Redis, app: Celery, broker_is_store: bool = True,
                 publisher: BrokerPublisher | None = None) -> None:
        self.client = client
        self.app = app
        self.broker_is_store = broker_is_store
        # Another broker: its publisher (shared with the dead-letter store), None on this Redis.
        self.publisher = None if broker_is_store else (publisher or BrokerPublisher(app))
        self._finish = client.register_script(_FINISH)

    def outstanding(self, channel: int) -> int:
        """Tasks of the channel published (or reloaded) and not yet finished."""
        return int(self.client.hlen(keys.pending(channel)))

    def stats(self, channel: int) -> ChannelStats:
        raw = self.client.hgetall(keys.stats(channel))
        fields = ChannelStats.__dataclass_fields__
        values: dict[str, Any] = {k: (float(v) if k == "busy" else int(v)) for k, v in raw.items() if k in fields}
        return ChannelStats(**values)

    def publish(self, channel: int, items: Sequence[messages.Item], batch: int = 1) -> None:
        """Enter ``items`` in the books and put them on the channel's queue, ``batch`` tasks a message."""
        if not items:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.pending(channel), mapping=dict(items))
        pipe.hincrby(keys.stats(channel), "published", len(items))
        self._send(channel, items, pipe, batch)

    def _send(self, channel: int, items: Sequence[messages.Item], pipe: redis.client.Pipeline,
              batch: int = 1) -> None:
        """Queue the items, ``batch`` a message; on this Redis, in the same transaction as ``pipe``."""
        queue = keys.queue(channel)
        groups = [items[i:i + batch] for i in range(0, len(items), max(1, batch))]
        if self.publisher is None:
            pipe.lpush(queue, *[messages.build(self.app, queue, channel, group) for group in groups])
            pipe.execute()
            return
        # Another broker (e.g. RabbitMQ): journal, publish (confirmed), then clear the journal.
        ids = [task_id for task_id, _ in items]
        pipe.zadd(keys.unsent(channel), dict.fromkeys(ids, time.time()))
        pipe.execute()
        self.publisher.send(queue, channel, groups)
        self.client.zrem(keys.unsent(channel), *ids)

    def republish(self, channel: int, task_ids: Sequence[str]) -> int:
        """Put outstanding tasks on the queue again (their data from the books); returns how many."""
        data = self.client.hmget(keys.pending(channel), list(task_ids))
        items = [(t, text(d)) for t, d in zip(task_ids, data, strict=True) if d is not None]
        if items:
            self._send(channel, items, self.client.pipeline(transaction=True))
        return len(items)

    def resend_unsent(self, channels: Sequence[int], grace: float = UNSENT_GRACE) -> int:
        """Publish again what a publisher that died left in the journal; returns how many tasks.

        Only entries older than ``grace`` seconds: a live publisher clears its own
        within milliseconds. Tasks no longer outstanding are just dropped from it.
        """
        if self.publisher is None:
            return 0
        resent = 0
        for channel in channels:
            ids = [str(task_id) for task_id in self.client.zrangebyscore(
                keys.unsent(channel), "-inf", time.time() - grace, start=0, num=UNSENT_BATCH)]
            if not ids:
                continue
            n = self.republish(channel, ids)
            self.client.zrem(keys.unsent(channel), *ids)
            if n:
                log.warning("channel %d: %d task(s) were in the books but never reached the broker "
                            "(their publisher died): publishing them again", channel, n)
            resent += n
        return resent

    def finish(self, channel: int, device: str, outcomes: Iterable[Outcome],
               message_id: str = "", busy: float = 0.0) -> Finished:
        """Record outcomes atomically; returns what the step did.

        ``message_id`` (the Celery message that carried them) leaves the
        device's in-hand list in the same step; ``busy`` (seconds the tasks
        took) feeds the producer's choice of how many tasks a message carries.
        """
        argv: list[str | float] = [keys.DEAD_RECORD_PREFIX, repr(time.time()), device, str(channel), message_id,
                                   repr(float(busy))]
        for o in outcomes:
            argv += ["ok" if o.ok else "fail", o.task_id, o.result, o.reason, o.traceback]
        if len(argv) == 6:
            return Finished(0, 0, 0, 0)
        ks = [
            keys.pending(channel), keys.meta(channel), keys.stats(channel), keys.notify(channel),
            keys.results(channel), keys.dead_index(), keys.dead_index(channel), keys.DEAD_CHANNELS,
            keys.DEVICES_DONE, keys.DEVICES_SEEN, keys.inhand(device), keys.lost(channel),
        ]
        return Finished(*(int(n) for n in self._finish(keys=ks, args=argv)))

    def wait_for_progress(self, channels: Sequence[int], timeout: float) -> None:
        """Block until a device finishes a task of one of ``channels``, or ``timeout`` passes."""
        if channels:
            self.client.blpop([keys.notify(c) for c in channels], timeout=max(timeout, 0.01))
