"""Give a dead device's tasks back within seconds, once, and bury a poison task.

On a Redis broker, kombu keeps each delivered message in its ``unacked`` hash
until the worker acknowledges it; when a worker dies, kombu hands the message
out again only after the visibility timeout. We do better: every device notes
each message it takes (``inhand:<device>``: message id -> "delivery tag|score",
the score telling this delivery from a later one under the same tag), marks
the messages whose tasks it starts (``started:<ch>``), and beats a heartbeat
into ``devices:seen`` / ``devices:beats`` from a thread that does nothing else.
A device silent for ``dead_after`` seconds is dead; the server and every other
device look for such devices every heartbeat period, and put what they held
back on the queues (:meth:`Reaper.reap`). A device that restarts under the same
name does the same for its previous life at once.

Each message goes back in one Lua step, ``lua/recover.lua``, that decides,
counts and acts together, fenced three ways: the heartbeat the reaper judged
too old must still be the device's last (a device heard from since keeps what
it holds), the note must still be the one read (another reaper acted first),
and kombu's entry must still be the noted delivery. So of many reapers acting
at once exactly one takes a message back, and only that one counts a death.

Only started messages are charged: each of their tasks counts one death and
goes back alone, flagged *suspect*, so that a device runs it alone
(:mod:`.isolation`); a held or queued message goes back untouched. A task that
has died alone ``max_attempts`` times is a poison task (it kills its worker:
``os._exit``, a segfault): it goes to the dead-letter store with the reason
``worker lost`` in that same step. The prefork pool loses a child, not the
device: the device takes the message back with the same step, unfenced
(:meth:`Reaper.worker_lost`).

A last net, the sweep (see :meth:`Reaper.sweep`): kombu takes a message off
the queue (``BRPOP``) and only then records it as unacked, and a device notes
it in hand a moment later still; a device killed in either gap would strand
the task. The server's sweep finds both cases and puts the task back.

On RabbitMQ none of this is needed: the broker redelivers a dead consumer's
messages, flagged ``redelivered``, the moment its connection drops. What the
broker cannot know is how often a task killed its device: :class:`Redeliveries`
counts that from the flag and the start marks, so a poison task is
dead-lettered there too.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Sequence
from enum import Enum
from typing import Any, cast

import redis

from mutitask_celery import keys
from mutitask_celery.books import messages, scripts
from mutitask_celery.books.ledger import Ledger, Outcome
from mutitask_celery.connection import redis_now, text

log = logging.getLogger(__name__)

HEARTBEAT = 2.0
DEAD_AFTER = 10.0
MAX_ATTEMPTS = 3
WORKER_LOST = "worker lost"  # lua/recover.lua writes the same reason
REAP_BATCH = 100  # silent devices looked at per reap (the next reap takes the rest)
SAFETY_SWEEP = 300.0  # seconds between sweeps when no device died: a last net for what nothing announced
FORGET_AFTER = 86400.0  # seconds of silence, with nothing in hand, before the roster drops a name


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


def _redelivered(message: dict[str, Any]) -> dict[str, Any]:
    """The message as it goes back on its queue: flagged redelivered, with a delivery tag of its own."""
    message.setdefault("headers", {})["redelivered"] = True
    properties = message.setdefault("properties", {})
    properties.setdefault("delivery_info", {})["redelivered"] = True
    properties["delivery_tag"] = messages.new_delivery_tag()
    return message


def _noted_channel(noted: str) -> int:
    """The channel in a device's note ("tag|score|tasks|channel"); 0 for an old note without one."""
    try:
        return int(noted.split("|")[3])
    except (IndexError, ValueError):
        return 0


def _noted_score(noted: str) -> float | None:
    """The delivery's ``unacked_index`` score in a device's note ("tag|score"), None if it has none."""
    try:
        return float(noted.split("|")[1])
    except (IndexError, ValueError):
        return None


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
        self.items = items
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


class Recovered(str, Enum):
    """What became of one message a reaper tried to take back (``lua/recover.lua``)."""

    ALIVE = "alive"  # its device was heard from since it was judged dead: it keeps the message
    MOVED = "moved"  # another reaper (or the device) acted on it first
    CHANGED = "changed"  # started meanwhile: read it again
    GONE = "gone"  # acknowledged, or its tag names a later delivery: the note was stale
    RESTORED = "restored"  # back on its queue untouched: it had not started, no death
    SUSPECTS = "suspects"  # it had started: each task back alone, one death each
    BURIED = "buried"  # its one task died alone max_attempts times: dead-lettered


class Reaper:
    """Finds dead devices and puts their messages back (see module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        ledger: Ledger,
        dead_after: float = DEAD_AFTER,
        max_attempts: int = MAX_ATTEMPTS,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.dead_after = dead_after
        self.max_attempts = max_attempts
        self.forget_after = forget_after
        self._restore = scripts.load(client, "restore")
        self._recover = scripts.load(client, "recover")
        self._retire = scripts.load(client, "retire")
        self._forget = scripts.load(client, "forget")
        self._drop = scripts.load(client, "drop_note")
        self._suspects: dict[int, set[str]] = {}
        self._suspect_tags: set[str] = set()
        self._due_seen: int | None = None
        self._sweeps_left = 0
        self._next_safety = 0.0

    def sweep_if_due(self, channels: Sequence[int]) -> int:
        """Sweep (see :meth:`sweep`) only when it can find something: the cracks it mends open
        only when a device process dies, and a death is announced (``sweep:due``, by the reaper
        that finds a silent device and by a device that starts again). Then it sweeps twice in
        a row, as a crack is confirmed at two sweeps; otherwise once every
        :data:`SAFETY_SWEEP` seconds. So recovery costs the server what changed, not what is
        outstanding."""
        due = int(self.client.get(keys.SWEEP_DUE) or 0)
        now = time.monotonic()
        if due != self._due_seen or now >= self._next_safety:
            self._due_seen, self._sweeps_left, self._next_safety = due, 2, now + SAFETY_SWEEP
        if self._sweeps_left <= 0:
            return 0
        found = self.sweep(channels)  # a sweep that failed (Redis away or full) is due again next round
        self._sweeps_left -= 1
        return found

    def announce_death(self) -> None:
        """A device process died (or restarted): the server should sweep."""
        self.client.incr(keys.SWEEP_DUE)

    def sweep(self, channels: Sequence[int]) -> int:
        """Put back what fell between the cracks; returns how many tasks or messages.

        Two cracks, each confirmed at two sweeps in a row (a message crosses
        them in microseconds when all is well): an outstanding task on no
        queue and in no unacked entry (its device died between ``BRPOP`` and
        kombu's unacked record), and an unacked message no device notes in
        hand (it died before noting it).
        """
        unacked = {
            text(tag): entry
            for tag, raw in self.client.hgetall(keys.KOMBU_UNACKED).items()
            if (entry := _Unacked.parse(text(raw))) is not None
        }
        held = {task_id for entry in unacked.values() for task_id in entry.ids}
        noted = self._noted()
        orphans = {tag for tag, entry in unacked.items() if entry.message.get("headers", {}).get("id") not in noted}
        fixed = self._restore_orphans(orphans & self._suspect_tags, unacked)
        self._suspect_tags = orphans - self._suspect_tags
        for channel in channels:
            fixed += self._republish_missing(channel, held)
        return fixed

    def _noted(self) -> set[str]:
        """Message ids some device notes in hand (devices alive or recently dead hold them all)."""
        pipe = self.client.pipeline(transaction=False)
        for name in cast("list[str]", self.client.zrange(keys.DEVICES_BEATS, 0, -1)):
            pipe.hkeys(keys.inhand(name))
        return {text(m) for ids in pipe.execute() for m in ids}

    def _restore_orphans(self, tags: set[str], unacked: dict[str, _Unacked]) -> int:
        for tag in tags:
            entry = unacked[tag]
            if any(self.client.hmget(keys.pending(entry.channel), entry.ids)):
                log.warning("message %s was taken by a device that died before noting it: restored", tag)
                self._restore(
                    keys=[keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, entry.routing_key],
                    args=[tag, json.dumps(_redelivered(entry.message))],
                )
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
        if lost:
            log.warning(
                "channel %d: %d outstanding task(s) were on no queue and in no device's hands "
                "(a device died while taking them): publishing them again",
                channel,
                len(lost),
            )
            self.ledger.republish(channel, sorted(lost))
        self._suspects[channel] = missing - lost  # after: a republish that failed (Redis full) is retried
        return len(lost)

    def reap(self, now: float | None = None) -> int:
        """Recover every device silent for ``dead_after`` seconds; returns messages handled.

        Looks only at devices alive or recently dead (``devices:beats``); a dead device
        whose messages are all back leaves that set.
        """
        now = redis_now(self.client) if now is None else now
        handled = 0
        silent = cast(
            "list[tuple[str, float]]",
            self.client.zrangebyscore(
                keys.DEVICES_BEATS, "-inf", f"({now - self.dead_after}", start=0, num=REAP_BATCH, withscores=True
            ),
        )
        if silent:
            self.announce_death()
        for name, beat in silent:
            seen = self.client.hget(keys.DEVICES_SEEN, name)
            if seen is None:  # forgotten meanwhile
                self.client.zrem(keys.DEVICES_BEATS, name)
                continue
            if self.client.exists(keys.inhand(name)):
                log.warning("%s silent for %.0fs: giving its tasks to other devices", name, now - beat)
                handled += self.recover(name, seen=text(seen))
            self._retire(keys=[keys.DEVICES_SEEN, keys.DEVICES_BEATS, keys.inhand(name)], args=[name, text(seen)])
        return handled

    def recover(self, device: str, seen: str | None = None) -> int:
        """Put back every message ``device`` holds (it is dead, or restarting); returns how many
        were taken back here.

        ``seen``: the heartbeat the caller judged too old. Messages go back only while it is
        still the device's last heartbeat: a device heard from since (back from a network
        cut; taking or starting a message is a heartbeat too) keeps what it holds. None: the
        device's next life acts, no fence.
        """
        handled = 0
        for message_id, noted in cast("dict[str, str]", self.client.hgetall(keys.inhand(device))).items():
            outcome = self._take_back(device, seen or "", message_id, noted)
            if outcome is Recovered.ALIVE:
                log.warning("%s was heard from again: it keeps what it holds", device)
                break
            handled += outcome in (Recovered.RESTORED, Recovered.SUSPECTS, Recovered.BURIED)
        return handled

    def worker_lost(self, device: str, message_id: str) -> Recovered:
        """A pool child of the live ``device`` died running ``message_id`` (prefork): take the
        message back as for a dead device (the child's death is charged), instead of
        Celery's requeue, which would count nothing and loop forever on a poison task."""
        noted = self.client.hget(keys.inhand(device), message_id)
        if noted is None:
            return Recovered.GONE
        return self._take_back(device, "", message_id, text(noted))

    def _take_back(self, device: str, judged: str, message_id: str, noted: str) -> Recovered:
        """One message back in one fenced step (``lua/recover.lua``), read again if it started meanwhile."""
        for _ in range(3):
            outcome = self._take_back_once(device, judged, message_id, noted)
            if outcome is not Recovered.CHANGED:
                return outcome
        return Recovered.CHANGED  # a live device keeps starting it: it is not dead, leave it

    def _take_back_once(self, device: str, judged: str, message_id: str, noted: str) -> Recovered:
        tag = noted.split("|", 1)[0]
        raw = self.client.hget(keys.KOMBU_UNACKED, tag)
        entry = _Unacked.parse(text(raw)) if raw is not None else None
        if entry is None:
            if raw is not None:
                log.error("unreadable unacked message %s: left for kombu's own restore", tag)
            self._drop_note(device, message_id, noted)
            return Recovered.GONE
        channel = entry.channel
        mark = text(self.client.hget(keys.started(channel), message_id) or "")
        if mark in (device, f"{device}|alone"):
            queued = [
                messages.build(self.ledger.app, entry.routing_key, channel, [item], suspect=True)
                for item in entry.items
            ]
        else:
            queued = [json.dumps(_redelivered(entry.message))]
        ks = [
            keys.DEVICES_SEEN,
            keys.inhand(device),
            keys.KOMBU_UNACKED,
            keys.KOMBU_UNACKED_INDEX,
            entry.routing_key,
            keys.started(channel),
            keys.lost(channel),
            keys.pending(channel),
            keys.meta(channel),
            keys.stats(channel),
            keys.dead_index(),
            keys.dead_index(channel),
            keys.DEAD_CHANNELS,
            keys.notify(channel),
            keys.held(channel),
            *[keys.dead_record(t) for t in entry.ids],
        ]
        argv: list[str | int] = [
            device,
            judged,
            message_id,
            noted,
            tag,
            mark,
            self.max_attempts,
            channel,
            len(entry.ids),
            *entry.ids,
            *queued,
        ]
        reply = self._recover(keys=ks, args=argv)
        outcome, deaths = Recovered(text(reply[0])), int(reply[1])
        if outcome is Recovered.BURIED:
            log.error(
                "task %s of channel %d killed its device %d times: dead-lettered as %r",
                entry.ids[0],
                channel,
                deaths,
                WORKER_LOST,
            )
        elif outcome is Recovered.SUSPECTS:
            log.warning(
                "%s died running %d task(s) of channel %d: each goes back alone", device, len(entry.ids), channel
            )
        return outcome

    def drop_stale_notes(self, device: str) -> int:
        """Drop ``device``'s notes of deliveries kombu no longer holds for it (acknowledged, or put
        back by kombu at the device's warm shutdown); returns how many."""
        notes = cast("dict[str, str]", self.client.hgetall(keys.inhand(device)))
        pipe = self.client.pipeline(transaction=False)
        for noted in notes.values():
            pipe.zscore(keys.KOMBU_UNACKED_INDEX, noted.split("|", 1)[0])
        dropped = 0
        for (message_id, noted), score in zip(notes.items(), pipe.execute(), strict=True):
            held = score is not None and _noted_score(noted) == float(score)
            if not held:
                self._drop_note(device, message_id, noted)
                dropped += 1
        return dropped

    def _drop_note(self, device: str, message_id: str, noted: str) -> None:
        """Forget a note whose delivery is no longer kombu's to give (acknowledged, or unreadable)."""
        channel = _noted_channel(noted)
        self._drop(keys=[keys.inhand(device), keys.held(channel), keys.started(channel)], args=[message_id, noted, "0"])

    def forget_silent(self, now: float | None = None) -> list[str]:
        """Drop from the roster every device silent for ``forget_after`` seconds with nothing in
        hand (container names change at every restart: the roster must not grow for ever);
        returns their names. ``mutitask status`` counts them."""
        now = redis_now(self.client) if now is None else now
        forgotten = []
        for name, seen in self.client.hgetall(keys.DEVICES_SEEN).items():
            try:
                old = now - float(seen) > self.forget_after
            except ValueError:
                continue
            name = text(name)
            if old and self._forget(
                keys=[
                    keys.DEVICES_SEEN,
                    keys.DEVICES_BEATS,
                    keys.inhand(name),
                    keys.DEVICES_INFO,
                    keys.DEVICES_DONE,
                    keys.DEVICES_WANTED,
                    keys.DEVICES_FORGOTTEN,
                    keys.steps(name),
                ],
                args=[name, text(seen)],
            ):
                forgotten.append(name)
        if forgotten:
            log.info(
                "forgot %d device(s) silent for over %.0fs: %s",
                len(forgotten),
                self.forget_after,
                ", ".join(sorted(forgotten)),
            )
        return forgotten


class Verdict(str, Enum):
    """What a device does with a message a broker redelivered (:meth:`Redeliveries.settle`)."""

    RUN = "run"
    RUN_ALONE = "run alone"  # a suspect: it was running when a device died
    SKIP = "skip"  # finished already, split into suspects, or buried


class Redeliveries:
    """Poison tasks on a broker that redelivers by itself (RabbitMQ), counted on the device.

    A redelivered message that a device had started (``started:<ch>`` still names it)
    costs each of its tasks one death in ``lost:<ch>`` (the count the Redis reaper keeps;
    finishing the task clears it); one only held, or given back untouched, costs none.
    Only redelivered messages cost a Redis call.
    """

    def __init__(self, client: redis.Redis, ledger: Ledger, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.client = client
        self.ledger = ledger
        self.max_attempts = max_attempts
        self._settle = scripts.load(client, "settle")

    def settle(self, channel: int, device: str, message_id: str, items: Sequence[messages.Item]) -> Verdict:
        """Count the deaths a redelivered message caused; say whether and how it runs.

        Skipped when all its tasks are finished (only the acknowledgement was lost), when
        it carries several tasks and one of them had started on a device that died (each
        goes back alone, flagged suspect), or when its one task has now died
        ``max_attempts`` times, the last one running alone (dead-lettered as ``worker lost``).
        """
        ks = [keys.pending(channel), keys.lost(channel), keys.started(channel)]
        ids = [task_id for task_id, _ in items]
        alone, *deaths = (int(n) for n in self._settle(keys=ks, args=[message_id, *ids]))
        alive = [(task_id, n) for (task_id, _), n in zip(items, deaths, strict=True) if n >= 0]
        if not alive:
            return Verdict.SKIP
        if max(n for _, n in alive) == 0:
            return Verdict.RUN
        if len(items) > 1:
            self.ledger.republish(channel, [task_id for task_id, _ in alive], suspect=True)
            return Verdict.SKIP
        task_id, n = alive[0]
        if n < self.max_attempts or not alone:
            return Verdict.RUN_ALONE
        bury(self.ledger, channel, device, task_id, n)
        return Verdict.SKIP
