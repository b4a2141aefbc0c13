"""What every recovery does, whatever the transport: the duties and what they report.

A recovery takes the ledger and the transport it serves as arguments (it sits beside
them, see :mod:`.books.recovery`); the device's life (``device.lifecycle``), its tasks
(``device.tasks``) and the server (``serving.producer``) call it at the moments named
here. Where the broker redelivers a dead consumer's messages by itself, most duties have
nothing to do: those have an empty default here, and only the Redis broker's
:class:`.Reaper` fills them in.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from enum import Enum

from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Ledger, Outcome
from mutitask_celery.keys import Keys

log = logging.getLogger(__name__)

WORKER_LOST = "worker lost"  # lua/recover.lua writes the same reason


def worker_lost(attempts: int) -> str:
    """The dead-letter reason of a poison task."""
    return f"{WORKER_LOST}: the device died while running it, {attempts} time(s)"


def bury(ledger: Ledger, channel: int, device: str, task_id: str, attempts: int) -> None:
    """Dead-letter a task that killed its device ``attempts`` times (either broker)."""
    log.error("task %s of channel %d killed its device %d times: dead-lettered", task_id, channel, attempts)
    ledger.finish(channel, device, [Outcome(task_id, ok=False, reason=worker_lost(attempts))])


def burial_keys(keys: Keys, channel: int) -> dict[str, str]:
    """The keys a step that buries a task of ``channel`` takes (``recover.lua``,
    ``settle.lua``), by name: its reload history, its counters, the dead-letter indexes (the
    field index too), the set of channels with dead letters, and the server's wake-up list."""
    return {
        "meta": keys.meta(channel),
        "stats": keys.stats(channel),
        "dead_index": keys.dead_index(),
        "dead_index_ch": keys.dead_index(channel),
        "dead_channels": keys.dead_channels,
        "notify": keys.notify(channel),
        "dead_by_field": keys.dead_by_field,
    }


class Recovered(str, Enum):
    """What became of one message a reaper tried to take back (``lua/recover.lua``)."""

    ALIVE = "alive"  # its device was heard from since it was judged dead: it keeps the message
    MOVED = "moved"  # another reaper (or the device) acted on it first
    CHANGED = "changed"  # started meanwhile: read it again
    GONE = "gone"  # acknowledged, or its tag names a later delivery: the note was stale
    RESTORED = "restored"  # back on its queue untouched: it had not started, no death
    SUSPECTS = "suspects"  # it had started: each task back alone, one death each
    BURIED = "buried"  # its one task died alone max_attempts times: dead-lettered
    HANDED = "handed"  # its device, leaving, gave it back started: each task back alone, no death


class Verdict(str, Enum):
    """What a device does with a message that just arrived (:meth:`Recovery.settle`)."""

    RUN = "run"
    RUN_ALONE = "run alone"  # a suspect: it was running when a device died
    SKIP = "skip"  # finished already, split into suspects, or buried


class Recovery(ABC):
    """Gives a dead device's tasks back once, and buries a poison task."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.client = ledger.client
        self.keys = ledger.keys

    # -- what a device calls ---------------------------------------------------------
    def device_started(self, name: str) -> int:
        """A device starts under ``name``: take back what its previous life held; returns how
        many messages. Nothing to do where the broker redelivers by itself."""
        return 0

    def device_stopped(self, name: str) -> int:
        """A device stopped and its messages went back: drop its stale notes; returns how many."""
        return 0

    def look_for_strays(self) -> None:  # noqa: B027  (nothing to do where nobody reaps)
        """Something may have stranded a message in no device's note: have the server sweep."""

    def reap(self) -> int:
        """Give the messages of devices that went silent to the others; returns how many."""
        return 0

    def lost_touch(self) -> None:  # noqa: B027  (nothing to do where nobody reaps)
        """This process could not reach Redis: silences that overlap the outage are no deaths
        (see :meth:`.Reaper._watched`)."""

    def release_dropped(self, name: str, holding: set[str]) -> int:
        """Give back what device ``name`` notes in hand but no longer holds (``holding``: the
        message ids its worker still has); returns how many."""
        return 0

    def forget_silent(self) -> list[str]:
        """Drop from the roster the names silent for long with nothing in hand; returns them."""
        return []

    def hand_back(self, device: str, keep: Collection[str], started: bool) -> int:
        """The live ``device`` is leaving (SIGTERM): give back, at once and without a death,
        every message it notes in hand but those of ``keep`` — only those not started
        (``started`` False: one that starts meanwhile is left to finish), or whatever their
        state (True: its shutdown grace ran out). Returns how many went back. Where the
        broker redelivers by itself (RabbitMQ) nothing is done here: its messages go back
        when the device's connection closes."""
        return 0

    @abstractmethod
    def child_lost(self, device: str, message_id: str) -> Recovered | None:
        """A prefork child died running the message: what became of it, or None to let Celery requeue it."""

    @abstractmethod
    def settle(
        self, channel: int, device: str, message_id: str, items: Sequence[messages.Item], deliveries: int = 0
    ) -> Verdict:
        """How a message that just arrived runs (a redelivery may be a poison task's);
        ``deliveries``: how often the broker says it handed the message out before (a quorum
        queue's ``x-delivery-count``), 0 where it does not say."""

    # -- what the server calls --------------------------------------------------------
    @abstractmethod
    def server_duties(self, channels: Sequence[int]) -> None:
        """The server's recovery round, every heartbeat period (its own thread)."""

    def end_of_run(self, channels: Sequence[int]) -> None:  # noqa: B027  (nothing left behind elsewhere)
        """The run is over (nothing outstanding): drop what it left behind that nothing else
        would (see :meth:`.Reaper.drop_finished`)."""
