"""The broker kind, decided once: tasks travel through the books' own Redis, or another broker.

:func:`mutitask_celery.runtime.broker` chooses, from the settings, and nothing else asks
again. What differs between the two lives here, one class each:

- :class:`BooksRedis`: Celery's broker is the Redis database that holds the books (however
  the two URLs name it). A books step (a Lua script) pushes a task message onto the queue
  itself, so the books and the queue change together. A dead device's messages wait in
  kombu's unacked hash: devices note what they hold, the :class:`.Reaper` gives a dead
  device's messages back and counts deaths to bury a poison task, and the server sweeps
  for what a death stranded.
- :class:`OtherBroker` (e.g. RabbitMQ): a books step enters the tasks in a journal
  (``unsent:<ch>``) instead; the process's one confirmed publisher sends them right after
  and clears the journal, and the server sends again what a dead publisher left there. The
  broker redelivers a dead consumer's messages by itself; :class:`.Redeliveries` counts
  the redeliveries to bury a poison task. Devices note nothing.

A broker is built, then :meth:`Broker.attach`\\ ed to the books it serves (recovery needs
the ledger, and the ledger publishes through the broker).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import redis
from celery import Celery

from mutitask_celery import keys
from mutitask_celery.books import messages
from mutitask_celery.books.publisher import BrokerPublisher
from mutitask_celery.books.recovery import Reaper, Recovered, Redeliveries, Verdict

if TYPE_CHECKING:
    from mutitask_celery.books.ledger import Ledger
    from mutitask_celery.settings import Settings

log = logging.getLogger(__name__)
Groups = Sequence[Sequence[messages.Item]]  # the tasks of each message, in order
UNSENT_GRACE = 10.0  # seconds after which a journal entry is a publisher's that died (a call takes ms)
UNSENT_BATCH = 500  # journal entries handled per channel per round


class Broker(ABC):
    """Everything that differs between the books' Redis as the broker and another broker."""

    #: The word ``publish.lua`` and ``feed.lua`` take: the step pushes the message onto the
    #: queue itself (``queue``) or enters its tasks in the journal (``journal``).
    lua_mode: ClassVar[str]
    #: Devices note the messages they hold: the reaper and the books' held counts read the notes.
    notes_holds: ClassVar[bool]

    def __init__(self, app: Celery, client: redis.Redis, conf: Settings) -> None:
        self.app, self.client, self.conf = app, client, conf
        self._ledger: Ledger | None = None

    @property
    def pushes_in_step(self) -> bool:
        """True when a books step has put the message on the queue by the time it replies."""
        return self.lua_mode == "queue"

    @property
    def keeps_frames(self) -> bool:
        """Whether tasks' data may be kept in the books as binary frames
        (:func:`.codec.encode_binary`): only where the books' Redis is the broker, and a big
        task's message refers to its data there; another broker carries the data as text."""
        return self.pushes_in_step

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the broker serves no books yet: attach() it to a Ledger first")
        return self._ledger

    def attach(self, ledger: Ledger) -> None:
        """Serve ``ledger``'s books (recovery acts on them)."""
        self._ledger = ledger

    # -- publishing --------------------------------------------------------------------
    @abstractmethod
    def step_messages(self, channel: int, groups: Groups, suspect: bool = False) -> list[str]:
        """The messages a books step pushes itself, one a group (empty strings when it journals);
        ``suspect``: each runs alone (see :func:`.messages.task_message`)."""

    @abstractmethod
    def step_templates(self, channel: int, groups: Groups) -> list[list[str | int]]:
        """The messages a publish step has Redis put together around the tasks' data, one a
        group (see :func:`.messages.template`); none when it journals."""

    @abstractmethod
    def after_step(self, channel: int, groups: Groups) -> None:
        """After a books step accepted ``groups``: send what it journaled, then clear the journal."""

    @abstractmethod
    def send(self, channel: int, groups: Groups, pipe: redis.client.Pipeline, suspect: bool = False) -> None:
        """Publish outside a Lua step, with the books' changes already queued in ``pipe``."""

    @abstractmethod
    def resend_unsent(self, channels: Sequence[int], grace: float = UNSENT_GRACE) -> int:
        """Publish again what a publisher that died left in the journal; returns how many tasks."""

    @abstractmethod
    def check(self) -> None:
        """Fail within seconds, with a clear error, when the broker cannot be reached."""

    @abstractmethod
    def close(self) -> None:
        """Drop this process's connection to the broker, if it holds one."""

    # -- recovery ----------------------------------------------------------------------
    @abstractmethod
    def device_started(self, name: str) -> int:
        """A device starts under ``name``: take back what its previous life held; returns how many messages."""

    @abstractmethod
    def device_stopped(self, name: str) -> int:
        """A device stopped and its messages went back: drop its stale notes; returns how many."""

    @abstractmethod
    def look_for_strays(self) -> None:
        """Something may have stranded a message in no device's note: have the server sweep."""

    @abstractmethod
    def reap(self) -> None:
        """Give the messages of devices that went silent to the others."""

    def lost_touch(self) -> None:  # noqa: B027  (nothing to do where nobody reaps)
        """This process could not reach Redis: silences that overlap the outage are no deaths
        (see :meth:`.Reaper._watched`)."""

    def release_dropped(self, name: str, holding: set[str]) -> int:
        """Give back what device ``name`` notes in hand but no longer holds (``holding``: the
        message ids its worker still has); returns how many. Nothing to do where devices
        note nothing."""
        return 0

    @abstractmethod
    def forget_silent(self) -> None:
        """Drop from the roster the names silent for long with nothing in hand."""

    @abstractmethod
    def server_duties(self, channels: Sequence[int]) -> None:
        """The server's recovery round, every heartbeat period (its own thread)."""

    def end_of_run(self, channels: Sequence[int]) -> None:  # noqa: B027  (nothing to do elsewhere)
        """The run is over (nothing outstanding): drop what it left behind that nothing else
        would (see :meth:`.Reaper.drop_finished`)."""

    @abstractmethod
    def child_lost(self, device: str, message_id: str) -> Recovered | None:
        """A prefork child died running the message: what became of it, or None to let Celery requeue it."""

    @abstractmethod
    def settle(self, channel: int, device: str, message_id: str, items: Sequence[messages.Item]) -> Verdict:
        """How a message that just arrived runs (a redelivery may be a poison task's)."""


class BooksRedis(Broker):
    """Celery's broker is the Redis that holds the books."""

    lua_mode = "queue"
    notes_holds = True

    def __init__(self, app: Celery, client: redis.Redis, conf: Settings) -> None:
        super().__init__(app, client, conf)
        self._reaper: Reaper | None = None

    @property
    def reaper(self) -> Reaper:
        """The dead-device reaper of this process, built on first use."""
        if self._reaper is None:
            conf = self.conf
            self._reaper = Reaper(
                self.client,
                self.ledger,
                dead_after=conf.dead_after,
                max_attempts=conf.max_attempts,
                forget_after=conf.forget_after,
            )
        return self._reaper

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
        pipe.lpush(keys.queue(channel), *self.step_messages(channel, groups, suspect))
        pipe.execute()

    def resend_unsent(self, channels: Sequence[int], grace: float = UNSENT_GRACE) -> int:
        return 0  # no journal: a books step pushes its messages itself

    def check(self) -> None:
        pass  # the books' Redis: checked with them (connection.check_redis)

    def close(self) -> None:
        pass  # its connections are the books' own pool

    def device_started(self, name: str) -> int:
        self.client.delete(keys.steps(name))  # the previous life's retries are over
        self.reaper.announce_death()  # whatever killed the previous life may have stranded a message
        return self.reaper.recover(name)

    def device_stopped(self, name: str) -> int:
        return self.reaper.drop_stale_notes(name)

    def look_for_strays(self) -> None:
        self.reaper.announce_death()

    def reap(self) -> None:
        self.reaper.reap()

    def lost_touch(self) -> None:
        self.reaper.lost_touch()

    def release_dropped(self, name: str, holding: set[str]) -> int:
        return self.reaper.release_dropped(name, holding)

    def forget_silent(self) -> None:
        self.reaper.forget_silent()

    def server_duties(self, channels: Sequence[int]) -> None:
        self.reaper.reap()
        self.reaper.sweep_if_due(channels)

    def end_of_run(self, channels: Sequence[int]) -> None:
        self.reaper.drop_finished(channels)

    def child_lost(self, device: str, message_id: str) -> Recovered | None:
        return self.reaper.worker_lost(device, message_id)

    def settle(self, channel: int, device: str, message_id: str, items: Sequence[messages.Item]) -> Verdict:
        return Verdict.RUN  # the reaper counts deaths and sends suspects back flagged


class OtherBroker(Broker):
    """Celery's broker is not the books' Redis (e.g. RabbitMQ): a journal and a confirmed publisher."""

    lua_mode = "journal"
    notes_holds = False

    def __init__(
        self, app: Celery, client: redis.Redis, conf: Settings, publisher: BrokerPublisher | None = None
    ) -> None:
        super().__init__(app, client, conf)
        self.publisher = publisher or BrokerPublisher(app)  # one broker connection per process
        self._redeliveries: Redeliveries | None = None

    def step_messages(self, channel: int, groups: Groups, suspect: bool = False) -> list[str]:
        return [""] * len(groups)

    def step_templates(self, channel: int, groups: Groups) -> list[list[str | int]]:
        return []  # the publisher sends the messages after the step (see after_step)

    def after_step(self, channel: int, groups: Groups) -> None:
        if groups:
            self.publisher.send(keys.queue(channel), channel, groups)
            self.client.zrem(keys.unsent(channel), *[task_id for group in groups for task_id, _ in group])

    def send(self, channel: int, groups: Groups, pipe: redis.client.Pipeline, suspect: bool = False) -> None:
        ids = [task_id for group in groups for task_id, _ in group]
        pipe.zadd(keys.unsent(channel), dict.fromkeys(ids, time.time()))
        pipe.execute()  # journal first: a publisher killed now loses nothing
        self.publisher.send(keys.queue(channel), channel, groups, suspect)
        self.client.zrem(keys.unsent(channel), *ids)

    def resend_unsent(self, channels: Sequence[int], grace: float = UNSENT_GRACE) -> int:
        """Only entries older than ``grace`` seconds: a live publisher clears its own within
        milliseconds. Tasks no longer outstanding are just dropped from it."""
        resent = 0
        for channel in channels:
            ids = [
                str(task_id)
                for task_id in self.client.zrangebyscore(
                    keys.unsent(channel), "-inf", time.time() - grace, start=0, num=UNSENT_BATCH
                )
            ]
            if not ids:
                continue
            n = self.ledger.republish(channel, ids)
            self.client.zrem(keys.unsent(channel), *ids)
            if n:
                log.warning(
                    "channel %d: %d task(s) were in the books but never reached the broker "
                    "(their publisher died): publishing them again",
                    channel,
                    n,
                )
            resent += n
        return resent

    def check(self) -> None:
        self.publisher.check()

    def close(self) -> None:
        self.publisher.close()

    # The broker redelivers a dead consumer's messages by itself, flagged: no notes, no
    # reaping, nothing stranded for a sweep; settle() counts the redeliveries instead.
    def device_started(self, name: str) -> int:
        return 0

    def device_stopped(self, name: str) -> int:
        return 0

    def look_for_strays(self) -> None:
        pass

    def reap(self) -> None:
        pass

    def forget_silent(self) -> None:
        pass

    def server_duties(self, channels: Sequence[int]) -> None:
        self.resend_unsent(channels)

    def child_lost(self, device: str, message_id: str) -> Recovered | None:
        return None  # Celery requeues it; the broker redelivers it, and settle() counts that

    def settle(self, channel: int, device: str, message_id: str, items: Sequence[messages.Item]) -> Verdict:
        if self._redeliveries is None:
            self._redeliveries = Redeliveries(self.client, self.ledger, max_attempts=self.conf.max_attempts)
        return self._redeliveries.settle(channel, device, message_id, items)
