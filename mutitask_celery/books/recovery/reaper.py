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
(:meth:`Reaper.child_lost`).

A last net, the sweep (see :meth:`Reaper.sweep`): kombu takes a message off
the queue (``BRPOP``) and only then records it as unacked, and a device notes
it in hand a moment later still; a device killed in either gap would strand
the task. The server's sweep finds both cases and puts the task back.

On another broker none of this is needed: see :mod:`.redeliveries`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from mutitask_celery.books import messages, steps
from mutitask_celery.books.ledger import ChannelBooks, ChannelStats, Ledger
from mutitask_celery.books.recovery.base import WORKER_LOST, Recovered, Recovery, Verdict, burial_keys
from mutitask_celery.connection import redis_now, text
from mutitask_celery.keys import Keys
from mutitask_celery.settings import DEFAULTS

log = logging.getLogger(__name__)

REAP_BATCH = 100  # silent devices looked at per reap (the next reap takes the rest)
SAFETY_SWEEP = 300.0  # seconds between sweeps when no device died: a last net for what nothing announced


def _items(message: dict[str, Any]) -> tuple[int, list[str]] | None:
    """(channel, task ids) of one of our messages, or None for anything else."""
    found = messages.carried(message)
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
    def all(cls, raw: dict[Any, Any]) -> dict[str, _Unacked]:
        """Kombu's unacked hash as read (tag -> entry), ours only, by delivery tag."""
        return {text(tag): entry for tag, value in raw.items() if (entry := cls.parse(text(value))) is not None}

    @classmethod
    def parse(cls, raw: str) -> _Unacked | None:
        """None for an unreadable entry or another application's message: those are not ours to touch."""
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            return None
        found = messages.carried(message) if isinstance(message, dict) else None
        return None if found is None else cls(message, str(routing_key), found[0], found[1])


@dataclass(frozen=True)
class _Snapshot:
    """What the sweep compares, read in one transaction (see :meth:`Reaper.sweep`)."""

    unacked: dict[str, _Unacked]  # kombu's unacked entries of ours, by delivery tag
    outstanding: dict[int, set[str]]  # per channel: the tasks in the books
    placed: dict[int, set[str]]  # per channel: the tasks on its queue or in its backlog
    delivered: dict[str, float]  # kombu's unacked index: delivery tag -> its score

    @classmethod
    def read(cls, client: redis.Redis, keys: Keys, channels: Sequence[int]) -> _Snapshot:
        pipe = client.pipeline(transaction=True)
        for channel in channels:
            pipe.hkeys(keys.pending(channel))
            pipe.zrange(keys.backlog(channel), 0, -1)
            pipe.lrange(keys.queue_list(channel), 0, -1)
        pipe.hgetall(keys.kombu_unacked)
        pipe.zrange(keys.kombu_unacked_index, 0, -1, withscores=True)
        *per_channel, raw_unacked, index = pipe.execute()
        unacked = _Unacked.all(raw_unacked)
        outstanding: dict[int, set[str]] = {}
        placed: dict[int, set[str]] = {}
        for i, channel in enumerate(channels):
            pending, backlog, queued = per_channel[3 * i : 3 * i + 3]
            outstanding[channel] = {text(t) for t in pending}
            placed[channel] = {text(t) for t in backlog}
            for raw in queued:
                placed[channel].update(_queued_ids(text(raw)))
        return cls(unacked, outstanding, placed, {text(tag): float(score) for tag, score in index})


def _unnoted(unacked: dict[str, _Unacked], notes: dict[str, dict[str, str]]) -> set[str]:
    """The delivery tags of ``unacked`` entries whose message no device notes in hand (``notes``:
    device -> message id -> note, of every device alive or recently dead)."""
    noted = {message_id for held in notes.values() for message_id in held}
    return {tag for tag, entry in unacked.items() if entry.message.get("headers", {}).get("id") not in noted}


class Reaper(Recovery):
    """Finds dead devices and puts their messages back (see module docstring)."""

    def __init__(
        self,
        ledger: Ledger,
        dead_after: float = DEFAULTS.dead_after,
        max_attempts: int = DEFAULTS.max_attempts,
        forget_after: float = DEFAULTS.forget_after,
        client: redis.Redis | None = None,
    ) -> None:
        super().__init__(ledger)
        self.client = client = client or ledger.client  # a test's own client makes reapers meet
        self.dead_after = dead_after
        self.max_attempts = max_attempts
        self.forget_after = forget_after
        self._restore = steps.RESTORE.on(client)
        self._recover = steps.RECOVER.on(client)
        self._retire = steps.RETIRE.on(client)
        self._forget = steps.FORGET.on(client)
        self._drop = steps.DROP_NOTE.on(client)
        self._held = steps.HELD.on(client)
        self._suspects: dict[int, set[str]] = {}
        self._suspect_tags: set[str] = set()
        self._stale_notes: set[tuple[str, str, str]] = set()  # (device, message id, note) stale at the last sweep
        self._due_seen: int | None = None
        self._sweeps_left = 0
        self._next_safety = 0.0
        self._dropped: set[tuple[str, str]] = set()  # (message id, note) a worker no longer held at the last look
        self._out_of_touch = False  # the last look at Redis's clock failed (see _watched)
        self._back_at: float | None = None  # when (Redis's clock) this reaper was last back in touch
        self._stalled_once: set[int] = set()  # channels stalled at the last look
        self._stalled_swept: set[int] = set()  # ... whose stall has had its sweeps already

    # -- the Recovery duties ------------------------------------------------------------
    def device_started(self, name: str) -> int:
        self.client.delete(self.keys.steps(name))  # the previous life's retries are over
        self.announce_death()  # whatever killed the previous life may have stranded a message
        return self.recover(name)

    def device_stopped(self, name: str) -> int:
        return self.drop_stale_notes(name)

    def look_for_strays(self) -> None:
        self.announce_death()

    def server_duties(self, channels: Sequence[int]) -> None:
        self.reap()
        self.sweep_if_due(channels)

    def end_of_run(self, channels: Sequence[int]) -> None:
        self.drop_finished(channels)

    def settle(
        self, channel: int, device: str, message_id: str, items: Sequence[messages.Item], deliveries: int = 0
    ) -> Verdict:
        return Verdict.RUN  # the reaper counts deaths and sends suspects back flagged

    # -- how ----------------------------------------------------------------------------
    def sweep_if_due(self, channels: Sequence[int]) -> int:
        """Sweep (see :meth:`sweep`) only when it can find something: the cracks it mends open
        when a device process dies, or when Redis goes away while a device takes a message.
        Either is announced (``sweep:due``: by the reaper that finds a silent device, by a
        device that starts again, by a device or server that reconnects after an outage), or
        shows as a stall (:meth:`_stalled`: tasks wait in the books, none on the queue). Then
        it sweeps twice in a row, as a crack is confirmed at two sweeps; otherwise once every
        :data:`SAFETY_SWEEP` seconds. So recovery costs the server what changed, not what is
        outstanding."""
        due = int(self.client.get(self.keys.sweep_due) or 0)
        stalled = self._stalled(channels)
        now = time.monotonic()
        if due != self._due_seen or stalled or now >= self._next_safety:
            self._due_seen, self._sweeps_left, self._next_safety = due, 2, now + SAFETY_SWEEP
        if self._sweeps_left <= 0:
            return 0
        found = self.sweep(channels)  # a sweep that failed (Redis away or full) is due again next round
        self._sweeps_left -= 1
        return found

    def _stalled(self, channels: Sequence[int]) -> bool:
        """True when a channel has shown tasks waiting (in the books, in no device's hands, not
        in the backlog) and an empty queue at two looks in a row, and had not before: a message
        left the queue and reached no device. Nothing else can announce that crack when it
        opens with every device alive (kombu's ``BRPOP`` answered into a connection that Redis
        closed as it went away). A stall that lasts calls for one sweep pair, not one a look."""
        pipe = self.client.pipeline(transaction=True)
        for channel in channels:
            pipe.hlen(self.keys.pending(channel))
            pipe.get(self.keys.held(channel))
            pipe.zcard(self.keys.backlog(channel))
            pipe.llen(self.keys.queue_list(channel))
        replies = pipe.execute()
        now: set[int] = set()
        for i, channel in enumerate(channels):
            outstanding, held, backlog, queued = replies[4 * i : 4 * i + 4]
            books = ChannelBooks(ChannelStats(), int(outstanding), int(held or 0), int(backlog))
            if books.waiting > 0 and int(queued) == 0:
                now.add(channel)
        confirmed = now & self._stalled_once
        newly = bool(confirmed - self._stalled_swept)
        self._stalled_swept = (self._stalled_swept & now) | confirmed
        self._stalled_once = now
        if newly:
            log.warning(
                "channel(s) %s: tasks wait in the books but none is on the queue: sweeping",
                ", ".join(str(c) for c in sorted(confirmed)),
            )
        return newly

    def announce_death(self) -> None:
        """A device process died (or restarted), or something reconnected after Redis went
        away: the server should sweep."""
        self.client.incr(self.keys.sweep_due)

    def sweep(self, channels: Sequence[int]) -> int:
        """Put back what fell between the cracks; returns how many tasks or messages.

        Two cracks, each confirmed at two sweeps in a row (a message crosses
        them in microseconds when all is well): an outstanding task on no
        queue, in no unacked entry and not in the backlog (its device died, or
        Redis went away, between ``BRPOP`` and kombu's unacked record), and an
        unacked message no device notes in hand (it died before noting it).

        What it compares is read in one transaction: read one after the other, a task
        moving from the queue into an unacked entry between two reads would be seen in
        neither.
        """
        snapshot = _Snapshot.read(self.client, self.keys, channels)
        unacked = snapshot.unacked
        names, notes = self._notes()
        orphans = _unnoted(unacked, notes)
        fixed = self._restore_orphans(orphans & self._suspect_tags, unacked)
        self._suspect_tags = orphans - self._suspect_tags
        held = {task_id for entry in unacked.values() for task_id in entry.ids}
        for channel in channels:
            fixed += self._republish_missing(channel, snapshot.outstanding[channel], snapshot.placed[channel] | held)
        self._drop_stale_notes(notes, snapshot.delivered)
        for channel in channels:
            self._count_held_again(channel, names)
        return fixed

    def _notes(self) -> tuple[list[str], dict[str, dict[str, str]]]:
        """The devices alive or recently dead (they hold every note), and their notes:
        device -> message id -> note."""
        names = [text(n) for n in cast("list[str]", self.client.zrange(self.keys.devices_beats, 0, -1))]
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.inhand(name))
        held = pipe.execute()
        return names, {
            name: {text(m): text(n) for m, n in notes.items()} for name, notes in zip(names, held, strict=True)
        }

    def _drop_stale_notes(self, notes: dict[str, dict[str, str]], delivered: dict[str, float]) -> None:
        """Drop the notes of deliveries kombu no longer holds (no unacked entry with the noted
        score), stale at this sweep and the one before: each holds ``held:<ch>`` up, so the
        channel would be filled past its size for good. (A note is written after kombu's
        entry and dropped before the acknowledgement; only a step made again late, after a
        restart, writes one for a finished message.)"""
        stale = {
            (name, message_id, note)
            for name, held in notes.items()
            for message_id, note in held.items()
            if _noted_score(note) is None or delivered.get(note.split("|", 1)[0]) != _noted_score(note)
        }
        for name, message_id, note in stale & self._stale_notes:
            log.warning("%s's note of message %s was stale (kombu no longer holds it): dropped", name, message_id)
            self._drop_note(name, message_id, note)
        self._stale_notes = stale - self._stale_notes

    def _count_held_again(self, channel: int, names: list[str]) -> None:
        """``held:<ch>`` set to the sum of the notes (``lua/held.lua``), if it drifted."""
        for _ in range(3):
            reply = self._held(
                held=self.keys.held(channel),
                devices_beats=self.keys.devices_beats,
                notes=[self.keys.inhand(name) for name in names],
                channel=channel,
                devices=names,
            )
            if int(reply[0]) >= 0:
                if int(reply[0]) != int(reply[1]):
                    log.warning(
                        "channel %d: devices hold %s task(s), not %s: counted again", channel, reply[1], reply[0]
                    )
                return
            names = [text(n) for n in cast("list[str]", self.client.zrange(self.keys.devices_beats, 0, -1))]

    def _restore_orphans(self, tags: set[str], unacked: dict[str, _Unacked]) -> int:
        for tag in tags:
            entry = unacked[tag]
            if self._any_outstanding(entry.channel, entry.ids):
                log.warning("message %s was taken by a device that died before noting it: restored", tag)
                self._restore(
                    unacked=self.keys.kombu_unacked,
                    unacked_index=self.keys.kombu_unacked_index,
                    queue=self.keys.list_of(entry.routing_key),
                    tag=tag,
                    messages=[json.dumps(_redelivered(entry.message))],
                )
            else:  # finished, only its acknowledgement was lost with its device
                self._drop_unacked(tag)
        return len(tags)

    def drop_finished(self, channels: Sequence[int]) -> int:
        """Acknowledge, for devices that can no longer do it, the unacked messages of
        ``channels`` that no device notes and whose tasks are all finished; returns how many.
        A device killed between recording a message's outcomes and acknowledging it leaves
        one; the sweep drops it, but the sweep runs only while a server runs. Dropping is
        safe at any time: the message is done, and a late acknowledgement finds nothing."""
        unacked = _Unacked.all(self.client.hgetall(self.keys.kombu_unacked))
        _, notes = self._notes()
        dropped = 0
        for tag in _unnoted(unacked, notes):
            entry = unacked[tag]
            if entry.channel in channels and not self._any_outstanding(entry.channel, entry.ids):
                self._drop_unacked(tag)
                dropped += 1
        if dropped:
            log.info("dropped %d finished message(s) no device had acknowledged (it died, or had yet to)", dropped)
        return dropped

    def _any_outstanding(self, channel: int, ids: Sequence[str]) -> bool:
        """Whether any of the tasks is still in the books (asked with ``HEXISTS``: a big task's
        data is not read for it)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hexists(self.keys.pending(channel), task_id)
        return any(pipe.execute())

    def _drop_unacked(self, tag: str) -> None:
        """Acknowledge a message for a device that can no longer do it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.kombu_unacked, tag)
        pipe.zrem(self.keys.kombu_unacked_index, tag)
        pipe.execute()

    def _republish_missing(self, channel: int, outstanding: set[str], placed: set[str]) -> int:
        """Publish again the outstanding tasks found nowhere (``placed``: on the queue, in the
        backlog or in an unacked entry) at this sweep and the one before."""
        if not outstanding:
            self._suspects.pop(channel, None)
            return 0
        missing = outstanding - placed
        lost = missing & self._suspects.get(channel, set())
        if lost:
            log.warning(
                "channel %d: %d outstanding task(s) were on no queue and in no device's hands "
                "(a device died, or Redis went away, while taking them): publishing them again",
                channel,
                len(lost),
            )
            self.ledger.republish(channel, sorted(lost))
        self._suspects[channel] = missing - lost  # after: a republish that failed (Redis full) is retried
        return len(lost)

    def reap(self, now: float | None = None) -> int:
        """Recover every device silent for ``dead_after`` seconds; returns messages handled.

        Looks only at devices alive or recently dead (``devices:beats``); a dead device
        whose messages are all back leaves that set. Judges nobody until it has watched Redis
        for ``dead_after`` seconds since it was last out of touch with it (see :meth:`_watched`).
        """
        if now is None:
            now = self._watched()
            if now is None:
                return 0
        handled = 0
        silent = cast(
            "list[tuple[str, float]]",
            self.client.zrangebyscore(
                self.keys.devices_beats, "-inf", f"({now - self.dead_after}", start=0, num=REAP_BATCH, withscores=True
            ),
        )
        if silent:
            self.announce_death()
        for name, beat in silent:
            seen = self.client.hget(self.keys.devices_seen, name)
            if seen is None:  # forgotten meanwhile
                self.client.zrem(self.keys.devices_beats, name)
                continue
            if self.client.exists(self.keys.inhand(name)):
                log.warning("%s silent for %.0fs: giving its tasks to other devices", name, now - beat)
                handled += self.recover(name, seen=text(seen))
            self._retire(
                devices_seen=self.keys.devices_seen,
                devices_beats=self.keys.devices_beats,
                inhand=self.keys.inhand(name),
                device=name,
                seen=text(seen),
            )
        return handled

    def lost_touch(self) -> None:
        """This process failed to reach Redis (any of its duties did): see :meth:`_watched`."""
        self._out_of_touch = True

    def _watched(self) -> float | None:
        """Redis's clock, or None while this reaper has not watched Redis for ``dead_after``
        seconds since it last failed to reach it. While Redis is away no device can beat, so at
        its return every device looks silent for as long as the outage lasted: judged then, live
        devices would lose what they hold, and their tasks run twice. Each device beats within
        a heartbeat period of Redis's return; a device still silent after ``dead_after`` is dead."""
        try:
            now = redis_now(self.client)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            self.lost_touch()
            raise
        if self._out_of_touch:
            self._out_of_touch, self._back_at = False, now
            log.info("Redis is back: judging no device silent for %.0fs", self.dead_after)
        if self._back_at is not None and now - self._back_at < self.dead_after:
            return None
        return now

    def recover(self, device: str, seen: str | None = None) -> int:
        """Put back every message ``device`` holds (it is dead, or restarting); returns how many
        were taken back here.

        ``seen``: the heartbeat the caller judged too old. Messages go back only while it is
        still the device's last heartbeat: a device heard from since (back from a network
        cut; taking or starting a message is a heartbeat too) keeps what it holds. None: the
        device's next life acts, no fence.
        """
        handled = 0
        for message_id, noted in cast("dict[str, str]", self.client.hgetall(self.keys.inhand(device))).items():
            outcome = self._take_back(device, seen or "", message_id, noted)
            if outcome is Recovered.ALIVE:
                log.warning("%s was heard from again: it keeps what it holds", device)
                break
            handled += outcome in (Recovered.RESTORED, Recovered.SUSPECTS, Recovered.BURIED)
        return handled

    def release_dropped(self, device: str, holding: set[str]) -> int:
        """Give back the messages ``device`` (alive: it is this process) notes in hand but its
        worker no longer holds, seen so at this look and the one before (a message is noted a
        moment before the worker reserves it); returns how many.

        Why: when its connection to the broker is lost, Celery drops the messages a worker
        held ahead of the ones it runs ("can't be acked anyway"), and kombu's restore of them
        fails while Redis is away. Their notes and unacked entries stay; the device lives, so
        no reaper takes them back, and kombu would only after its visibility timeout (a week).
        """
        notes = {
            (text(m), text(n))
            for m, n in self.client.hgetall(self.keys.inhand(device)).items()
            if text(m) not in holding
        }
        confirmed, self._dropped = notes & self._dropped, notes
        handled = 0
        for message_id, noted in confirmed:
            outcome = self._take_back(device, "", message_id, noted)
            handled += outcome in (Recovered.RESTORED, Recovered.SUSPECTS, Recovered.BURIED)
        if handled:
            log.warning(
                "%s gave back %d message(s) its worker no longer held (dropped at a reconnect)", device, handled
            )
        return handled

    def hand_back(self, device: str, keep: Collection[str], started: bool) -> int:
        """See :meth:`.Recovery.hand_back`: each message in one step of ``lua/recover.lua``
        with the device's own hand (no fence) and no death charged. Not started, it goes back
        as it came (a fresh delivery tag); fenced on its start mark, so one that starts
        meanwhile is left to run. Started (the grace ran out), its tasks go back each alone,
        its claims end, and a result being saved is buried as 'worker lost while saving' (it
        may have been saved: it must not run again by itself)."""
        notes = cast("dict[str, str]", self.client.hgetall(self.keys.inhand(device)))
        handed = 0
        for message_id, noted in notes.items():
            if message_id in keep:
                continue
            if started:  # read again if it started meanwhile: the device leaves now, whatever its state
                outcome = self._take_back(device, "", message_id, noted, leaving=True)
            else:  # one that started since is left to run (CHANGED)
                outcome = self._take_back_once(device, "", message_id, noted, leaving=True, unstarted_only=True)
            handed += outcome in (Recovered.RESTORED, Recovered.HANDED, Recovered.BURIED)
        return handed

    def child_lost(self, device: str, message_id: str) -> Recovered:
        """A pool child of the live ``device`` died running ``message_id`` (prefork): take the
        message back as for a dead device (the child's death is charged), instead of
        Celery's requeue, which would count nothing and loop forever on a poison task."""
        noted = self.client.hget(self.keys.inhand(device), message_id)
        if noted is None:
            return Recovered.GONE
        return self._take_back(device, "", message_id, text(noted))

    def _take_back(self, device: str, judged: str, message_id: str, noted: str, leaving: bool = False) -> Recovered:
        """One message back in one fenced step (``lua/recover.lua``), read again if it started meanwhile."""
        for _ in range(3):
            outcome = self._take_back_once(device, judged, message_id, noted, leaving=leaving)
            if outcome is not Recovered.CHANGED:
                return outcome
        return Recovered.CHANGED  # a live device keeps starting it: it is not dead, leave it

    def _take_back_once(
        self, device: str, judged: str, message_id: str, noted: str, leaving: bool = False, unstarted_only: bool = False
    ) -> Recovered:
        """One try of :meth:`_take_back`. ``leaving``: the live device gives the message back
        itself (:meth:`hand_back`); ``unstarted_only``: only if it has not started (as the
        step reads it, atomically: one that started since is CHANGED, and left alone)."""
        tag = noted.split("|", 1)[0]
        raw = self.client.hget(self.keys.kombu_unacked, tag)
        entry = _Unacked.parse(text(raw)) if raw is not None else None
        if entry is None:
            if raw is not None:
                log.error("unreadable unacked message %s: left for kombu's own restore", tag)
            self._drop_note(device, message_id, noted)
            return Recovered.GONE
        channel = entry.channel
        mark = "" if unstarted_only else text(self.client.hget(self.keys.started(channel), message_id) or "")
        if mark in (device, f"{device}|alone"):
            context = messages.trace_context(entry.message)  # each task's span stays in its run's trace
            queued = [
                messages.build(self.ledger.app, entry.routing_key, channel, [item], not leaving, context)
                for item in entry.items
            ]
        else:
            queued = [json.dumps(_redelivered(entry.message))]
        reply = self._recover(
            devices_seen=self.keys.devices_seen,
            inhand=self.keys.inhand(device),
            unacked=self.keys.kombu_unacked,
            unacked_index=self.keys.kombu_unacked_index,
            queue=self.keys.list_of(entry.routing_key),
            started=self.keys.started(channel),
            lost=self.keys.lost(channel),
            pending=self.keys.pending(channel),
            **burial_keys(self.keys, channel),
            held=self.keys.held(channel),
            claims=self.keys.claims(channel),
            records=[self.keys.dead_record(t) for t in entry.ids],
            device=device,
            judged=judged,
            message_id=message_id,
            noted=noted,
            tag=tag,
            mark_read=mark,
            max_attempts=self.max_attempts,
            channel=channel,
            tasks=len(entry.ids),
            leaving="1" if leaving else "0",
            ids_then_messages=[*entry.ids, *queued],
        )
        outcome, deaths = Recovered(text(reply[0])), int(reply[1])
        if outcome is Recovered.BURIED and deaths == 0:
            log.error(
                "%s %s while saving the result(s) of message %s (channel %d): dead-lettered as %r",
                device,
                "left (its shutdown grace ran out)" if leaving else "died",
                message_id,
                channel,
                "worker lost while saving",
            )
        elif outcome is Recovered.BURIED:
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
        notes = cast("dict[str, str]", self.client.hgetall(self.keys.inhand(device)))
        pipe = self.client.pipeline(transaction=False)
        for noted in notes.values():
            pipe.zscore(self.keys.kombu_unacked_index, noted.split("|", 1)[0])
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
        self._drop(
            inhand=self.keys.inhand(device),
            held=self.keys.held(channel),
            started=self.keys.started(channel),
            message_id=message_id,
            noted=noted,
            drop_mark="0",
            device=device,
        )

    def forget_silent(self, now: float | None = None) -> list[str]:
        """Drop from the roster every device silent for ``forget_after`` seconds with nothing in
        hand (container names change at every restart: the roster must not grow for ever);
        returns their names. ``mutitask status`` counts them."""
        now = redis_now(self.client) if now is None else now
        forgotten = []
        for name, seen in self.client.hgetall(self.keys.devices_seen).items():
            try:
                old = now - float(seen) > self.forget_after
            except ValueError:
                continue
            name = text(name)
            if old and self._forget(
                devices_seen=self.keys.devices_seen,
                devices_beats=self.keys.devices_beats,
                inhand=self.keys.inhand(name),
                devices_info=self.keys.devices_info,
                devices_done=self.keys.devices_done,
                devices_wanted=self.keys.devices_wanted,
                devices_forgotten=self.keys.devices_forgotten,
                steps=self.keys.steps(name),
                device=name,
                seen=text(seen),
            ):
                forgotten.append(name)
        if forgotten:
            # their names' leases lapsed long ago: the notes of their last takers go with them
            self.client.hdel(self.keys.lease_holders, *[self.keys.device_lease(name) for name in forgotten])
            log.info(
                "forgot %d device(s) silent for over %.0fs: %s",
                len(forgotten),
                self.forget_after,
                ", ".join(sorted(forgotten)),
            )
        return forgotten
