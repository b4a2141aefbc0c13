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
messages, flagged ``redelivered``, the moment its connection drops (and a
device killed mid-fetch never took the message from the broker's point of
view). What the broker cannot know is how often a task killed its device:
:class:`Redeliveries` counts that from the flag, so a poison task is
dead-lettered there too.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from typing import Any

import redis

from . import keys, messages
from .connection import text
from .ledger import Ledger, Outcome

log = logging.getLogger(__name__)

HEARTBEAT = 2.0
DEAD_AFTER = 10.0
MAX_ATTEMPTS = 3
WORKER_LOST = "worker lost"


def redis_now(client: redis.Redis) -> float:
    """Redis's clock, in which every host's heartbeats are written and judged: the hosts'
    own clocks may disagree by more than ``dead_after``."""
    seconds, micros = client.time()
    return seconds + micros / 1e6

# KEYS: unacked hash, unacked index, queue. ARGV: tag, then the message(s) to queue.
_RESTORE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  for i = 2, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
  return 1
end
return 0
"""


# KEYS: pending, lost, returned of one channel. ARGV[1]: 'back' (a device gives the
# message back untouched) or 'again' (it was redelivered); then task ids. Returns per
# task: -1 not outstanding any more, else the deaths counted so far.
_SETTLE = """
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], id) == 0 then
    redis.call('HDEL', KEYS[3], id)
    out[#out + 1] = -1
  elseif ARGV[1] == 'back' then
    redis.call('HSET', KEYS[3], id, '1')
    out[#out + 1] = 0
  elseif redis.call('HDEL', KEYS[3], id) == 1 then
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  else
    out[#out + 1] = redis.call('HINCRBY', KEYS[2], id, 1)
  end
end
return out
"""


def worker_lost(attempts: int) -> str:
    """The dead-letter reason of a poison task."""
    return f"{WORKER_LOST}: the device died while running it, {attempts} time(s)"


def bury(ledger: Ledger, channel: int, device: str, task_id: str, attempts: int) -> None:
    """Dead-letter a task that killed its device ``attempts`` times (either broker)."""
    log.error("task %s of channel %d killed its device %d times: dead-lettered", task_id, channel, attempts)
    ledger.finish(channel, device, [Outcome(task_id, ok=False, reason=worker_lost(attempts))])


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
        unacked = {text(tag): entry for tag, raw in self.client.hgetall(keys.KOMBU_UNACKED).items()
                   if (entry := _Unacked.parse(text(raw))) is not None}
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
            pipe.hkeys(keys.inhand(text(name)))
        return {text(m) for ids in pipe.execute() for m in ids}

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
        outstanding = {text(t) for t in self.client.hkeys(keys.pending(channel))}
        if not outstanding:
            self._suspects.pop(channel, None)
            return 0
        held = set(held_unacked)
        for raw in self.client.lrange(keys.queue(channel), 0, -1):
            held.update(_queued_ids(text(raw)))
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
        now = redis_now(self.client) if now is None else now
        handled = 0
        for name, seen in self.client.hgetall(keys.DEVICES_SEEN).items():
            try:
                silent = now - float(seen)
            except ValueError:
                continue
            if silent > self.dead_after and self.client.exists(keys.inhand(text(name))):
                log.warning("%s silent for %.0fs: giving its tasks to other devices", text(name), silent)
                handled += self.recover(text(name), seen=text(seen))
        return handled

    def _heartbeat(self, device: str) -> str | None:
        seen = self.client.hget(keys.DEVICES_SEEN, device)
        return None if seen is None else text(seen)

    def recover(self, device: str, seen: str | None = None) -> int:
        """Put back every message ``device`` holds (it is dead, or restarting).

        ``seen``: the heartbeat the caller judged too old. Messages go back only while it is
        still the device's last heartbeat: a device heard from since (back from a network
        cut; noting a message in hand is a heartbeat too) keeps what it holds.
        """
        handled = 0
        for message_id, tag in self.client.hgetall(keys.inhand(device)).items():
            if seen is not None and self._heartbeat(device) != seen:
                log.warning("%s was heard from again: it keeps what it holds", device)
                break
            if self._recover_one(device, text(tag)) and seen is not None:
                seen = self._heartbeat(device)  # the burial's finish wrote it
            self.client.hdel(keys.inhand(device), message_id)
            handled += 1
        return handled

    def _recover_one(self, device: str, tag: str) -> bool:
        """Put one message back; True when its task was buried instead."""
        raw = self.client.hget(keys.KOMBU_UNACKED, tag)
        if raw is None:  # acked meanwhile, or restored by someone else
            return False
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            log.error("unreadable unacked message %s: left for kombu's own restore", tag)
            return False
        found = _payload(message)
        if found is not None:
            channel, items = found
            pipe = self.client.pipeline(transaction=False)
            for task_id, _ in items:
                pipe.hincrby(keys.lost(channel), task_id, 1)
            attempts = pipe.execute()
            if len(items) == 1 and attempts[0] >= self.max_attempts:
                self._bury(device, tag, channel, items[0][0], attempts[0])
                return True
            if len(items) > 1:  # one of them may be the poison: each goes back alone
                singles = [messages.build(self.ledger.app, routing_key, channel, [item]) for item in items]
                self._restore(keys=[keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, routing_key],
                              args=[tag, *singles])
                return False
        message.setdefault("headers", {})["redelivered"] = True
        message.get("properties", {}).setdefault("delivery_info", {})["redelivered"] = True
        self._restore(keys=[keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, routing_key],
                      args=[tag, json.dumps(message)])
        return False

    def _bury(self, device: str, tag: str, channel: int, task_id: str, attempts: int) -> None:
        bury(self.ledger, channel, device, task_id, attempts)
        self._drop_unacked(tag)


class Redeliveries:
    """Poison tasks on a broker that redelivers by itself (RabbitMQ), counted on the device.

    Each redelivery of an outstanding task counts one death in ``lost:<ch>`` (the
    count the Redis reaper keeps; finishing the task clears it), except the first
    redelivery after a device gave the message back untouched (paused, or Redis
    away: ``returned:<ch>``). Only redelivered messages cost a Redis call.
    """

    def __init__(self, client: redis.Redis, ledger: Ledger, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.client = client
        self.ledger = ledger
        self.max_attempts = max_attempts
        self._settle = client.register_script(_SETTLE)

    def _call(self, mode: str, channel: int, task_ids: Sequence[str]) -> list[int]:
        ks = [keys.pending(channel), keys.lost(channel), keys.returned(channel)]
        return [int(n) for n in self._settle(keys=ks, args=[mode, *task_ids])]

    def given_back(self, channel: int, task_ids: Sequence[str]) -> None:
        """The device returns the message untouched: its next delivery is no death."""
        self._call("back", channel, task_ids)

    def settle(self, channel: int, device: str, items: Sequence[messages.Item]) -> bool:
        """Count a death for each task of a redelivered message; True when it must not run.

        It must not when all its tasks are finished (only the acknowledgement was
        lost), when it carries several tasks and one of them killed a device (each
        goes back alone, so a poison task fails alone), or when its one task has now
        killed ``max_attempts`` devices (dead-lettered as ``worker lost``).
        """
        deaths = self._call("again", channel, [task_id for task_id, _ in items])
        alive = [(task_id, n) for (task_id, _), n in zip(items, deaths, strict=True) if n >= 0]
        if not alive:
            return True
        if max(n for _, n in alive) == 0:
            return False
        if len(items) > 1:
            self.ledger.republish(channel, [task_id for task_id, _ in alive])
            return True
        task_id, n = alive[0]
        if n < self.max_attempts:
            return False
        bury(self.ledger, channel, device, task_id, n)
        return True
