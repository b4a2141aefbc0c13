"""How many messages a device holds ahead of the ones it runs, from its task times.

Celery fetches a device's next message only after the previous one is acked,
so with one message per slot every task pays a round trip to the broker
before it starts: about 2 ms here, 4% of a 50 ms task. Holding one more
message per slot hides that wait. For long tasks, holding one back is wrong:
the held message waits behind a task of minutes while other devices sit idle.
So a device starts at one message per slot (Celery's prefetch multiplier 1)
and holds a second per slot only while its messages finish quickly. A paused
device still starts nothing it holds: every task checks the wanted state first
and gives a held message back (``tasks.run_items``).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)

SHORT = 0.5  # seconds: messages this quick are worth a second one in hand per slot
LONG = 2.0  # seconds: messages this slow go back to one per slot
WEIGHT = 0.2  # how much one message moves the running average


class _QoS(Protocol):
    """The part of kombu's ``kombu.common.QoS`` used here (thread-safe; applied by the worker's loop)."""

    def increment_eventually(self, n: int = 1) -> int: ...

    def decrement_eventually(self, n: int = 1) -> int: ...


class PrefetchTuner:
    """Follows a device's message times and moves its prefetch between 1 and 2 per slot."""

    def __init__(self, qos: _QoS, slots: int) -> None:
        self._qos = qos
        self._slots = max(1, slots)
        self._average: float | None = None
        self.extra = False  # holding a second message per slot
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        """One message took ``seconds`` to run; hold more or fewer if that changes the picture."""
        with self._lock:
            average = seconds if self._average is None else (1 - WEIGHT) * self._average + WEIGHT * seconds
            self._average = average
            # Hysteresis: a device whose messages take 0.5-2 s keeps what it has.
            want = average < SHORT if not self.extra else average < LONG
            if want == self.extra:
                return
            self.extra = want
            if want:
                self._qos.increment_eventually(self._slots)
            else:
                self._qos.decrement_eventually(self._slots)
        log.debug("prefetch now %s message(s) per slot (messages take %.3fs)", 2 if want else 1, average)
