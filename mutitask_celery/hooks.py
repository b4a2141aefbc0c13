"""What every device does at start and stop, however it was started.

Connected at import of the package, so a legacy client script and
``celery -A mutitask_celery worker`` behave alike: the device enters the
roster with its channels, and if the operator wants it paused (it was paused
before a restart, or the run started paused) it stops consuming before it
takes a task.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import partial
from typing import Any

import redis
from celery.signals import task_received, worker_init, worker_ready, worker_shutdown
from celery.worker import state as worker_state
from celery.worker.control import control_command

from . import prefetch, runtime, wanted
from .control import channels_of
from .errors import BooksLost
from .integrity import EXIT_BOOKS_LOST, Watermarks
from .recovery import HEARTBEAT

log = logging.getLogger(__name__)
_stop_heartbeat = threading.Event()
_queues: list[str] = []  # the queues this device was started with, for `start` after a pause
_consumer: list[Any] = []  # this worker's consumer, once ready
books = Watermarks()  # the tasks this device has finished, as the books said (see integrity)


def done_key(name: str) -> str:
    """The name of a device's finished-task count among its watermarks."""
    return f"tasks finished by {name}"


def books_lost(exc: BooksLost) -> None:
    """Redis lost data: say so once, and stop this device (warm: tasks in hand finish) with
    exit code 4, as the server does."""
    if worker_state.should_stop is None:
        log.critical("mutitask: %s This device stops.", exc)
        worker_state.should_stop = EXIT_BOOKS_LOST


@worker_init.connect  # type: ignore[untyped-decorator]  # celery's signals are untyped
def _on_init(sender: Any = None, **_: Any) -> None:
    """Before consuming: put back what this device's previous life held when it died."""
    name = getattr(sender, "hostname", None)
    reaper = runtime.reaper()
    if not name or reaper is None:
        return
    try:
        restored = reaper.recover(name)
        if restored:
            log.warning("%s restarted: gave back %d message(s) its previous run held", name, restored)
    except redis.RedisError as exc:
        log.warning("%s could not check what its previous run held: %s", name, exc)


@task_received.connect  # type: ignore[untyped-decorator]  # celery's signals are untyped
def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """Note the message in this device's hands, so a reaper can give it back if the device dies."""
    message = getattr(request, "message", None)
    tag = getattr(message, "delivery_tag", None)
    if request is None or tag is None or runtime.reaper() is None:
        return
    try:
        # Taking a message proves the device lives: say so in the same step, or a device
        # back from a network cut (its last heartbeat old) would have the message it just
        # took restored under it by a reaper.
        runtime.devices().heard(request.hostname, in_hand=(request.id, str(tag)))
    except redis.RedisError as exc:
        log.warning("could not note message %s in hand: %s", request.id, exc)


def _heartbeat(name: str) -> None:
    """Say this device lives, and recover devices that went silent."""
    reaper = runtime.reaper()
    while not _stop_heartbeat.wait(HEARTBEAT):
        try:
            devices = runtime.devices()
            marks = books.mark()
            done = devices.heard(name)
            books.check({done_key(name): done}, marks, devices.client)
            was = wanted.local.paused
            wanted.local.refresh(partial(devices.is_paused, name))  # a change made while unreachable
            if wanted.local.paused is not None and wanted.local.paused != was and _consumer:
                log.warning("%s is wanted %s (changed while it was out of reach)", name,
                            "paused" if wanted.local.paused else "running")
                _consume(_consumer[0], not wanted.local.paused)
            if reaper is not None:
                reaper.reap()
        except redis.RedisError as exc:
            log.warning("heartbeat of %s failed: %s", name, exc)
        except BooksLost as exc:
            books_lost(exc)
            return


@control_command(args=[("wanted_state", str)], signature="<running|paused>")  # type: ignore[untyped-decorator]
def mutitask_wanted(state: Any, wanted_state: str = "running", **_: Any) -> dict[str, str]:
    """Pause or start this device: no task starts once this has replied (see :mod:`wanted`)."""
    paused = wanted_state == "paused"
    wanted.local.told(paused)
    _consume(state.consumer, not paused)
    return {"ok": "paused" if paused else "running"}


def _consume(consumer: Any, resume: bool) -> None:
    """Stop or resume consuming this device's queues, in the worker's own loop.

    A paused device that kept consuming would fetch and hand back messages in a loop.
    """
    for queue in _queues:
        if resume:
            consumer.call_soon(consumer.add_task_queue, queue)
        else:
            consumer.call_soon(consumer.cancel_task_queue, queue)


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery's signals are untyped
def _on_ready(sender: Any = None, **_: Any) -> None:
    consumer = sender
    name = getattr(consumer, "hostname", None)
    if consumer is None or name is None:
        return
    queues = [q.name for q in consumer.task_consumer.queues]
    _queues[:] = queues
    _consumer[:] = [consumer]
    prefetch.install(getattr(consumer, "qos", None), getattr(getattr(consumer, "pool", None), "num_processes", 1))
    try:
        devices = runtime.devices()
        devices.register(name, channels_of(queues), socket.gethostname(), os.getpid())
        paused = devices.is_paused(name)
        wanted.local.install(name, paused)
        if paused:
            for queue in queues:
                consumer.cancel_task_queue(queue)
            log.warning("%s starts paused (the operator paused it); `start` resumes it", name)
    except redis.RedisError as exc:
        log.warning("%s could not enter the device roster: %s", name, exc)
    _stop_heartbeat.clear()
    threading.Thread(target=_heartbeat, args=(name,), name="mutitask-heartbeat", daemon=True).start()


@worker_shutdown.connect  # type: ignore[untyped-decorator]  # celery's signals are untyped
def _on_shutdown(sender: Any = None, **_: Any) -> None:
    _stop_heartbeat.set()
    wanted.local.forget()
    name = getattr(sender, "hostname", None)
    if name:
        try:
            runtime.devices().heard(name)
        except redis.RedisError:
            pass
