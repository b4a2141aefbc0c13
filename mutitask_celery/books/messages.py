"""Celery task messages built once and pushed straight onto a Redis queue.

Celery's publisher costs a round trip and much Python per task; a message
built here is exactly what ``apply_async`` would put on a Redis broker
(protocol 2, JSON body, kombu's Redis envelope), so any Celery worker consumes
it, and a batch of them goes out in one pipeline. Building the bytes before
touching Redis is also what lets a dead-letter reload move a record onto its
queue inside one atomic script.

One message carries a list of ``[task_id, task_data]`` items, so later
versions can pack several short tasks into one message without a new format.

On another broker (RabbitMQ), :mod:`.publisher` sends the same Celery message
(:func:`task_message`) through kombu instead.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery

from mutitask_celery.celery_app import TASK_NAME

Item = tuple[str, str]  # (task id, task data as codec JSON text)
ARGSREPR_LIMIT = 200


_ids: tuple[int, str, itertools.count[int]] = (0, "", itertools.count())


def new_task_id() -> str:
    """A unique id, 32 hex digits like a UUID: a random prefix per process (new after a fork)
    and a counter, so a million ids cost no million reads of the system's random source."""
    global _ids
    pid, prefix, counter = _ids
    if pid != os.getpid():
        pid, prefix, counter = os.getpid(), uuid.uuid4().hex[:20], itertools.count()
        _ids = (pid, prefix, counter)
    return f"{prefix}{next(counter):012x}"


def task_message(app: Celery, channel: int, items: Sequence[Item], suspect: bool = False) -> Any:
    """Celery's protocol-2 message (headers, properties, body) carrying ``items``.

    A single task's message has the task's own id, so Flower and the books agree.
    ``suspect``: the task was running when a device died; the device runs it alone
    (see :mod:`.isolation`), so if it is the one that kills devices, it dies alone.
    """
    if not items:
        raise ValueError("a message needs at least one item")
    message_id = items[0][0] if len(items) == 1 else new_task_id()
    args: list[Any] = [channel, [list(item) for item in items]]
    shown = ", ".join(data for _, data in items)
    argsrepr = f"[{channel}, {shown[:ARGSREPR_LIMIT]}{'...' if len(shown) > ARGSREPR_LIMIT else ''}]"
    kwargs = {"suspect": True} if suspect else {}
    return app.amqp.as_task_v2(
        message_id, TASK_NAME, args=args, kwargs=kwargs, argsrepr=argsrepr, kwargsrepr=repr(kwargs)
    )


def build(app: Celery, queue: str, channel: int, items: Sequence[Item], suspect: bool = False) -> str:
    """The JSON envelope that kombu's Redis transport keeps in the queue list."""
    task = task_message(app, channel, items, suspect)
    body = json.dumps(list(task.body)).encode("utf-8")
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": task.headers,
        "properties": {
            **task.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": new_delivery_tag(),
        },
    }
    return json.dumps(envelope)


def carried(envelope: Any) -> tuple[int, list[Item]] | None:
    """(channel, items) of one of our messages as kombu keeps it (the envelope :func:`build`
    makes, or Celery's own), None for anything else."""
    try:
        if envelope.get("headers", {}).get("task") != TASK_NAME:
            return None
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        return int(args[0]), [(str(item[0]), str(item[1])) for item in args[1]]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


def new_delivery_tag() -> str:
    """A delivery tag of its own for every message we queue, restored ones included: kombu
    acknowledges by tag, so a late ack from a device cut off from Redis must not hit the
    later delivery of the same message to another device."""
    return str(uuid.uuid4())
