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
from typing import Any

import redis
from celery.signals import worker_ready, worker_shutdown

from . import runtime
from .control import channels_of

log = logging.getLogger(__name__)


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


@worker_shutdown.connect
def _on_shutdown(sender: Any = None, **_: Any) -> None:
    name = getattr(sender, "hostname", None)
    if name:
        try:
            runtime.devices().heard(name)
        except redis.RedisError:
            pass
