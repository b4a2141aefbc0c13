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
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from celery import Celery

from . import keys, messages, scripts
from .connection import text
from .publisher import BrokerPublisher

log = logging.getLogger(__name__)

NOTIFY_KEEP = 64  # wake-up tokens kept per channel (lua/dead_letter.lua's wake_server); the server needs one
UNSENT_GRACE = 10.0  # seconds after which a journal entry is a publisher's that died (a call takes ms)
UNSENT_BATCH = 500
PUBLISHER = "server"  # the writer whose publish steps keys.steps keeps (one server per channel)

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
        self._finish = scripts.load(client, "finish")

    def outstanding(self, channel: int) -> int:
        """Tasks of the channel published (or reloaded) and not yet finished."""
        return int(self.client.hlen(keys.pending(channel)))

    def stats(self, channel: int) -> ChannelStats:
        raw = self.client.hgetall(keys.stats(channel))
        fields = ChannelStats.__dataclass_fields__
        values: dict[str, Any] = {k: (float(v) if k == "busy" else int(v)) for k, v in raw.items() if k in fields}
        return ChannelStats(**values)

    def publish(self, channel: int, items: Sequence[messages.Item], batch: int = 1, step: str = "") -> None:
        """Enter ``items`` in the books and put them on the channel's queue, ``batch`` tasks a message.

        ``step``: an id for this publish. Repeated with the same id (the first call's reply
        was lost with the connection), it does nothing if the first call applied.
        """
        if not items:
            return
        field = f"publish:{channel}"
        if step and text(self.client.hget(keys.steps(PUBLISHER), field) or "") == step:
            return  # the transaction applied; only its reply was lost
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.pending(channel), mapping=dict(items))
        pipe.hincrby(keys.stats(channel), "published", len(items))
        pipe.hset(keys.steps(PUBLISHER), field, step or messages.new_task_id())
        self._send(channel, items, pipe, batch)

    def _send(self, channel: int, items: Sequence[messages.Item], pipe: redis.client.Pipeline,
              batch: int = 1, suspect: bool = False) -> None:
        """Queue the items, ``batch`` a message; on this Redis, in the same transaction as ``pipe``."""
        queue = keys.queue(channel)
        groups = [items[i:i + batch] for i in range(0, len(items), max(1, batch))]
        if self.publisher is None:
            pipe.lpush(queue, *[messages.build(self.app, queue, channel, group, suspect) for group in groups])
            pipe.execute()
            return
        # Another broker (e.g. RabbitMQ): journal, publish (confirmed), then clear the journal.
        ids = [task_id for task_id, _ in items]
        pipe.zadd(keys.unsent(channel), dict.fromkeys(ids, time.time()))
        pipe.execute()
        self.publisher.send(queue, channel, groups, suspect)
        self.client.zrem(keys.unsent(channel), *ids)

    def republish(self, channel: int, task_ids: Sequence[str], suspect: bool = False) -> int:
        """Put outstanding tasks on the queue again (their data from the books), one a message;
        returns how many. ``suspect``: see :func:`messages.task_message`."""
        data = self.client.hmget(keys.pending(channel), list(task_ids))
        items = [(t, text(d)) for t, d in zip(task_ids, data, strict=True) if d is not None]
        if items:
            self._send(channel, items, self.client.pipeline(transaction=True), suspect=suspect)
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

    def finish(self, channel: int, device: str, outcomes: Iterable[Outcome], message_id: str = "",
               busy: float = 0.0, step: str = "", writer: str = "") -> Finished:
        """Record outcomes atomically (``lua/finish.lua``); returns what the step did.

        ``message_id`` (the Celery message that carried them) leaves the device's in-hand
        list and the started marks in the same step; ``busy`` (seconds the tasks took)
        feeds the producer's choice of how many tasks a message carries. ``step`` and
        ``writer`` make a retry safe: a call repeated with the same step id by the same
        writer (one thread of the device) returns the first call's result and changes
        nothing, so a lost reply never counts a task twice.
        """
        listed = list(outcomes)
        if not listed:
            return Finished(0, 0, 0, 0)
        argv: list[str | float] = [device, str(channel), message_id, repr(float(busy)), step or messages.new_task_id(),
                                   writer or f"{device}:{threading.get_ident()}"]
        for o in listed:
            argv += ["ok" if o.ok else "fail", o.task_id, o.result, o.reason, o.traceback]
        ks = [
            keys.pending(channel), keys.meta(channel), keys.stats(channel), keys.notify(channel),
            keys.results(channel), keys.dead_index(), keys.dead_index(channel), keys.DEAD_CHANNELS,
            keys.DEVICES_DONE, keys.DEVICES_SEEN, keys.DEVICES_BEATS, keys.inhand(device), keys.lost(channel),
            keys.started(channel), keys.steps(device),
            *[keys.dead_record(o.task_id) for o in listed if not o.ok],
        ]
        return Finished(*(int(n) for n in self._finish(keys=ks, args=argv)))

    def wait_for_progress(self, channels: Sequence[int], timeout: float) -> None:
        """Block until a device finishes a task of one of ``channels``, or ``timeout`` passes."""
        if channels:
            self.client.blpop([keys.notify(c) for c in channels], timeout=max(timeout, 0.01))
