"""Another broker (e.g. RabbitMQ): a books step journals its tasks, a confirmed publisher sends them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis
from celery import Celery

from mutitask_celery import keys
from mutitask_celery.books.transports.base import Groups, Transport
from mutitask_celery.books.transports.publisher import BrokerPublisher
from mutitask_celery.keys import DEFAULT, Keys


class KombuBroker(Transport):
    """Celery's broker is not the books' Redis. The broker redelivers a dead consumer's
    messages by itself, so devices note nothing (see :mod:`.recovery.redeliveries`)."""

    lua_mode = "journal"
    notes_holds = False

    def __init__(
        self, app: Celery, client: redis.Redis, keys: Keys = DEFAULT, publisher: BrokerPublisher | None = None
    ) -> None:
        super().__init__(app, client, keys)
        self.publisher = publisher or BrokerPublisher(app)  # one broker connection per process

    def step_messages(self, channel: int, groups: Groups, suspect: bool = False) -> list[str]:
        return [""] * len(groups)

    def step_templates(self, channel: int, groups: Groups) -> list[list[str | int]]:
        return []  # the publisher sends the messages after the step (see after_step)

    def after_step(self, channel: int, groups: Groups) -> None:
        if groups:
            self.publisher.send(keys.queue(channel), channel, groups)
            self.clear_journal(channel, [task_id for group in groups for task_id, _ in group])

    def send(self, channel: int, groups: Groups, pipe: redis.client.Pipeline, suspect: bool = False) -> None:
        ids = [task_id for group in groups for task_id, _ in group]
        pipe.zadd(self.keys.unsent(channel), dict.fromkeys(ids, time.time()))
        pipe.execute()  # journal first: a publisher killed now loses nothing
        self.publisher.send(keys.queue(channel), channel, groups, suspect)
        self.clear_journal(channel, ids)

    def journaled(self, channel: int, older_than: float, limit: int) -> list[str]:
        """Up to ``limit`` task ids journaled more than ``older_than`` seconds ago: a live
        publisher clears its own within milliseconds, so these were a dead one's."""
        found = self.client.zrangebyscore(
            self.keys.unsent(channel), "-inf", time.time() - older_than, start=0, num=limit
        )
        return [str(task_id) for task_id in found]

    def clear_journal(self, channel: int, task_ids: Sequence[str]) -> None:
        """The tasks reached the broker (or are no longer outstanding): out of the journal."""
        if task_ids:
            self.client.zrem(self.keys.unsent(channel), *task_ids)

    def check(self, channels: Sequence[int] = ()) -> None:
        self.publisher.check()
        self.publisher.declare([keys.queue(channel) for channel in channels])

    def close(self) -> None:
        self.publisher.close()
