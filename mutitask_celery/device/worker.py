"""Run this process as a device: a Celery worker named ``device<ID>@<host>``.

The worker uses the *threads* pool: the task runs in a thread while the
worker's own loop keeps answering remote control (status, pause) and sending
heartbeats to Flower, even during a long task. SIGINT and SIGTERM are Celery's
warm shutdown: the task in hand finishes, then the process exits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from celery.utils.nodenames import host_format
from celery.worker.consumer import Consumer

from mutitask_celery import keys
from mutitask_celery.celery_app import app

log = logging.getLogger(__name__)
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")
DELAYED_DELIVERY = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class DeviceConsumer(Consumer):  # type: ignore[misc]  # celery's, untyped
    """Celery's consumer (``worker_consumer``) without its native delayed delivery.

    On quorum queues Celery sets up delays through the broker for tasks sent with a countdown
    or an ETA: at every start, 28 quorum queues and 29 exchanges, and a warning for each channel
    queue (a direct exchange, which it cannot serve). mutitask sends no such task (a retry
    waits in the device, see ``retry_backoff``), so a device sets up none of it.
    """

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [step for step in Consumer.Blueprint.default_steps if step != DELAYED_DELIVERY]


def device_name(device_id: int) -> str:
    """``device<ID>@<this host>``, the name status and control use."""
    return str(host_format(f"device{device_id}@%h"))


def run_worker(hostname: str, channels: Sequence[int], concurrency: int = 1, loglevel: str = "INFO") -> int:
    """Consume the channels' queues until stopped; returns the worker's exit code."""
    worker = app.Worker(
        hostname=host_format(hostname),
        queues=[keys.queue(c) for c in channels],
        pool="threads",
        concurrency=concurrency,
        loglevel=loglevel,
        redirect_stdouts=False,  # a user's print() reaches the terminal as written
        without_mingle=True,  # no start-up round with other workers: a device works at once
        without_gossip=True,
    )
    # Celery logs two INFO lines per message ("received", "succeeded"): thousands a second
    # on a busy device, which cost it a tenth of its speed and bury the user's own output.
    # Failures are still logged (and dead-lettered); Flower and `mutitask status` show progress.
    for name in PER_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    worker.start()
    return int(worker.exitcode or 0)
