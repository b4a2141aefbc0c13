"""Device status and control: exact pause, start and stop.

Celery's remote control does the work, always with ``destination=`` and a
``limit`` so a call returns as soon as the devices named have answered. Redis
keeps what Celery forgets:

* the **wanted state** of each device (``running``/``paused``), so a device
  that restarts comes back paused if it was paused (see ``device.lifecycle``), and a
  device re-checks it before each task, so a paused device starts no new task
  once :func:`pause` has returned, even one it had already fetched;
* a **roster**: how many devices a run expects (``device1``..``deviceN``),
  and each device's channels, so one that never came or died shows offline;
* what a device says of its **end** (``devices:leaving``): ``stopping`` once its warm
  shutdown has begun, ``stopped`` once it has ended. A device in warm shutdown no longer
  answers Celery's remote control, but its heartbeat runs on until it ends: so a stop
  calls a device stopped only when it said so (or fell silent, as a dead one does), and
  status shows one still finishing a task as ``stopping``, with what it runs.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import redis
from celery import Celery

from mutitask_celery import keys
from mutitask_celery.books import messages, steps
from mutitask_celery.celery_app import app as default_app
from mutitask_celery.connection import Deferred, text
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.flower import flower_workers
from mutitask_celery.keys import DEFAULT, Keys
from mutitask_celery.settings import DEFAULTS

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1.0
STOP_WAIT = 10.0  # seconds a stop waits for the devices to end
# What an operator may ask of devices (the console, `mutitask`, the web page), and the word
# each reports what it did with.
VERBS = {"pause": "paused", "start": "started", "stop": "stopped"}
WANTED_COMMAND = "mutitask_wanted"  # the remote control command a device answers (see device.lifecycle)
LEAVING_COMMAND = "mutitask_leaving"  # ... told before a stop (see lifecycle.DeviceLife.leaving)
_QUEUE = re.compile(rf"^{keys.QUEUE_PREFIX}(\d+)$")


class Taken(NamedTuple):
    """A message a device has just taken: what its note in hand records."""

    message_id: str
    tag: str  # kombu's delivery tag
    tasks: int
    channel: int


class DeviceState(str, Enum):
    """What a device is doing now."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"  # in its warm shutdown: takes no task, its process lives until its tasks end
    OFFLINE = "offline"

    @property
    def code(self) -> int:
        """The original's status code: 1 running, 0 paused, -1 off-line. It had no stopping
        state: a stopping device shows 0, alive and taking no task, as a paused one; never -1,
        which says its process is gone."""
        return {DeviceState.RUNNING: 1, DeviceState.PAUSED: 0, DeviceState.STOPPING: 0, DeviceState.OFFLINE: -1}[self]


class Ending(str, Enum):
    """What a device says of its end (``devices:leaving``)."""

    STOPPING = "stopping"  # its warm shutdown has begun
    STOPPED = "stopped"  # it has ended: its tasks are done, what it held is back


class Running(NamedTuple):
    """A message a device has started and not finished: what a stopping device waits for."""

    message_id: str
    channel: int
    task_ids: tuple[str, ...]  # empty when only the broker knows them (RabbitMQ)

    def describe(self) -> str:
        if not self.task_ids:
            return f"message {self.message_id} of channel {self.channel}"
        tasks = f"task {', '.join(self.task_ids)} of channel {self.channel}"
        return tasks if self.task_ids == (self.message_id,) else f"{tasks} (message {self.message_id})"

    def as_dict(self) -> dict[str, Any]:
        return {"message_id": self.message_id, "channel": self.channel, "task_ids": list(self.task_ids)}


@dataclass(frozen=True)
class StopReport:
    """What a stop did (:meth:`Devices.stop_report`)."""

    stopped: list[str]  # ended within the wait
    stopping: dict[str, list[Running]]  # alive still, in their warm shutdown: what each runs
    not_running: list[str]  # named, but not running (already gone, or never here)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stopped": self.stopped,
            "stopping": {name: [r.as_dict() for r in running] for name, running in self.stopping.items()},
            "not_running": self.not_running,
        }


@dataclass(frozen=True)
class Device:
    """One device as :func:`devices` sees it."""

    name: str
    channels: list[int] = field(default_factory=list)
    state: DeviceState = DeviceState.OFFLINE
    in_hand: int = 0
    done: int = 0
    last_heard: float | None = None
    wanted: str = "running"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channels": self.channels,
            "state": self.state.value,
            "code": self.state.code,
            "in_hand": self.in_hand,
            "done": self.done,
            "last_heard": self.last_heard,
            "wanted": self.wanted,
        }


class Presence(NamedTuple):
    """A device as the books alone tell it (:meth:`Devices.presence`): no remote control asked."""

    name: str
    channels: list[int]
    state: DeviceState


def short_name(name: str) -> str:
    """``device1`` of ``device1@host``."""
    return name.split("@", 1)[0]


def channels_of(queue_names: Iterable[str]) -> list[int]:
    return sorted(int(m.group(1)) for q in queue_names if (m := _QUEUE.match(q)))


class Devices:
    """Status and control of the devices sharing one Redis and one broker."""

    def __init__(
        self,
        client: redis.Redis,
        app: Celery | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        flower_url: str | None = None,
        dead_after: float | None = None,
        keys: Keys = DEFAULT,
    ) -> None:
        self.client, self.keys = client, keys
        self.app = app or default_app
        self.timeout = timeout
        self.flower_url = flower_url
        self.dead_after = dead_after or DEFAULTS.dead_after
        self._heard = steps.HEARD.on(client)
        self._started = steps.START.on(client)
        self._deferred = Deferred(client)  # this thread's steps written now, replies read later

    # -- roster ---------------------------------------------------------------
    def expected(self) -> int:
        return int(self.client.get(self.keys.devices_expected) or 0)

    def set_expected(self, count: int) -> int:
        if count < 0:
            raise ConfigurationError(f"the number of expected devices cannot be negative, got {count}")
        self.client.set(self.keys.devices_expected, count)
        return count

    def known(self) -> dict[str, list[int]]:
        """Every device that has ever started here, with its channels."""
        out: dict[str, list[int]] = {}
        for name, raw in self.client.hgetall(self.keys.devices_info).items():
            try:
                out[text(name)] = [int(c) for c in json.loads(raw).get("channels", [])]
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring unreadable device record for %s", name)
        return out

    def forgotten(self) -> dict[str, float]:
        """Devices the roster dropped after a long silence with nothing in hand -> when."""
        out: dict[str, float] = {}
        for name, when in self.client.hgetall(self.keys.devices_forgotten).items():
            try:
                out[text(name)] = float(when)
            except ValueError:
                continue
        return out

    def register(self, name: str, channels: Sequence[int], host: str, pid: int) -> None:
        """Called by a device when it is ready (see ``device.lifecycle``)."""
        info = json.dumps({"channels": list(channels), "host": host, "pid": pid, "started": time.time()})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.devices_info, name, info)
        pipe.hdel(self.keys.devices_leaving, name)  # a new life: what the last one said of its end is past
        pipe.execute()
        self.heard(name)

    def ending(self, name: str, ending: Ending) -> None:
        """The device ``name`` says its warm shutdown has begun, or that it has ended. Once
        ended, a late word of its shutdown (a heartbeat thread a moment behind) changes nothing."""
        if ending is Ending.STOPPED:
            self.client.hset(self.keys.devices_leaving, name, ending.value)
        else:
            self.client.hsetnx(self.keys.devices_leaving, name, ending.value)

    def heard(self, name: str, in_hand: Taken | None = None, wait: bool = True) -> int:
        """``name`` lives (``lua/heard.lua``, in Redis's clock); ``in_hand``: the message it
        just took, noted in its hands. A heartbeat in Redis's clock, not the device's: hosts'
        clocks may disagree by more than dead_after. Taking a message proves life too.

        Returns how many tasks ``name`` has finished, as the books say, or -1 when the
        roster had forgotten it (silent too long): its counts start afresh. ``wait=False``:
        the step is written now and its reply read later (see :class:`Deferred`); returns 0.
        """
        message_keys: list[str] = []
        taken: list[str | int] = []
        if in_hand is not None:
            channel = in_hand.channel
            message_keys = [self.keys.held(channel), self.keys.notify(channel), self.keys.queue_list(channel)]
            taken = [in_hand.message_id, in_hand.tag, in_hand.tasks, channel]
        given = {
            "devices_seen": self.keys.devices_seen,
            "devices_beats": self.keys.devices_beats,
            "devices_done": self.keys.devices_done,
            "devices_forgotten": self.keys.devices_forgotten,
            "inhand": self.keys.inhand(name),
            "unacked_index": self.keys.kombu_unacked_index,
            "device": name,
            "message_keys": message_keys,
            "taken": taken,
        }
        if not wait:
            self._deferred.send(self._heard.script, *steps.HEARD.keys_and_args(given))
            return 0
        return int(self._heard(**given))

    def started(
        self, name: str, channel: int, message_id: str, alone: bool = False, wait: bool = True, noted_only: bool = False
    ) -> bool:
        """``name`` starts running the tasks of ``message_id`` (``lua/start.lua``): from now on a
        death of the device is charged to them; ``alone``: no other task of its process runs
        beside them, so a death is theirs. Also a heartbeat.

        ``wait=False``: the step is written to Redis but its reply is read later (by
        :meth:`started_settled`, or the next such call): it reaches Redis even if the task
        kills the process at once, and costs no round trip (see :class:`Deferred`); returns
        True. ``noted_only`` (with ``wait``): start only while the device still notes the
        message in hand; returns False, having written nothing, when the note is gone.
        """
        ks, args = steps.START.keys_and_args(
            {
                "devices_seen": self.keys.devices_seen,
                "devices_beats": self.keys.devices_beats,
                "started": self.keys.started(channel),
                "inhand": self.keys.inhand(name),
                "device": name,
                "message_id": message_id,
                "alone": "1" if alone else "0",
                "noted_only": "1" if noted_only else "0",
            }
        )
        self._deferred.send(self._started.script, ks, args)
        if wait:
            return bool(self._deferred.settle())
        return True

    def started_settled(self) -> None:
        """Read the reply of this thread's last :meth:`started` (raises its error, if any)."""
        self._deferred.settle()

    # -- wanted state -----------------------------------------------------------
    def wanted(self, name: str) -> str:
        """The state the operator wants for ``name``: its own, else its short name's, else everyone's."""
        own, short, everyone = self.client.hmget(self.keys.devices_wanted, name, short_name(name), keys.ALL_DEVICES)
        return text(own or short or everyone or DeviceState.RUNNING.value)

    @staticmethod
    def _wanted_in(wishes: dict[str, str], name: str) -> str:
        """:meth:`wanted` of ``name``, read from the whole ``devices:wanted`` table (decoded)."""
        wish = wishes.get(name) or wishes.get(short_name(name)) or wishes.get(keys.ALL_DEVICES)
        return wish or DeviceState.RUNNING.value

    def is_paused(self, name: str) -> bool:
        return self.wanted(name) == DeviceState.PAUSED.value

    def _want(self, names: Sequence[str] | None, state: DeviceState) -> None:
        pipe = self.client.pipeline(transaction=True)
        if names is None:  # everyone, now and later: forget per-device wishes
            pipe.delete(self.keys.devices_wanted)
            pipe.hset(self.keys.devices_wanted, keys.ALL_DEVICES, state.value)
        else:
            for name in names:
                pipe.hset(self.keys.devices_wanted, name, state.value)
        pipe.execute()

    # -- selection --------------------------------------------------------------
    def resolve(self, selectors: Iterable[str | int] | None) -> list[str] | None:
        """Full device names for selectors (``3``, ``device3``, ``device3@host``); None means all."""
        if selectors is None:
            return None
        known = self.known()
        names: list[str] = []
        for sel in selectors:
            text = f"device{sel}" if isinstance(sel, int) or str(sel).isdigit() else str(sel)
            matches = [n for n in known if n == text or short_name(n) == text]
            names += matches or [text]  # not seen yet: its wish is kept for when it comes
        return sorted(set(names))

    # -- remote control ---------------------------------------------------------
    def _online(self, names: Sequence[str]) -> list[str]:
        if not names:
            return []
        replies = self.app.control.ping(destination=list(names), timeout=self.timeout, limit=len(names))
        return sorted(n for reply in replies for n in reply)

    def _tell(self, state: DeviceState, names: Sequence[str]) -> list[str]:
        """Tell the online ones among ``names`` what the operator wants; returns those that replied.

        The device sets its own wanted state before it replies, then stops or
        resumes consuming its channels (``device.lifecycle``).
        """
        known = self.known()
        online = self._online([n for n in names if n in known])
        if not online:
            return []
        replies = self.app.control.broadcast(
            WANTED_COMMAND,
            arguments={"wanted_state": state.value},
            destination=online,
            reply=True,
            timeout=self.timeout,
            limit=len(online),
        )
        return sorted(n for reply in replies for n in reply)

    def apply(self, action: str, selectors: Iterable[str | int] | None = None) -> list[str]:
        """Do one of :data:`VERBS` to the devices ``selectors`` name (None: all); returns the
        names that did it."""
        if action not in VERBS:
            raise ConfigurationError(f"no such action {action!r}: one of {', '.join(VERBS)}")
        done: list[str] = getattr(self, action)(selectors)  # each word of VERBS is a method's name
        return done

    def pause(self, selectors: Iterable[str | int] | None = None) -> list[str]:
        """Pause devices (all when ``selectors`` is None); returns those that confirmed.

        The task in hand finishes; no new task starts after this returns.
        """
        names = self.resolve(selectors)
        self._want(names, DeviceState.PAUSED)
        return self._tell(DeviceState.PAUSED, names if names is not None else list(self.known()))

    def start(self, selectors: Iterable[str | int] | None = None) -> list[str]:
        """Let paused devices take tasks again; returns those that confirmed."""
        names = self.resolve(selectors)
        self._want(names, DeviceState.RUNNING)
        return self._tell(DeviceState.RUNNING, names if names is not None else list(self.known()))

    def stop(self, selectors: Iterable[str | int] | None = None, wait: float = STOP_WAIT) -> list[str]:
        """Warm shutdown: each device finishes its task in hand, then its process ends.

        Returns the devices that ended within ``wait`` seconds (see :meth:`stop_report`).
        """
        return self.stop_report(selectors, wait).stopped

    def stop_report(self, selectors: Iterable[str | int] | None = None, wait: float = STOP_WAIT) -> StopReport:
        """Warm shutdown of the devices that run (all when ``selectors`` is None), and what
        became of them within ``wait`` seconds.

        A device in warm shutdown stops answering remote control at once, though its process
        lives until its tasks end: so it counts as stopped only once it said it ended (or fell
        silent for ``dead_after``, as a killed one does). One still finishing a task, or one
        already stopping when asked, is reported ``stopping`` with what it runs.
        """
        names = self.resolve(selectors)
        asked = names if names is not None else list(self.known())
        targets = self._online(asked)
        already = sorted(self._stopping([n for n in asked if n not in targets]))
        still: list[str] = []
        if targets:
            self.app.control.broadcast(
                LEAVING_COMMAND, destination=targets, reply=True, timeout=self.timeout, limit=len(targets)
            )
            self.app.control.shutdown(destination=targets)
            still = self._wait_ended(targets, wait)
        known = self.known()
        return StopReport(
            stopped=[n for n in targets if n not in still],
            stopping={n: self.running(n, known.get(n, [])) for n in sorted({*still, *already})},
            not_running=[n for n in names or [] if n not in targets and n not in already],
        )

    def _wait_ended(self, names: Sequence[str], wait: float) -> list[str]:
        """Those of ``names`` that have not ended after ``wait`` seconds (fewer as they end)."""
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            ended = self._ended(names)
            names = [n for n in names if n not in ended]
            left = deadline - time.monotonic()
            if not names or left <= 0:
                return list(names)
            time.sleep(min(delay, left))  # a warm shutdown takes as long as the tasks in hand
            delay = min(delay * 2, 0.5)

    def _ends(self, names: Sequence[str]) -> list[tuple[str, str | None, float | None]]:
        """(name, what it said of its end, seconds since it was last heard) for each of
        ``names``, in Redis's clock, in one round trip."""
        if not names:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.devices_leaving, list(names))
        pipe.hmget(self.keys.devices_seen, list(names))
        pipe.time()
        said, seen, (seconds, micros) = pipe.execute()
        now = seconds + micros / 1e6
        return [
            (name, None if end is None else text(end), None if beat is None else now - float(beat))
            for name, end, beat in zip(names, said, seen, strict=True)
        ]

    def _ended(self, names: Sequence[str]) -> set[str]:
        """Those of ``names`` that said they ended, or fell silent for ``dead_after`` (died)."""
        return {
            name
            for name, end, silent in self._ends(names)
            if end == Ending.STOPPED.value or silent is None or silent > self.dead_after
        }

    def _stopping(self, names: Sequence[str]) -> set[str]:
        """Those of ``names`` in their warm shutdown: they said it began, and they still beat."""
        return {
            name
            for name, end, silent in self._ends(names)
            if end == Ending.STOPPING.value and silent is not None and silent <= self.dead_after
        }

    def running(self, name: str, channels: Sequence[int]) -> list[Running]:
        """The messages of ``channels`` that ``name`` has started and not finished (its start
        marks), with their task ids from kombu's entry when the broker is this Redis."""
        found: list[Running] = []
        for channel in channels:
            for message_id, device in self.client.hgetall(self.keys.started(channel)).items():
                if text(device).split("|", 1)[0] == name:
                    found.append(Running(text(message_id), channel, self._task_ids(name, text(message_id))))
        return sorted(found)

    def _task_ids(self, name: str, message_id: str) -> tuple[str, ...]:
        """The task ids of a message ``name`` holds: its note names kombu's delivery tag."""
        noted = self.client.hget(self.keys.inhand(name), message_id)
        raw = self.client.hget(self.keys.kombu_unacked, text(noted).split("|", 1)[0]) if noted else None
        try:
            envelope = json.loads(raw)[0] if raw else None
        except (ValueError, TypeError, IndexError, KeyError):
            envelope = None
        found = messages.carried(envelope)
        return tuple(task_id for task_id, _ in found[1]) if found else ()

    # -- status -------------------------------------------------------------------
    def _live(self, known: Sequence[str]) -> dict[str, tuple[int, list[int]]]:
        """Online devices -> (tasks in hand, channels consumed), from Flower or from the workers."""
        if self.flower_url:
            workers = flower_workers(self.flower_url, timeout=max(self.timeout, 1.0))
            return {w.name: (w.active, channels_of(w.queues)) for w in workers.values() if w.online}
        online = self._online(list(known))
        if not online:
            return {}
        inspect = self.app.control.inspect(destination=online, timeout=self.timeout, limit=len(online))
        active = inspect.active() or {}
        queues = inspect.active_queues() or {}
        return {
            name: (len(active.get(name, [])), channels_of(q.get("name", "") for q in queues.get(name, [])))
            for name in online
        }

    def presence(self) -> list[Presence]:
        """Every device of the roster (and expected ones that never came) with its state, read
        from the books alone in one round trip: no remote control, so it answers at once
        however many devices are gone (an autoscaler polls it, see ``web.scaler``).

        The state is what the devices themselves wrote: ``offline`` when silent for
        ``dead_after`` (in Redis's clock) or when it said it ended; ``stopping`` when it said
        its warm shutdown began; else ``paused`` or ``running`` as the operator wants it (a
        device re-reads that before each task). :meth:`devices` asks the devices too, so the
        two can differ for a moment: a device killed a second ago is offline there, and here
        until ``dead_after`` has passed, as it is for the reapers that give its tasks back.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.devices_info)
        pipe.hgetall(self.keys.devices_seen)
        pipe.hgetall(self.keys.devices_leaving)
        pipe.hgetall(self.keys.devices_wanted)
        pipe.get(self.keys.devices_expected)
        pipe.time()
        info, seen, leaving, wanted, expected, (seconds, micros) = pipe.execute()
        now = seconds + micros / 1e6
        beats = {text(k): float(v) for k, v in seen.items()}
        ends = {text(k): text(v) for k, v in leaving.items()}
        wishes = {text(k): text(v) for k, v in wanted.items()}
        found = []
        for raw_name, raw in sorted(info.items()):
            name = text(raw_name)
            try:
                channels = sorted(int(c) for c in json.loads(raw).get("channels", []))
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring unreadable device record for %s", name)
                continue
            silent = None if name not in beats else now - beats[name]
            found.append(Presence(name, channels, self._judged(silent, ends.get(name), self._wanted_in(wishes, name))))
        present = {short_name(p.name) for p in found}
        missing = (f"device{n}" for n in range(1, int(expected or 0) + 1))
        return found + [Presence(name, [], DeviceState.OFFLINE) for name in missing if name not in present]

    def _judged(self, silent: float | None, end: str | None, wish: str) -> DeviceState:
        """A device's state from what it wrote: seconds since its last heartbeat (None: never),
        what it said of its end, and what the operator wants of it."""
        if silent is None or silent > self.dead_after or end == Ending.STOPPED.value:
            return DeviceState.OFFLINE
        if end == Ending.STOPPING.value:
            return DeviceState.STOPPING
        return DeviceState.PAUSED if wish == DeviceState.PAUSED.value else DeviceState.RUNNING

    def devices(self) -> list[Device]:
        """One record per device: every one ever seen, plus expected ones that never came."""
        known = self.known()
        live = self._live(list(known))
        for name, (_, consumed) in live.items():
            known.setdefault(name, consumed)  # seen by Flower before it entered our roster
        seen = self.client.hgetall(self.keys.devices_seen)
        done = self.client.hgetall(self.keys.devices_done)
        stopping = self._stopping(list(known))
        now = time.time()
        result = []
        for name, channels in sorted(known.items()):
            wanted = self.wanted(name)
            state, in_hand = DeviceState.OFFLINE, 0
            if name in stopping:  # it answers no remote control, or will not for long: the books say
                state = DeviceState.STOPPING
                in_hand = live[name][0] if name in live else len(self.running(name, channels))
            elif name in live:
                # Paused when it no longer consumes, or when the operator paused it: the
                # consumer is cancelled a moment after the control reply, but a device
                # checks its wanted state before each task, so it starts none meanwhile.
                in_hand, consuming = live[name]
                paused = not consuming or wanted == DeviceState.PAUSED.value
                state = DeviceState.PAUSED if paused else DeviceState.RUNNING
            last = now if name in live else (float(seen[name]) if name in seen else None)
            result.append(
                Device(
                    name=name,
                    channels=channels,
                    state=state,
                    in_hand=in_hand,
                    done=int(done.get(name, 0)),
                    last_heard=last,
                    wanted=wanted,
                )
            )
        present = {short_name(n) for n in known}
        for n in range(1, self.expected() + 1):
            if f"device{n}" not in present:
                result.append(Device(name=f"device{n}", wanted=self.wanted(f"device{n}")))
        return result
