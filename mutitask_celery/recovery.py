"""Give a dead device's tasks back within seconds, and bury a poison task.

On a Redis broker, kombu keeps each delivered message in its ``unacked`` hash
until the worker acknowledges it; when a worker dies, kombu hands the message
out again only after the visibility timeout (an hour by default). We do
better: every device notes each message it takes (``inhand:<device>``: message
id -> delivery tag) and beats a heartbeat into ``devices:seen``. A device
whose heartbeat is older than ``dead_after`` seconds is dead, and any device
or server that notices puts its messages back on their queues at once (the
restore is guarded by kombu's own ``HDEL unacked``, so two reapers never
restore one message twice). A device that restarts under the same name
restores what its previous life held.

A task whose device died while running it ``max_attempts`` times is a poison
task (it kills its worker: ``os._exit``, a segfault): it goes to the
dead-letter store with the reason ``worker lost`` instead of going round again.
A last net, the sweep (see :meth:`Reaper.sweep`): kombu takes a message off
the queue (``BRPOP``) and only then records it as unacked, and a device notes
it in hand a moment later still; a device killed in either gap would strand
the task. The server's sweep finds both cases and puts the task back.
Back-pressure keeps the lists it reads short.

On RabbitMQ none of this is needed: the broker redelivers a dead consumer's
messages when its connection drops.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis

from . import keys, messages
from .ledger import Ledger, Outcome

log = logging.getLogger(__name__)

HEARTBEAT = 2.0
DEAD_AFTER = 10.0
MAX_ATTEMPTS = 3
WORKER_LOST = "worker lost"

# KEYS: unacked hash, unacked index, queue. ARGV: tag, then the message(s) to queue.
_RESTORE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  for i = 2, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  return 1
end
return 0
"""


def _payload(message: dict[str, Any]) -> tuple[int, list[messages.Item]] | None:
    """(channel, [(task id, data)]) of one of our messages, or None for anything else."""
    try:
        if message.get("headers", {}).get("task") != "mutitask.run":
            return None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return int(args[0]), [(str(item[0]), str(item[1])) for item in args[1]]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _items(message: dict[str, Any]) -> tuple[int, list[str]] | None:
    """(channel, task ids) of one of our messages, or None for anything else."""
    found = _payload(message)
    return None if found is None else (found[0], [task_id for task_id, _ in found[1]])


def _queued_ids(raw: str) -> list[str]:
    """Task ids in a message waiting on a queue (an envelope as kombu stores it)."""
    try:
        found = _items(json.loads(raw))
    except (ValueError, TypeError, AttributeError):
        return []
    return found[1] if found else []


class _Unacked:
    """One of our messages in kombu's unacked hash, parsed once."""

    def __init__(self, message: dict[str, Any], routing_key: str, channel: int, items: list[messages.Item]) -> None:
        self.message = message
        self.routing_key = routing_key
        self.channel = channel
        self.ids = [task_id for task_id, _ in items]

    @classmethod
    def parse(cls, raw: str) -> _Unacked | None:
        """None for an unreadable entry or another application's message: those are not ours to touch."""
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            return None
        found = _payload(message) if isinstance(message, dict) else None
        return None if found is None else cls(message, str(routing_key), found[0], found[1])


class Reaper:
    """Finds dead devices and puts their messages back (see module docstring)."""

    def __init__(self, client: redis.Redis, ledger: Ledger, dead_after: float = DEAD_AFTER,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.client = client
        self.ledger = ledger
        self.dead_after = dead_after
        self.max_attempts = max_attempts
        self._restore = client.register_script(_RESTORE)
        self._suspects: dict[int, set[str]] = {}
        self._suspect_tags: set[str] = set()

    def sweep(self, channels: Sequence[int]) -> int:
        """Put back what fell between the cracks; returns how many tasks or messages.

        Two cracks, each confirmed at two sweeps in a row (a message crosses
        them in microseconds when all is well): an outstanding task on no
        queue and in no unacked entry (its device died between ``BRPOP`` and
        kombu's unacked record), and an unacked message no device notes in
        hand (it died before noting it).
        """
        unacked = {tag: entry for tag, raw in self.client.hgetall(keys.KOMBU_UNACKED).items()
                   if (entry := _Unacked.parse(raw)) is not None}
        held = {task_id for entry in unacked.values() for task_id in entry.ids}
        noted = self._noted()
        orphans = {tag for tag, entry in unacked.items() if entry.message.get("headers", {}).get("id") not in noted}
        fixed = self._restore_orphans(orphans & self._suspect_tags, unacked)
        self._suspect_tags = orphans - self._suspect_tags
        for channel in channels:
            fixed += self._republish_missing(channel, held)
        return fixed

    def _noted(self) -> set[str]:
        """Message ids some device notes in hand."""
        pipe = self.client.pipeline(transaction=False)
        for name in self.client.hkeys(keys.DEVICES_SEEN):
            pipe.hkeys(keys.inhand(name))
        return {m for ids in pipe.execute() for m in ids}

    def _restore_orphans(self, tags: set[str], unacked: dict[str, _Unacked]) -> int:
        for tag in tags:
            entry = unacked[tag]
            if any(self.client.hmget(keys.pending(entry.channel), entry.ids)):
                log.warning("message %s was taken by a device that died before noting it: restored", tag)
                self._restore(keys=[keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, entry.routing_key],
                              args=[tag, json.dumps(entry.message)])
            else:  # finished, only its acknowledgement was lost with its device
                self._drop_unacked(tag)
        return len(tags)

    def _drop_unacked(self, tag: str) -> None:
        """Acknowledge a message for a device that can no longer do it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(keys.KOMBU_UNACKED, tag)
        pipe.zrem(keys.KOMBU_UNACKED_INDEX, tag)
        pipe.execute()

    def _republish_missing(self, channel: int, held_unacked: set[str]) -> int:
        outstanding = set(self.client.hkeys(keys.pending(channel)))
        if not outstanding:
            self._suspects.pop(channel, None)
            return 0
        held = set(held_unacked)
        for raw in self.client.lrange(keys.queue(channel), 0, -1):
            held.update(_queued_ids(raw))
        missing = outstanding - held
        lost = missing & self._suspects.get(channel, set())
        self._suspects[channel] = missing - lost
        if lost:
            log.warning("channel %d: %d outstanding task(s) were on no queue and in no device's hands "
                        "(a device died while taking them): publishing them again", channel, len(lost))
            self.ledger.republish(channel, sorted(lost))
        return len(lost)

    def reap(self, now: float | None = None) -> int:
        """Recover every device silent for ``dead_after`` seconds; returns messages handled."""
        now = time.time() if now is None else now
        handled = 0
        for name, seen in self.client.hgetall(keys.DEVICES_SEEN).items():
            try:
                silent = now - float(seen)
            except ValueError:
                continue
            if silent > self.dead_after and self.client.exists(keys.inhand(name)):
                log.warning("%s silent for %.0fs: giving its tasks to other devices", name, silent)
                handled += self.recover(name)
        return handled

    def recover(self, device: str) -> int:
        """Put back every message ``device`` holds (it is dead, or restarting)."""
        handled = 0
        for message_id, tag in self.client.hgetall(keys.inhand(device)).items():
            self._recover_one(device, tag)
            self.client.hdel(keys.inhand(device), message_id)
            handled += 1
        return handled

    def _recover_one(self, device: str, tag: str) -> None:
        raw = self.client.hget(keys.KOMBU_UNACKED, tag)
        if raw is None:  # acked meanwhile, or restored by someone else
            return
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            log.error("unreadable unacked message %s: left for kombu's own restore", tag)
            return
        found = _payload(message)
        if found is not None:
            channel, items = found
            pipe = self.client.pipeline(transaction=False)
            for task_id, _ in items:
                pipe.hincrby(keys.lost(channel), task_id, 1)
            attempts = pipe.execute()
            if len(items) == 1 and attempts[0] >= self.max_attempts:
                self._bury(device, tag, channel, items[0][0], attempts[0])
                return
            if len(items) > 1:  # one of them may be the poison: each goes back alone
                singles = [messages.build(self.ledger.app, routing_key, channel, [item]) for item in items]
                self._restore(keys=[keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, routing_key],
                              args=[tag, *singles])
                return
        message.setdefault("headers", {})["redelivered"] = True
        message.get("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
        self._restore(keys=[keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, routing_key],
                      args=[tag, json.dumps(message)])

    def _bury(self, device: str, tag: str, channel: int, task_id: str, attempts: int) -> None:
        reason = f"{WORKER_LOST}: the device died while running it, {attempts} time(s)"
        log.error("task %s of channel %d killed its device %d times: dead-lettered", task_id, channel, attempts)
        self.ledger.finish(channel, device, [Outcome(task_id, ok=False, reason=reason)])
        self._drop_unacked(tag)
