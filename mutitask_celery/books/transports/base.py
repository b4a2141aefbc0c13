"""What a transport does: take task messages to the devices' queues. It knows no ledger.

The ledger (:mod:`.ledger`) writes the books and asks its transport for the messages
that go with each books step; recovery (:mod:`.recovery`) reads and repairs beside them.
So a new broker kind is a transport here and, if it delivers differently, a recovery
there, chosen together in :mod:`mutitask_celery.runtime`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import redis
from celery import Celery

from mutitask_celery.books import messages
from mutitask_celery.keys import DEFAULT, Keys

Groups = Sequence[Sequence[messages.Item]]  # the tasks of each message, in order


class Transport(ABC):
    """How the messages of a books step reach the queues."""

    #: The word ``publish.lua`` and ``feed.lua`` take: the step pushes the message onto the
    #: queue itself (``queue``) or enters its tasks in the journal (``journal``).
    lua_mode: ClassVar[str]
    #: Devices note the messages they hold: the reaper and the books' held counts read the notes.
    notes_holds: ClassVar[bool]

    def __init__(self, app: Celery, client: redis.Redis, keys: Keys = DEFAULT) -> None:
        self.app, self.client, self.keys = app, client, keys

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
    def check(self, channels: Sequence[int] = ()) -> None:
        """Fail within seconds, with a clear error, when the broker cannot be reached or the
        queues of ``channels`` cannot be declared as the settings say."""

    @abstractmethod
    def close(self) -> None:
        """Drop this process's connection to the broker, if it holds one."""
