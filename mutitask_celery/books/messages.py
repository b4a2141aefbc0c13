"""Celery task messages built once and pushed straight onto a Redis queue.

Celery's publisher costs a round trip and much Python per task; a message
built here is a Celery protocol-2 message in kombu's Redis envelope, so any Celery
worker of this app consumes it, and a batch of them goes out in one pipeline. Building
the bytes before touching Redis is also what lets a dead-letter reload move a record
onto its queue inside one atomic script. Unlike ``apply_async``'s, its body is a JSON
value, not base64 of JSON text, and it carries a big task's data by reference (see
:func:`build`): data-heavy tasks then cross each hop once.

One message carries a list of ``[task_id, task_data]`` items (``[task_id, value,
"value"]`` and ``[task_id, null, "ref"]`` as built here), several short tasks a message.

On another broker (RabbitMQ), :mod:`.publisher` sends the same Celery message
(:func:`task_message`) through kombu instead.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from celery import Celery

from mutitask_celery import codec, tracing
from mutitask_celery.celery_app import TASK_NAME

Data = str | bytes  # a task's data as the books keep it: the codec's JSON text, or a frame
Item = tuple[str, Data]  # (task id, task data)
SPLICED = "value"  # an item's third element in a message: its data is spliced in as a JSON value
REF = "ref"  # ... or: its data is not in the message, but in the books (pending:<ch>)
REF_BYTES = 64 * 1024  # data this long (as text) travels by reference
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


def task_message(
    app: Celery, channel: int, items: Sequence[Item], suspect: bool = False, context: Mapping[str, str] | None = None
) -> Any:
    """Celery's protocol-2 message (headers, properties, body) carrying ``items``.

    A single task's message has the task's own id, so Flower and the books agree.
    ``suspect``: the task was running when a device died; the device runs it alone
    (see :mod:`.isolation`), so if it is the one that kills devices, it dies alone.
    Its headers carry the current trace context when something is traced here (once a
    message: see :mod:`.tracing`), or ``context``, the headers of one it continues.
    """
    if not items:
        raise ValueError("a message needs at least one item")
    message_id = items[0][0] if len(items) == 1 else new_task_id()
    # Carried in the message as text: kombu's JSON body holds no frame.
    args: list[Any] = [channel, [[task_id, codec.as_text(data)] for task_id, data in items]]
    argsrepr = _argsrepr(channel, items)
    kwargs = {"suspect": True} if suspect else {}
    message = app.amqp.as_task_v2(
        message_id, TASK_NAME, args=args, kwargs=kwargs, argsrepr=argsrepr, kwargsrepr=repr(kwargs)
    )
    message.headers.update(tracing.message_headers() if context is None else context)
    return message


def build(
    app: Celery,
    queue: str,
    channel: int,
    items: Sequence[Item],
    suspect: bool = False,
    context: Mapping[str, str] | None = None,
) -> str:
    """The JSON envelope that kombu's Redis transport keeps in the queue list.

    Its body is the Celery message's ``[args, kwargs, embed]`` as a JSON value. A small
    task's data (the codec's JSON) is spliced in as it is (:data:`SPLICED`), not as a string:
    it is never escaped into a string again, nor base64-encoded again as kombu's own body
    would be, and the device parses it once, with the envelope. A big task's data (from
    :data:`REF_BYTES`) stays out of the message (:data:`REF`): the books hold it already
    (``pending:<ch>``), and the device reads it from there, once; the queue, kombu's copy of
    the message it holds and each parse of the envelope then stay small. kombu hands such a
    body to Celery as it is (content type ``application/data``, encoding ``binary``: no
    decoding step, nothing to deserialize; see :func:`carried` for the reader). ``context``:
    see :func:`task_message`.
    """
    pieces = template(app, queue, channel, items, 1, suspect, context)
    out = [str(pieces[1])]
    for at in range(2, len(pieces), 2):
        out += [codec.as_text(items[int(pieces[at]) - 1][1]), str(pieces[at + 1])]
    return "".join(out)


def template(
    app: Celery,
    queue: str,
    channel: int,
    items: Sequence[Item],
    first: int = 1,
    suspect: bool = False,
    context: Mapping[str, str] | None = None,
) -> list[str | int]:
    """:func:`build`'s envelope around the data it carries, as a publish step hands it to
    Redis (``lua/publish.lua``), so that the data travels there once, for the books, and Redis
    puts the message together: ``[m, piece, i1, piece, i2, piece, ...]``, where the data of
    the step's ``i``-th task (``first`` being the number of ``items[0]``) goes between pieces."""
    task = task_message(app, channel, [(task_id, "") for task_id, _ in items], suspect, context)
    task.headers["argsrepr"] = _argsrepr(channel, items)  # the data's start, as Flower shows it
    _args, kwargs, embed = task.body
    envelope = {
        "content-encoding": "binary",
        "content-type": "application/data",
        "headers": task.headers,
        "properties": {
            **task.properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "delivery_tag": new_delivery_tag(),
        },
    }
    piece = f'{json.dumps(envelope)[:-1]},"body":[[{channel},['
    spliced: list[str | int] = []
    for n, (task_id, data) in enumerate(items):
        piece += f"{',' if n else ''}[{json.dumps(task_id)},"
        if by_reference(data):
            piece += f'null,"{REF}"]'
        else:
            spliced += [piece, first + n]
            piece = f',"{SPLICED}"]'
    spliced.append(f"{piece}]],{json.dumps(kwargs)},{json.dumps(embed)}]}}")
    return [len(spliced) // 2, *spliced]


def by_reference(data: Data) -> bool:
    """Whether a task's data stays out of its message (see :func:`build`); ``''``: the data
    was not in the message it came from either. A frame always does (no JSON carries it)."""
    return not data or len(data) >= REF_BYTES or isinstance(data, bytes)


def _argsrepr(channel: int, items: Sequence[Item]) -> str:
    """``[1, "task data", ...]``, cut at :data:`ARGSREPR_LIMIT` (never a copy of all the data)."""
    shown = ", ".join(codec.preview(data, ARGSREPR_LIMIT) for _, data in items[:ARGSREPR_LIMIT])
    return f"[{channel}, {shown[:ARGSREPR_LIMIT]}{'...' if len(shown) > ARGSREPR_LIMIT else ''}]"


def body_of(envelope: Any) -> list[Any]:
    """The Celery body ``[args, kwargs, embed]`` of a message as kombu keeps it: a JSON value
    (:func:`build`), or base64 of JSON text (kombu's own, Celery's ``apply_async``, and what
    versions up to 0.2 built)."""
    body = envelope["body"]
    if isinstance(body, list):
        return body
    return cast("list[Any]", json.loads(base64.b64decode(body)))


def trace_context(envelope: Any) -> dict[str, str]:
    """The trace context a message as kombu keeps it carries in its headers (see :mod:`.tracing`),
    for a message that takes its tasks on: empty when it carries none."""
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    return tracing.context_in(headers) if isinstance(headers, dict) else {}


def carried(envelope: Any) -> tuple[int, list[Item]] | None:
    """(channel, items) of one of our messages as kombu keeps it (the envelope :func:`build`
    makes, or Celery's own), None for anything else."""
    try:
        if envelope.get("headers", {}).get("task") != TASK_NAME:
            return None
        args = body_of(envelope)[0]
        return int(args[0]), [(str(item[0]), item_text(item)) for item in args[1]]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Spliced:
    """A task's data as a message built by :func:`build` carries it: the codec's JSON value,
    already parsed with the message (decode it with :func:`.codec.unpack`)."""

    value: Any

    def text(self) -> str:
        """The codec's JSON text again (what the books keep for the task)."""
        return json.dumps(self.value, ensure_ascii=False, separators=(",", ":"))


class InBooks:
    """An item's data that its message left in the books (:data:`REF`): the device reads it
    from ``pending:<ch>`` (gone from there: the task has finished elsewhere)."""


IN_BOOKS = InBooks()


def item_data(item: Sequence[Any]) -> str | Spliced | InBooks:
    """One item of a message's arguments, ``[task id, data]``: its data as JSON text (a message
    published through kombu, or by an earlier version), :class:`Spliced` or :data:`IN_BOOKS`."""
    if len(item) > 2 and item[2] == SPLICED:
        return Spliced(item[1])
    if len(item) > 2 and item[2] == REF:
        return IN_BOOKS
    return str(item[1])


def item_text(item: Sequence[Any]) -> str:
    """One item's data as the codec's JSON text, whichever way the message carried it; ``''``
    for data the message left in the books (:func:`build` leaves it there again)."""
    data = item_data(item)
    return data if isinstance(data, str) else "" if isinstance(data, InBooks) else data.text()


def new_delivery_tag() -> str:
    """A delivery tag of its own for every message we queue, restored ones included: kombu
    acknowledges by tag, so a late ack from a device cut off from Redis must not hit the
    later delivery of the same message to another device."""
    return str(uuid.uuid4())
