"""A device keeps to its channels' rate limits (see :mod:`.books.rate_limits`).

Before the tasks of a message start, the device takes their starts from the channel's
budget, a few at a time (:data:`CHUNK_SECONDS` of the limit), and waits when the budget
says so. The first take comes before the message is marked started: a device paused or
stopping meanwhile hands the message back untouched at once. Later takes of the same
message wait inline (the message is in hand, as a task in hand finishes on a pause); the
server's batcher keeps such a message short, as it counts the waits as the message's
time. Without a limit a message costs no call: the device's copy of the limits, at most
:data:`~.books.rate_limits.REFRESH` seconds old, says so.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from mutitask_celery import runtime
from mutitask_celery.books.rate_limits import REFRESH

CHUNK_SECONDS = 0.01  # starts taken at once: 10 ms of the limit (one at 20/s, 50 at 5,000/s)
NAP = 0.1  # longest single wait, so a pause or a stop is seen this soon


class Pacing:
    """This process's copy of the limits, and the waiting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[int, float] = {}
        self._read_at = -math.inf

    def limit(self, channel: int) -> float | None:
        with self._lock:
            if time.monotonic() - self._read_at < REFRESH:
                return self._limits.get(channel)
        limits = runtime.rate_limits().all()
        with self._lock:
            self._limits, self._read_at = limits, time.monotonic()
            return limits.get(channel)

    def chunk(self, channel: int) -> int | None:
        """Starts to take at once on ``channel``; None when it has no limit."""
        limit = self.limit(channel)
        return None if limit is None else max(1, int(limit * CHUNK_SECONDS))

    def take(self, channel: int, tasks: int, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Wait until ``tasks`` may start; False when ``give_up()`` turned true meanwhile."""
        limits = runtime.rate_limits()
        while True:
            wait, _ = limits.take(channel, tasks)
            if wait <= 0:
                return True
            if give_up():
                return False
            time.sleep(min(wait, NAP))  # the budget's own answer: when the next start is due
