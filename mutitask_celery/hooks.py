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
from typing import Any

import redis
from celery.signals import task_received, worker_init, worker_ready, worker_shutdown

from . import keys, runtime
from .control import channels_of
from .recovery import HEARTBEAT

log = logging.getLogger(__name__)
_stop_heartbeat = threading.Event()


@worker_init.connect
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


@task_received.connect
def _on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """Note the message in this device's hands, so a reaper can give it back if the device dies."""
    message = getattr(request, "message", None)
    tag = getattr(message, "delivery_tag", None)
    if request is None or tag is None or runtime.reaper() is None:
        return
    try:
        runtime.ledger().client.hset(keys.inhand(request.hostname), request.id, tag)
    except redis.RedisError as exc:
        log.warning("could not note message %s in hand: %s", request.id, exc)


def _heartbeat(name: str) -> None:
    """Say this device lives, and recover devices that went silent."""
    reaper = runtime.reaper()
    while not _stop_heartbeat.wait(HEARTBEAT):
        try:
            runtime.devices().heard(name)
            if reaper is not None:
                reaper.reap()
        except redis.RedisError as exc:
            log.warning("heartbeat of %s failed: %s", name, exc)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    consumer = sender
    name = getattr(consumer, "hostname", None)
    if consumer is None or name is None:
        return
    queues = [q.name for q in consumer.task_consumer.queues]
    try:
        devices = runtime.devices()
        devices.register(name, channels_of(queues), socket.gethostname(), os.getpid())
        if devices.is_paused(name):
            for queue in queues:
                consumer.cancel_task_queue(queue)
            log.warning("%s starts paused (the operator paused it); `start` resumes it", name)
    except redis.RedisError as exc:
        log.warning("%s could not enter the device roster: %s", name, exc)
    _stop_heartbeat.clear()
    threading.Thread(target=_heartbeat, args=(name,), name="mutitask-heartbeat", daemon=True).start()


@worker_shutdown.connect
def _on_shutdown(sender: Any = None, **_: Any) -> None:
    _stop_heartbeat.set()
    name = getattr(sender, "hostname", None)
    if name:
        try:
            runtime.devices().heard(name)
        except redis.RedisError:
            pass
