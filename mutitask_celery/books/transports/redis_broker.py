"""The books' own Redis as Celery's broker: a books step pushes its messages itself."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from mutitask_celery import keys
from mutitask_celery.books import messages
from mutitask_celery.books.transports.base import Groups, Transport


class RedisBroker(Transport):
    """Celery's broker is the Redis that holds the books. A dead device's messages wait in
    kombu's unacked hash, so devices note what they hold (see :mod:`.recovery.reaper`)."""

    lua_mode = "queue"
    notes_holds = True

    def step_messages(self, channel: int, groups: Groups, suspect: bool = False) -> list[str]:
        queue = keys.queue(channel)
        return [messages.build(self.app, queue, channel, group, suspect) for group in groups]

    def step_templates(self, channel: int, groups: Groups) -> list[list[str | int]]:
        queue, first, out = keys.queue(channel), 1, []
        for group in groups:
            out.append(messages.template(self.app, queue, channel, group, first))
            first += len(group)
        return out

    def after_step(self, channel: int, groups: Groups) -> None:
        pass  # the step pushed the messages itself

    def send(self, channel: int, groups: Groups, pipe: redis.client.Pipeline, suspect: bool = False) -> None:
        pipe.lpush(self.keys.queue_list(channel), *self.step_messages(channel, groups, suspect))
        pipe.execute()

    def check(self, channels: Sequence[int] = ()) -> None:
        pass  # the books' Redis: checked with them (connection.check_redis)

    def close(self) -> None:
        pass  # its connections are the books' own pool
