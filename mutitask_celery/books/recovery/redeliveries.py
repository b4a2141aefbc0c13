"""Recovery where the broker redelivers by itself (RabbitMQ): count the redeliveries, resend the journal.

The broker hands a dead consumer's messages out again, flagged ``redelivered``, the
moment its connection drops: no notes, no reaping, nothing stranded for a sweep. What
the broker cannot know is how often a task killed its device: :meth:`Redeliveries.settle`
counts that from the flag and the start marks, so a poison task is dead-lettered here too.
And a publisher that died between a books step and the broker's confirmation left its
tasks in the journal: the server sends them again (:meth:`Redeliveries.resend_unsent`).
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


class Redeliveries(Recovery):
    """Poison tasks on a broker that redelivers by itself, counted on the device.

    A redelivered message that a device had started (``started:<ch>`` still names it)
    costs each of its tasks one death in ``lost:<ch>`` (the count the Redis reaper keeps;
    finishing the task clears it); one only held, or given back untouched, costs none.
    Only redelivered messages cost a Redis call.
    """

    def __init__(self, ledger: Ledger, transport: KombuBroker, max_attempts: int = DEFAULTS.max_attempts) -> None:
        super().__init__(ledger)
        self.transport = transport
        self.max_attempts = max_attempts
        self._settle = steps.SETTLE.on(self.client)

    def settle(self, channel: int, device: str, message_id: str, items: Sequence[messages.Item]) -> Verdict:
        """Count the deaths a redelivered message caused; say whether and how it runs.

        Skipped when all its tasks are finished (only the acknowledgement was lost), when
        it carries several tasks and one of them had started on a device that died (each
        goes back alone, flagged suspect), or when its one task has now died
        ``max_attempts`` times, the last one running alone (dead-lettered as ``worker lost``).
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
        if max(n for _, n in alive) == 0:
            return Verdict.RUN
        if len(items) > 1:
            self.ledger.republish(channel, [task_id for task_id, _ in alive], suspect=True)
            return Verdict.SKIP
        task_id, n = alive[0]
        if n < self.max_attempts or not alone:
            return Verdict.RUN_ALONE
        bury(self.ledger, channel, device, task_id, n)
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
