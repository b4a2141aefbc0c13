"""A device's own copy of the state the operator wants for it: running or paused.

Every task checks it before it starts, so a paused device starts nothing,
not even a message it already holds. Reading Redis for that costs a round
trip per message (about 1 ms on a busy machine, 2% of a 50 ms task), so the
device keeps the answer and has it brought to it:

* :func:`control.Devices.pause` and ``start`` tell each online device through
  Celery's remote control (:data:`.WANTED_COMMAND`, answered in ``device.lifecycle``)
  and return only after the device replied, so the pause holds from then on;
* the heartbeat re-reads Redis every couple of seconds, for a change made
  while the device was unreachable;
* a copy older than :data:`STALE` seconds is not trusted: the task reads
  Redis itself, as it does outside a device.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

STALE = 6.0  # seconds: three missed heartbeats and the task asks Redis itself


class WantedState:
    """The paused flag of this device, with when it was last confirmed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.name: str | None = None  # the device this process runs; others are read from Redis
        self._paused: bool | None = None
        self._confirmed = 0.0
        self._generation = 0  # bumped by every control message, so an older read cannot undo it

    def install(self, name: str, paused: bool) -> None:
        """The worker ``name`` is ready and has read its wanted state."""
        with self._lock:
            self.name = name
            self._generation += 1
        self.told(paused)

    @property
    def paused(self) -> bool | None:
        """The kept answer (None before the worker is ready)."""
        with self._lock:
            return self._paused

    def told(self, paused: bool) -> None:
        """The operator's word, by remote control: newer than any read in flight."""
        with self._lock:
            self._paused, self._confirmed = paused, time.monotonic()
            self._generation += 1

    def refresh(self, read: Callable[[], bool]) -> None:
        """Re-read the wanted state (heartbeat), unless a control message arrived meanwhile."""
        with self._lock:
            generation = self._generation
        paused = read()
        with self._lock:
            if generation == self._generation:
                self._paused, self._confirmed = paused, time.monotonic()

    def is_paused(self, name: str, read: Callable[[], bool]) -> bool:
        """The kept answer for this device while fresh; otherwise ``read()`` it (and keep it)."""
        with self._lock:
            if name != self.name:
                mine = False
            elif self._paused is not None and time.monotonic() - self._confirmed < STALE:
                return self._paused
            else:
                mine = True
        if not mine:
            return read()
        self.refresh(read)
        with self._lock:
            return bool(self._paused)

    def forget(self) -> None:
        """The worker stopped: nothing kept is trusted any more."""
        with self._lock:
            self.name, self._paused = None, None
            self._generation += 1
