"""Task messages through a broker that is not the books' Redis (e.g. RabbitMQ).

On the Redis broker a message is pushed in the same transaction that enters its
tasks in the books (:mod:`.ledger`). Another broker cannot share that
transaction, so the books are written first, each task also in a journal
(``mutitask:unsent:<ch>``); then the messages go out here; then the journal
entries are removed. A publisher that dies in between leaves its tasks in the
journal, and the server sends them again (:meth:`.Redeliveries.resend_unsent`). A
task sent twice is harmless: the books take its first finish only.

One connection and one channel serve every call of the process (the server's
feeding, a reload, a device splitting a batch), under a lock. On RabbitMQ the
channel is in confirm mode and a call waits once for the broker's confirmation
of all its messages: one round trip per call rather than per message, and a
call that returns has handed every message to the broker (to disk, for our
durable queues). A lost connection is opened again and the whole call sent
again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery
from kombu.connection import Connection
from kombu.messaging import Producer

from mutitask_celery.books import messages
from mutitask_celery.books.transports import queues
from mutitask_celery.celery_app import TASK_NAME
from mutitask_celery.errors import BrokerUnavailable
from mutitask_celery.settings import mask_url

log = logging.getLogger(__name__)

ATTEMPTS = 4  # tries of one call before BrokerUnavailable (the server then waits for the broker)
CONFIRM_TIMEOUT = 30.0  # seconds the broker may take to confirm one call's messages


class Unconfirmed(Exception):
    """The broker refused a message (nack) or did not confirm it in time."""


class BrokerPublisher:
    """Publishes groups of tasks, one Celery message per group (see module docstring)."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._confirms = False  # the channel is in RabbitMQ's confirm mode
        self._sent = 0  # delivery tag of the last message sent on this channel
        self._unconfirmed: set[int] = set()
        self._nacked = False

    def send(self, queue: str, channel: int, groups: Sequence[Sequence[messages.Item]], suspect: bool = False) -> None:
        """Publish one message per group on ``queue``; returns once the broker has them all.

        Raises :class:`BrokerUnavailable` when the broker did not take them after
        :data:`ATTEMPTS` tries with a fresh connection each. ``suspect``: see
        :func:`messages.task_message`.
        """
        built = [messages.task_message(self.app, channel, group, suspect) for group in groups if group]
        if not built:
            return
        with self._lock:
            delay = 0.1
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    self._publish(queue, built)
                    return
                except Exception as exc:  # kombu raises its transport's own errors: sorted here
                    recoverable = self._recoverable(exc)
                    self._drop()
                    refused = queues.type_refused(exc, queue, self.app)
                    if refused is not None:  # a queue of the other type: no try will do
                        raise refused from None
                    if not recoverable:
                        raise
                    if attempt == ATTEMPTS:
                        raise BrokerUnavailable(
                            f"the broker at {mask_url(self.app.conf.broker_url)} did not take "
                            f"{len(built)} message(s) for {queue}: {exc}"
                        ) from exc
                    log.warning(
                        "publishing to %s failed (%s): trying again (%d of %d)", queue, exc, attempt + 1, ATTEMPTS
                    )
                    time.sleep(delay)  # the broker is restarting or the network blinked
                    delay *= 2

    def check(self) -> None:
        """Connect now: raise :class:`BrokerUnavailable` naming the broker (password masked) when it
        cannot be reached, so a server fails at its start, not after its outage patience."""
        with self._lock:
            try:
                self._open()
            except Exception as exc:  # refused, unknown host, wrong password or vhost: all unusable
                self._drop()
                raise BrokerUnavailable(
                    f"cannot reach the broker at {mask_url(self.app.conf.broker_url)}: {exc}"
                ) from None

    def declare(self, names: Sequence[str]) -> None:
        """Declare the queues ``names`` now, as a publish would: :class:`ConfigurationError`
        for one that exists with the other type (see :mod:`.queues`)."""
        with self._lock:
            producer = self._open()
            try:
                queues.declare(self.app, producer.channel, names)
            except Exception:
                self._drop()  # RabbitMQ closed the channel
                raise

    def close(self) -> None:
        """Drop the connection (the settings changed, or the process is done with it)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.collect()  # type: ignore[no-untyped-call]  # no goodbye to a broker that may be gone
        self._connection = self._producer = None

    def _recoverable(self, exc: BaseException) -> bool:
        connection = self._connection or self.app.connection_for_write()
        errors: tuple[type[BaseException], ...] = (
            OSError,
            Unconfirmed,
            *connection.connection_errors,
            *connection.channel_errors,
        )
        return isinstance(exc, errors)

    def _open(self) -> Producer:
        if self._producer is None:
            connection = self.app.connection_for_write()
            channel: Any = connection.channel()
            self._confirms = hasattr(channel, "confirm_select") and hasattr(channel, "events")
            if self._confirms:  # py-amqp (RabbitMQ): the broker acknowledges each message it took
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
            self._sent, self._nacked = 0, False
            self._unconfirmed.clear()
            self._connection, self._producer = connection, self.app.amqp.Producer(channel)
        return self._producer

    def _publish(self, queue: str, built: Sequence[Any]) -> None:
        producer = self._open()
        for message in built:
            # retry=False: a failure sends the whole call again, on a new connection.
            self.app.amqp.send_task_message(producer, TASK_NAME, message, queue=queue, retry=False)
            if self._confirms:
                self._sent += 1
                self._unconfirmed.add(self._sent)
        self._wait_for_confirms()

    def _wait_for_confirms(self) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while self._unconfirmed and not self._nacked:
            left = deadline - time.monotonic()
            if left <= 0 or self._connection is None:
                raise Unconfirmed(f"{len(self._unconfirmed)} message(s) not confirmed within {CONFIRM_TIMEOUT:.0f}s")
            self._connection.drain_events(timeout=left)  # type: ignore[no-untyped-call]  # acks run _on_ack
        if self._nacked:
            raise Unconfirmed("the broker refused a message")

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._unconfirmed = {t for t in self._unconfirmed if t > tag}
        else:
            self._unconfirmed.discard(tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._on_ack(tag, multiple)
        self._nacked = True
