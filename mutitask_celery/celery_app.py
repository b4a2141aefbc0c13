"""The Celery application, ``mutitask_celery.app``.

Our defaults sit at Celery's lowest layer (``add_defaults``), so a user's
``celeryconfig.py`` overrides any of them, and ``MUTITASK_BROKER_URL`` in the
environment overrides that. ``celery -A mutitask_celery ...`` finds this app.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from . import settings as _settings

TASK_NAME = "mutitask.run"

# Why each default, for this job (many small tasks pulled from generators,
# handed to named devices, every outcome written to Redis by the device):
CELERY_DEFAULTS: dict[str, Any] = {
    # JSON only: nothing from the wire is ever unpickled. Arrays travel as data
    # (mutitask_celery.codec), not as pickles.
    "task_serializer": "json",
    "accept_content": ["json"],
    "result_serializer": "json",
    # Ack after the task ran: a device that dies mid-task leaves the message
    # unacked, so the broker hands it to another device instead of losing it.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # Do not hoard: a device holds only the task in hand, so the server's
    # ChannelSize bounds what is outstanding and a paused device has nothing
    # prefetched to run after the pause.
    "worker_prefetch_multiplier": 1,
    # Events on, so Flower shows every device and its tasks live.
    "worker_send_task_events": True,
    "task_send_sent_event": False,
    # No result backend: outcomes go to the results list and the dead-letter
    # store, written by the device itself; nothing waits on AsyncResult.
    "task_ignore_result": True,
    "result_backend": None,
    # Keep going when Redis blinks, also at start-up.
    "broker_connection_retry_on_startup": True,
    "task_create_missing_queues": True,
    "worker_hijack_root_logger": False,
    "broker_transport_options": {"visibility_timeout": 3600},
    # Pause, start, stop and status go through Celery's remote control.
    "worker_enable_remote_control": True,
}


def _make_app() -> Celery:
    conf = _settings.current()
    celery_app = Celery("mutitask_celery")
    celery_app.add_defaults({**CELERY_DEFAULTS, "broker_url": conf.redis_url})
    celery_app.config_from_object(_settings.CONFIG_MODULE, silent=True)
    # The resolved broker already weighs celeryconfig.py against the
    # environment; setting it here makes that order Celery's too.
    celery_app.conf.broker_url = conf.broker
    return celery_app


app = _make_app()


def apply_settings(conf: _settings.Settings) -> None:
    """Point the app at the broker of ``conf``, dropping connections to another one."""
    if app.conf.broker_url != conf.broker:
        app.conf.broker_url = conf.broker
        app.close()  # pooled connections to the old broker must not be reused
