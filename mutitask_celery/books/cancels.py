"""Cancelling a channel's run: ``mutitask cancel CHANNEL``, ``mutitask_celery.cancel(channel)``.

A run started with the wrong input, or no longer needed, used to end only by stopping devices
and killing the server, which left its tasks outstanding in the books. A cancel instead:

* marks the channel cancelled (``cancelled``, channel -> when): its server stops taking items
  from the channel's generator, and devices start none of its tasks (they read the mark,
  :class:`CancelledChannels`);
* takes the tasks waiting in its queue and in its backlog of reloaded tasks out of the books
  as *cancelled* (counted in ``stats:<ch>``, never run, not dead letters);
* leaves the tasks devices run to end: their outcomes are recorded as usual (a task function
  can ask :func:`mutitask_celery.cancelled` and stop early); a device that holds a message of
  the channel and had not started it records its tasks as cancelled too.

So the books balance: published = succeeded + dead-lettered + cancelled. A server that starts
the channel again clears the mark (:meth:`Cancels.clear`): a new run is a new intent.

The queue is drained here, on a Redis broker, message by message (``LPOP`` pops whole
messages, and each one's task ids leave the books in one step; a canceller that dies between
the two leaves tasks in the books and in no message: the server's sweep puts them back on the
queue, where a device records them cancelled). On RabbitMQ the queue drains through the
devices, which record each message of a cancelled channel as cancelled on arrival.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mutitask_celery.books import messages, steps
from mutitask_celery.errors import MutitaskError

if TYPE_CHECKING:
    from mutitask_celery.books.ledger import Ledger

log = logging.getLogger(__name__)
DRAIN_CHUNK = 100  # messages popped at a time from a cancelled channel's queue
BACKLOG_CHUNK = 10_000  # reloaded tasks cancelled in one step (a backlog may hold a million)


class NothingToCancel(MutitaskError, LookupError):
    """The channel is unknown to the books, or its run has ended: there is nothing to cancel."""


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did to one channel."""

    channel: int
    dropped: int  # tasks that never started, now out of the books as cancelled
    running: int  # tasks in devices' hands, left to end (their outcomes are recorded)

    def line(self) -> str:
        return (
            f"channel {self.channel}: cancelled; {self.dropped} waiting task(s) dropped, "
            f"{self.running} in devices' hands left to end"
        )


class Cancels:
    """The cancels of the channels in one Redis database (see the module's docstring)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.client = ledger.client
        self.keys = ledger.keys
        self._cancel = steps.CANCEL.on(self.client)
        self._drop = steps.DROP_CANCELLED.on(self.client)

    def cancel(self, channel: int) -> Cancelled:
        """Cancel ``channel``'s run; raises :class:`NothingToCancel` for a channel the books do
        not know, or one with nothing outstanding and no server feeding it."""
        if not self._known(channel):
            raise NothingToCancel(f"channel {channel} is not one the books know: nothing to cancel")
        if self.ledger.outstanding(channel) == 0 and not self._served(channel):
            raise NothingToCancel(f"channel {channel} has finished (nothing outstanding, no server): nothing to cancel")
        dropped = self.mark_and_drain(channel)
        return Cancelled(channel, dropped, self.ledger.outstanding(channel))

    def cancel_all(self) -> list[Cancelled]:
        """Cancel every channel with a run going (tasks outstanding, or a server feeding it)."""
        sizes = self.client.hkeys(self.keys.channel_sizes)  # every channel a server has run
        going = [ch for ch in sorted({int(c) for c in sizes}) if self.ledger.outstanding(ch) or self._served(ch)]
        if not going:
            raise NothingToCancel("no channel has a run going: nothing to cancel")
        return [self.cancel(ch) for ch in going]

    def mark_and_drain(self, channel: int) -> int:
        """Mark ``channel`` cancelled (again: harmless) and take what waits in its backlog and
        queue out of the books; returns how many tasks. The server calls it once more after
        its last publish, for a message that went out as the cancel came."""
        dropped, left = 0, 1
        while left:
            reply = self._cancel(
                cancelled=self.keys.cancelled,
                backlog=self.keys.backlog(channel),
                pending=self.keys.pending(channel),
                meta=self.keys.meta(channel),
                lost=self.keys.lost(channel),
                stats=self.keys.stats(channel),
                notify=self.keys.notify(channel),
                channel=str(channel),
                most=str(BACKLOG_CHUNK),
            )
            dropped, left = dropped + int(reply[0]), int(reply[1])
        if self.ledger.transport.pushes_in_step:  # the queue is a list in this Redis
            dropped += self._drain(channel)
        return dropped

    def drop(self, channel: int, task_ids: list[str]) -> int:
        """Tasks of ``channel`` that will not start leave the books as cancelled; returns how many."""
        if not task_ids:
            return 0
        return int(
            self._drop(
                pending=self.keys.pending(channel),
                meta=self.keys.meta(channel),
                lost=self.keys.lost(channel),
                claims=self.keys.claims(channel),
                stats=self.keys.stats(channel),
                notify=self.keys.notify(channel),
                task_ids=task_ids,
            )
        )

    def channels(self) -> set[int]:
        """The channels cancelled now."""
        return {int(c) for c in self.client.hkeys(self.keys.cancelled)}

    def clear(self, channels: list[int]) -> None:
        """A server starts these channels: a cancel of an earlier run no longer holds."""
        if channels:
            self.client.hdel(self.keys.cancelled, *[str(c) for c in channels])

    def _drain(self, channel: int) -> int:
        """Pop the channel's queue empty, each message's tasks out of the books as cancelled."""
        queue = self.keys.queue_list(channel)
        dropped, foreign = 0, []
        while raw := self.client.lpop(queue, DRAIN_CHUNK):
            for message in raw if isinstance(raw, list) else [raw]:
                try:
                    carried = messages.carried(json.loads(message))
                except ValueError:
                    carried = None
                if carried is None:
                    foreign.append(message)  # not one of ours: it goes back, untouched
                    continue
                dropped += self.drop(channel, [task_id for task_id, _ in carried[1]])
        if foreign:
            self.client.rpush(queue, *foreign)
            log.warning("%d message(s) on channel %s's queue are not mutitask's: left there", len(foreign), channel)
        return dropped

    def _known(self, channel: int) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.keys.stats(channel), self.keys.pending(channel), self.keys.backlog(channel))
        pipe.hexists(self.keys.cancelled, str(channel))
        found, marked = pipe.execute()
        return bool(found) or bool(marked)

    def _served(self, channel: int) -> bool:
        """Whether a server holds the channel's lease now (it may still publish)."""
        return bool(self.client.exists(self.keys.channel_lease(channel)))
