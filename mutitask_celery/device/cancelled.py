"""What a device knows of cancelled channels (see :mod:`.books.cancels`), and
:func:`cancelled`, which a task function may ask to stop early.

A device asks before each message whether its channel is cancelled (it then records the
message's tasks as cancelled instead of starting them), and between the tasks of a message.
Asking Redis each time would cost a round trip a message; :class:`CancelledChannels` reads
the marks at most every :data:`LOOK_EVERY` seconds instead, for every thread of the process
(a prefork child reads its own), so a cancel takes hold within a second.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from mutitask_celery import runtime

log = logging.getLogger(__name__)
LOOK_EVERY = 0.5  # seconds a process trusts its last reading of the cancelled channels


class CancelledChannels:
    """This process's view of the cancelled channels (``channel in view``)."""

    def __init__(self) -> None:
        self._channels: frozenset[int] = frozenset()
        self._at = float("-inf")
        self._lock = threading.Lock()

    def __contains__(self, channel: object) -> bool:
        if time.monotonic() - self._at >= LOOK_EVERY:
            with self._lock:
                if time.monotonic() - self._at >= LOOK_EVERY:
                    self._refresh()
        return channel in self._channels

    def _refresh(self) -> None:
        try:
            self._channels = frozenset(runtime.cancels().channels())
        except redis.RedisError as exc:  # Redis away: keep the last view, ask again soon
            log.debug("could not read the cancelled channels: %s", exc)
        self._at = time.monotonic()


CANCELLED = CancelledChannels()
_running = threading.local()  # the channel of the message this thread runs


def running_channel(channel: int | None) -> None:
    """This thread now runs a task of ``channel`` (None: none)."""
    _running.channel = channel


def cancelled() -> bool:
    """For a task function: True once the channel of the task it runs was cancelled
    (``mutitask cancel``). A long task may poll it and return early; what it returns is
    recorded as its outcome, as always. False outside a task, and on a channel not cancelled."""
    channel = getattr(_running, "channel", None)
    return channel is not None and channel in CANCELLED
