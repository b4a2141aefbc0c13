"""Device status and control: exact pause, start and stop.

Celery's remote control does the work, always with ``destination=`` and a
``limit`` so a call returns as soon as the devices named have answered. Redis
keeps what Celery forgets:

* the **wanted state** of each device (``running``/``paused``), so a device
  that restarts comes back paused if it was paused (see :mod:`hooks`), and a
  device re-checks it before each task, so a paused device starts no new task
  once :func:`pause` has returned, even one it had already fetched;
* a **roster**: how many devices a run expects (``device1``..``deviceN``),
  and each device's channels, so one that never came or died shows offline.
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
from mutitask_celery.books import scripts
from mutitask_celery.celery_app import app as default_app
from mutitask_celery.connection import Deferred, text
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.flower import flower_workers

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 1.0
WANTED_COMMAND = "mutitask_wanted"  # the remote control command a device answers (see hooks)
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
    OFFLINE = "offline"

    @property
    def code(self) -> int:
        """The original's status code: 1 running, 0 paused, -1 off-line."""
        return {DeviceState.RUNNING: 1, DeviceState.PAUSED: 0, DeviceState.OFFLINE: -1}[self]


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
    ) -> None:
        self.client = client
        self.app = app or default_app
        self.timeout = timeout
        self.flower_url = flower_url
        self._heard = scripts.load(client, "heard")
        self._started = scripts.load(client, "start")
        self._deferred = Deferred(client)  # this thread's steps written now, replies read later

    # -- roster ---------------------------------------------------------------
    def expected(self) -> int:
        return int(self.client.get(keys.DEVICES_EXPECTED) or 0)

    def set_expected(self, count: int) -> int:
        if count < 0:
            raise ConfigurationError(f"the number of expected devices cannot be negative, got {count}")
        self.client.set(keys.DEVICES_EXPECTED, count)
        return count

    def known(self) -> dict[str, list[int]]:
        """Every device that has ever started here, with its channels."""
        out: dict[str, list[int]] = {}
        for name, raw in self.client.hgetall(keys.DEVICES_INFO).items():
            try:
                out[text(name)] = [int(c) for c in json.loads(raw).get("channels", [])]
            except (ValueError, TypeError, AttributeError):
                log.warning("ignoring unreadable device record for %s", name)
        return out

    def forgotten(self) -> dict[str, float]:
        """Devices the roster dropped after a long silence with nothing in hand -> when."""
        out: dict[str, float] = {}
        for name, when in self.client.hgetall(keys.DEVICES_FORGOTTEN).items():
            try:
                out[text(name)] = float(when)
            except ValueError:
                continue
        return out

    def register(self, name: str, channels: Sequence[int], host: str, pid: int) -> None:
        """Called by a device when it is ready (see :mod:`hooks`)."""
        info = json.dumps({"channels": list(channels), "host": host, "pid": pid, "started": time.time()})
        self.client.hset(keys.DEVICES_INFO, name, info)
        self.heard(name)

    def heard(self, name: str, in_hand: Taken | None = None, wait: bool = True) -> int:
        """``name`` lives (``lua/heard.lua``, in Redis's clock); ``in_hand``: the message it
        just took, noted in its hands. A heartbeat in Redis's clock, not the device's: hosts'
        clocks may disagree by more than dead_after. Taking a message proves life too.

        Returns how many tasks ``name`` has finished, as the books say, or -1 when the
        roster had forgotten it (silent too long): its counts start afresh. ``wait=False``:
        the step is written now and its reply read later (see :class:`Deferred`); returns 0.
        """
        ks = [
            keys.DEVICES_SEEN,
            keys.DEVICES_BEATS,
            keys.DEVICES_DONE,
            keys.DEVICES_FORGOTTEN,
            keys.inhand(name),
            keys.KOMBU_UNACKED_INDEX,
        ]
        args: list[str | int] = [name]
        if in_hand is not None:
            ks += [keys.held(in_hand.channel), keys.notify(in_hand.channel), keys.queue_list(in_hand.channel)]
            args += [in_hand.message_id, in_hand.tag, in_hand.tasks, in_hand.channel]
        if not wait:
            self._deferred.send(self._heard, ks, args)
            return 0
        return int(self._heard(keys=ks, args=args))

    def started(self, name: str, channel: int, message_id: str, alone: bool = False, wait: bool = True) -> None:
        """``name`` starts running the tasks of ``message_id`` (``lua/start.lua``): from now on a
        death of the device is charged to them; ``alone``: no other task of its process runs
        beside them, so a death is theirs. Also a heartbeat.

        ``wait=False``: the step is written to Redis but its reply is read later (by
        :meth:`started_settled`, or the next such call): it reaches Redis even if the task
        kills the process at once, and costs no round trip (see :class:`Deferred`).
        """
        self._deferred.send(
            self._started,
            [keys.DEVICES_SEEN, keys.DEVICES_BEATS, keys.started(channel)],
            [name, message_id, "1" if alone else "0"],
        )
        if wait:
            self._deferred.settle()

    def started_settled(self) -> None:
        """Read the reply of this thread's last :meth:`started` (raises its error, if any)."""
        self._deferred.settle()

    # -- wanted state -----------------------------------------------------------
    def wanted(self, name: str) -> str:
        """The state the operator wants for ``name``: its own, else its short name's, else everyone's."""
        own, short, everyone = self.client.hmget(keys.DEVICES_WANTED, name, short_name(name), keys.ALL_DEVICES)
        return text(own or short or everyone or DeviceState.RUNNING.value)

    def is_paused(self, name: str) -> bool:
        return self.wanted(name) == DeviceState.PAUSED.value

    def _want(self, names: Sequence[str] | None, state: DeviceState) -> None:
        pipe = self.client.pipeline(transaction=True)
        if names is None:  # everyone, now and later: forget per-device wishes
            pipe.delete(keys.DEVICES_WANTED)
            pipe.hset(keys.DEVICES_WANTED, keys.ALL_DEVICES, state.value)
        else:
            for name in names:
                pipe.hset(keys.DEVICES_WANTED, name, state.value)
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
        resumes consuming its channels (``hooks.mutitask_wanted``).
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

    def stop(self, selectors: Iterable[str | int] | None = None, wait: float = 10.0) -> list[str]:
        """Warm shutdown: each device finishes its task in hand, then its process ends.

        Returns the devices that were online and went away within ``wait`` seconds.
        """
        names = self.resolve(selectors)
        targets = self._online(names if names is not None else list(self.known()))
        if not targets:
            return []
        self.app.control.broadcast(
            LEAVING_COMMAND, destination=targets, reply=True, timeout=self.timeout, limit=len(targets)
        )
        self.app.control.shutdown(destination=targets)
        deadline = time.monotonic() + wait
        delay = 0.05
        still = targets
        while still and time.monotonic() < deadline:
            time.sleep(delay)  # a warm shutdown takes as long as the task in hand
            delay = min(delay * 2, 0.5)
            still = self._online(still)
        return [n for n in targets if n not in still]

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

    def devices(self) -> list[Device]:
        """One record per device: every one ever seen, plus expected ones that never came."""
        known = self.known()
        live = self._live(list(known))
        for name, (_, consumed) in live.items():
            known.setdefault(name, consumed)  # seen by Flower before it entered our roster
        seen = self.client.hgetall(keys.DEVICES_SEEN)
        done = self.client.hgetall(keys.DEVICES_DONE)
        now = time.time()
        result = []
        for name, channels in sorted(known.items()):
            wanted = self.wanted(name)
            state, in_hand = DeviceState.OFFLINE, 0
            if name in live:
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
