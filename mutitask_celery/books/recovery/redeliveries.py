"""Recovery where the broker redelivers by itself (RabbitMQ): count the redeliveries, resend the journal.

The broker hands a dead consumer's messages out again, flagged ``redelivered``, the
moment its connection drops: no notes, no reaping, nothing stranded for a sweep. What
the broker cannot know is how often a task killed its device: :meth:`Redeliveries.settle`
counts that from the flag and the start marks, so a poison task is dead-lettered here too.
And a publisher that died between a books step and the broker's confirmation left its
tasks in the journal: the server sends them again (:meth:`Redeliveries.resend_unsent`).

A quorum queue counts too: each message carries how often it came back (``x-delivery-count``).
That count is not a count of deaths: a message also comes back when a device dies only
holding it, hands it back (paused, leaving, Redis out of reach) or loses its connection to
a restarting RabbitMQ, and a death is charged only to tasks that had started. So deaths are
still counted from the start marks. What the count is for is the broker's own poison
handling: a quorum queue with a delivery limit (20 by default from RabbitMQ 4.0, or a
``delivery-limit`` policy) drops, or dead-letters where mutitask never looks, a message that
came back more often. A message that came back :data:`FRESH_AFTER` times is therefore
published afresh (its count starts again at 0) and the old one acknowledged: its tasks keep
their deaths, counted in Redis by task, and a task that had died runs alone as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mutitask_celery.books import messages, steps
from mutitask_celery.books.ledger import Ledger
from mutitask_celery.books.recovery.base import Recovered, Recovery, Verdict, burial_keys, bury
from mutitask_celery.books.transports.kombu_broker import KombuBroker
from mutitask_celery.settings import DEFAULTS

log = logging.getLogger(__name__)

UNSENT_GRACE = 10.0  # seconds after which a journal entry is a publisher's that died (a call takes ms)
UNSENT_BATCH = 500  # journal entries handled per channel per round
# Times a message may come back (a quorum queue's x-delivery-count) before its tasks go out in
# a fresh message: half RabbitMQ 4's default delivery limit (20), so the broker never drops one.
FRESH_AFTER = 10


class Redeliveries(Recovery):
    """Poison tasks on a broker that redelivers by itself, counted on the device.

    A redelivered message that a device had started (``started:<ch>`` still names it)
    costs each of its tasks one death in ``lost:<ch>`` (the count the Redis reaper keeps;
    finishing the task clears it); one only held, or given back untouched, costs none.
    Only redelivered messages cost a Redis call.
    """

    def __init__(
        self,
        ledger: Ledger,
        transport: KombuBroker,
        max_attempts: int = DEFAULTS.max_attempts,
        fresh_after: int = FRESH_AFTER,
    ) -> None:
        super().__init__(ledger)
        self.transport = transport
        self.max_attempts = max_attempts
        self.fresh_after = fresh_after
        self._settle = steps.SETTLE.on(self.client)

    def settle(
        self, channel: int, device: str, message_id: str, items: Sequence[messages.Item], deliveries: int = 0
    ) -> Verdict:
        """Count the deaths a redelivered message caused; say whether and how it runs.

        Skipped when all its tasks are finished (only the acknowledgement was lost), when
        it carries several tasks and one of them had started on a device that died (each
        goes back alone, flagged suspect), when its one task has now died ``max_attempts``
        times, the last one running alone (dead-lettered as ``worker lost``), or when the
        broker has handed it out ``fresh_after`` times (``deliveries``): its tasks go out
        again in a fresh message (see the module docstring).
        """
        ids = [task_id for task_id, _ in items]
        reply = self._settle(
            pending=self.keys.pending(channel),
            lost=self.keys.lost(channel),
            started=self.keys.started(channel),
            claims=self.keys.claims(channel),
            **burial_keys(self.keys, channel),
            records=[self.keys.dead_record(t) for t in ids],
            message_id=message_id,
            channel=channel,
            task_ids=ids,
        )
        alone, *deaths = (int(n) for n in reply)
        alive = [(task_id, n) for (task_id, _), n in zip(items, deaths, strict=True) if n >= 0]
        if not alive:
            return Verdict.SKIP
        died = max(n for _, n in alive) > 0
        if died and len(items) > 1:
            self.ledger.republish(channel, [task_id for task_id, _ in alive], suspect=True)
            return Verdict.SKIP
        task_id, n = alive[0]
        if died and n >= self.max_attempts and alone:
            bury(self.ledger, channel, device, task_id, n)
            return Verdict.SKIP
        if deliveries >= self.fresh_after:
            return self._afresh(channel, message_id, [task_id for task_id, _ in alive], deliveries, died)
        return Verdict.RUN_ALONE if died else Verdict.RUN

    def _afresh(self, channel: int, message_id: str, task_ids: Sequence[str], deliveries: int, died: bool) -> Verdict:
        """Publish the tasks again in a fresh message (the broker's count of it starts at 0),
        alone if they died before; this one is then acknowledged unrun."""
        n = self.ledger.republish(channel, task_ids, suspect=died)
        log.warning(
            "channel %d: message %s came back %d time(s) (x-delivery-count): its %d task(s) go out again in a "
            "fresh message, before the queue's delivery limit drops it",
            channel,
            message_id,
            deliveries,
            n,
        )
        return Verdict.SKIP

    def child_lost(self, device: str, message_id: str) -> Recovered | None:
        return None  # Celery requeues it; the broker redelivers it, and settle() counts that

    def server_duties(self, channels: Sequence[int]) -> None:
        self.resend_unsent(channels)

    def resend_unsent(self, channels: Sequence[int], grace: float = UNSENT_GRACE) -> int:
        """Publish again what a publisher that died left in the journal; returns how many
        tasks. Only entries older than ``grace`` seconds: a live publisher clears its own
        within milliseconds. Tasks no longer outstanding are just dropped from it."""
        resent = 0
        for channel in channels:
            ids = self.transport.journaled(channel, grace, UNSENT_BATCH)
            if not ids:
                continue
            n = self.ledger.republish(channel, ids)
            self.transport.clear_journal(channel, ids)
            if n:
                log.warning(
                    "channel %d: %d task(s) were in the books but never reached the broker "
                    "(their publisher died): publishing them again",
                    channel,
                    n,
                )
            resent += n
        return resent
