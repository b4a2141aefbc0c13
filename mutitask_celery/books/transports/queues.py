"""The channel queues on RabbitMQ: declared with the type the settings say, or a clear error.

Celery declares a channel's queue (``channel<N>``) when a device consumes it and when the
publisher sends to it, with the arguments ``task_create_missing_queue_type`` gives it: a
classic queue, or a quorum queue (``x-queue-type: quorum``) under the quorum_queues setting
(:func:`.celery_app.queue_type`). RabbitMQ keeps a queue's type for the queue's life and
refuses a declaration of the other type (``PRECONDITION_FAILED - inequivalent arg
'x-queue-type'``). So the server (:meth:`.KombuBroker.check`) and every device
(``DeviceLife.begin``) declare their queues before anything else, and such a refusal ends
them at once with a :class:`ConfigurationError` naming the queue and what to do, instead of
publishing retries or a worker that crashes and restarts in a loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from celery import Celery

from mutitask_celery.errors import ConfigurationError
from mutitask_celery.settings import is_amqp

log = logging.getLogger(__name__)

PRECONDITION_FAILED = 406  # AMQP's reply code for a declaration that contradicts the queue's


def declare(app: Celery, channel: Any, names: Iterable[str]) -> None:
    """Declare the queues ``names`` on ``channel`` (a kombu channel) as Celery declares them;
    raise :class:`ConfigurationError` (see :func:`type_refused`) for one of the other type."""
    for name in names:
        try:
            app.amqp.queues[name].bind(channel).declare()
        except Exception as exc:  # kombu raises its transport's own errors
            refused = type_refused(exc, name, app)
            if refused is None:
                raise
            raise refused from None


def check(app: Celery, names: Iterable[str]) -> None:
    """On RabbitMQ, declare ``names`` now, on a connection of their own: a queue of the other
    type raises :class:`ConfigurationError`. Any other trouble (RabbitMQ not answering yet) is
    left to Celery, which connects and declares them again with its own retries."""
    if not is_amqp(str(app.conf.broker_url)):
        return
    connection = app.connection_for_write()
    try:
        connection.connect()  # one try: a broker that is down is Celery's to wait for
        declare(app, connection.channel(), names)
    except ConfigurationError:
        raise
    except Exception as exc:  # unreachable, refused login, no permission: Celery says so as it starts
        log.debug("could not check the queues' types before consuming: %s", exc)
    finally:
        connection.release()


def type_refused(exc: BaseException, queue: str, app: Celery) -> ConfigurationError | None:
    """The error to raise when ``exc`` is RabbitMQ refusing ``queue`` for its type (else None):
    it names the queue, its vhost, the type it has, and the two ways out."""
    if getattr(exc, "reply_code", None) != PRECONDITION_FAILED or "'x-queue-type'" not in str(exc):
        return None
    wanted = str(app.conf.task_create_missing_queue_type)
    other = "classic" if wanted == "quorum" else "quorum"
    vhost = unquote(urlsplit(str(app.conf.broker_url)).path[1:]) or "/"
    keep = "MUTITASK_QUORUM_QUEUES=1" if other == "quorum" else "MUTITASK_QUORUM_QUEUES off"
    return ConfigurationError(
        f"RabbitMQ refuses queue {queue!r} as a {wanted} queue: a {other} queue of that name exists in vhost "
        f"{vhost!r} ({exc}). A queue keeps its type. To change it, stop the devices of the channel, let the "
        f"runs that use it end (`mutitask status`: nothing outstanding), delete it (`rabbitmqctl delete_queue "
        f"-p {vhost} --if-empty {queue}`) and start again; or keep it {other}: {keep} on every host."
    )
