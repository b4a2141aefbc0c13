"""The Celery application, ``mutitask_celery.app``.

A user's ``celeryconfig.py`` overrides any of our defaults (only the settings
it does not name get ours), and ``MUTITASK_BROKER_URL`` in the environment
overrides that. ``celery -A mutitask_celery ...`` finds this app.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from mutitask_celery import kombu_guard, sentinel
from mutitask_celery import settings as _settings
from mutitask_celery.errors import ConfigurationError

log = logging.getLogger(__name__)

TASK_NAME = "mutitask.run"
# What only a worker loads: the module of the task (with the device's remote-control commands),
# and the device itself, a bootstep of the worker's consumer. Named, not imported: the device
# sits above this module, and importing the package must wire no worker signal or command.
TASK_MODULE = "mutitask_celery.device.tasks"
DEVICE_STEP = "mutitask_celery.device.lifecycle:DeviceStep"
# Celery's consumer less its native delayed delivery (see device.worker.DeviceConsumer).
DEVICE_CONSUMER = "mutitask_celery.device.worker:DeviceConsumer"
VISIBILITY_TIMEOUT = 7 * 24 * 3600  # seconds (see CELERY_DEFAULTS)
LOW_VISIBILITY = 24 * 3600  # below this, a long task gets a second copy: said at start
# kombu's own key names, which the reapers read (keys.KOMBU_UNACKED): changing them, or a
# prefix for every key, would hide every delivered message from recovery.
_KOMBU_KEY_OPTIONS = ("global_keyprefix", "unacked_key", "unacked_index_key")
_REDIS_SCHEMES = ("redis", "unix", "sentinel")  # kombu transports that keep their keys in Redis (rediss, sentinels too)

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
    # Do not hoard: a device starts holding only the task in hand per slot, so a
    # long task never keeps another waiting behind it while devices sit idle.
    # While its messages take under half a second it holds one more per slot
    # (mutitask_celery.device.prefetch), which hides the broker round trip before each
    # task. A paused device runs none of what it holds (tasks.run_items checks
    # the wanted state first), and the server's ChannelSize bounds the total.
    "worker_prefetch_multiplier": 1,
    # Task events off: three per message (received, started, succeeded) cost a device about
    # a fifth of its speed on short tasks. Flower lists the devices all the same (worker
    # events and remote control); `worker_send_task_events = True` in celeryconfig.py, or
    # `celery worker -E`, shows their tasks live in Flower too.
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    # No result backend: outcomes go to the results list and the dead-letter
    # store, written by the device itself; nothing waits on AsyncResult.
    "task_ignore_result": True,
    "result_backend": None,
    # Keep going when Redis blinks, also at start-up.
    "broker_connection_retry_on_startup": True,
    "task_create_missing_queues": True,
    "worker_hijack_root_logger": False,
    # kombu hands an unacknowledged message out again after this long, whatever the device
    # holding it is doing: with kombu's default (an hour) a task running or held longer gets
    # a second copy every hour. Our reapers give a dead device's messages back within
    # seconds, so kombu's restore is only a last net: a week, far above any task's time.
    "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
    # Pause, start, stop and status go through Celery's remote control.
    "worker_enable_remote_control": True,
    # On quorum queues Celery would declare 28 queues and 29 exchanges of its own at every
    # device start, for countdowns and ETAs, which mutitask never sends (device.worker).
    "worker_consumer": DEVICE_CONSUMER,
}


def _not_configured(defaults: dict[str, Any]) -> dict[str, Any]:
    """Our defaults less the settings ``celeryconfig.py`` names. Celery's
    ``add_defaults`` layer sits above ``config_from_object``'s, so a default
    left in would beat the user's own value."""
    module = _settings._config_module()
    named = {name.lower() for name in vars(module)} if module is not None else set()
    return {key: value for key, value in defaults.items() if key not in named}


def _include() -> list[str]:
    """The modules a worker of the app imports: those ``celeryconfig.py`` names in ``include``
    (Celery's own ``include=`` argument would hide them), then :data:`TASK_MODULE`."""
    module = _settings._config_module()
    theirs = getattr(module, "include", None) or getattr(module, "CELERY_INCLUDE", None) or ()
    return [*([theirs] if isinstance(theirs, str) else theirs), TASK_MODULE]


def queue_type(conf: _settings.Settings) -> str:
    """The type of the channel queues Celery declares (``task_create_missing_queue_type``): the
    quorum_queues setting's. A worker that sees quorum queues among its own asks RabbitMQ for a
    prefetch per consumer, never the global QoS that quorum queues refuse
    (``worker_detect_quorum_queues``, see :func:`check_compatible`)."""
    return "quorum" if conf.quorum_queues else "classic"


def _make_app() -> Celery:
    conf = _settings.current()
    celery_app = Celery("mutitask_celery", include=_include())
    celery_app.steps["consumer"].add(DEVICE_STEP)
    celery_app.add_defaults({**_not_configured(CELERY_DEFAULTS), "broker_url": conf.redis_url})
    celery_app.config_from_object(_settings.CONFIG_MODULE, silent=True)
    # The resolved broker already weighs celeryconfig.py against the
    # environment; setting it here makes that order Celery's too.
    celery_app.conf.broker_url = conf.broker
    celery_app.conf.broker_transport_options = _with_sentinel(
        dict(celery_app.conf.broker_transport_options or {}), conf
    )
    celery_app.conf.task_create_missing_queue_type = queue_type(conf)
    return celery_app


def _with_sentinel(options: dict[str, Any], conf: _settings.Settings) -> dict[str, Any]:
    """``options`` with what kombu's ``sentinel://`` transport needs to find the master the
    books follow (its name, the sentinels' password), when the broker is a Sentinel URL;
    what ``celeryconfig.py`` set itself stays."""
    if _settings.is_sentinel_url(conf.broker):
        for name, value in sentinel.broker_options(conf.sentinel_master, conf.sentinel_password).items():
            options.setdefault(name, value)
    return options


app = _make_app()
kombu_guard.install()


_applied_prefix: str | None = None  # the global_keyprefix apply_settings set (not celeryconfig.py's)


def apply_settings(conf: _settings.Settings) -> None:
    """Point the app at the broker of ``conf``, dropping connections to another one."""
    global _applied_prefix
    options = dict(app.conf.broker_transport_options or {})
    before = dict(options)
    prefix = conf.key_prefix if conf.broker.startswith(_REDIS_SCHEMES) else ""
    found = options.get("global_keyprefix")
    ours = found is None or found == _applied_prefix  # else celeryconfig.py's: check_compatible judges it
    if ours and (found or "") != prefix:  # kombu's keys carry the run's prefix too
        if prefix:
            options["global_keyprefix"] = prefix
        else:
            options.pop("global_keyprefix", None)
        _applied_prefix = prefix or None
    options = _with_sentinel(options, conf)
    if options != before:
        app.conf.broker_transport_options = options
        app.conf.broker_url = None  # so that the connections below are dropped
    if app.conf.task_create_missing_queue_type != queue_type(conf):
        app.conf.task_create_missing_queue_type = queue_type(conf)
        for cached in ("queues", "default_queue", "send_task_message"):  # Celery's, built with the old type
            vars(app.amqp).pop(cached, None)
        app.conf.broker_url = None  # and connections that declared queues of the old type are dropped
    if app.conf.broker_url != conf.broker:
        app.conf.broker_url = conf.broker
        app.close()  # pooled connections to the old broker must not be reused
        # ...nor pooled producers: Celery's close() keeps them, and remote control (ping,
        # pause) and send_task would go on publishing to the old broker.
        app.amqp._producer_pool = None


def check_compatible(celery_app: Celery) -> None:
    """Raise :class:`ConfigurationError` naming each Celery setting (from ``celeryconfig.py``)
    that breaks what mutitask relies on; warn about a visibility timeout that is too short.

    Called by every device before it consumes and by the server before it publishes.
    """
    conf = celery_app.conf
    problems = []
    if not conf.task_acks_late:
        problems.append(
            "task_acks_late is off: a device would acknowledge a message before running it, "
            "and a device that dies mid-task would lose its tasks"
        )
    if "json" not in {str(c).split("/")[-1] for c in (conf.accept_content or [])}:
        problems.append(f"accept_content {conf.accept_content!r} leaves out json: devices could not read the tasks")
    options = conf.broker_transport_options or {}
    if str(conf.broker_url or "").startswith(_REDIS_SCHEMES):
        prefix = _settings.current().key_prefix
        for option in _KOMBU_KEY_OPTIONS:
            if options.get(option) and not (option == "global_keyprefix" and options[option] == prefix):
                problems.append(
                    f"broker_transport_options[{option!r}] is set: the reapers read kombu's delivered "
                    "messages under its default key names, and would find none (a key prefix for a whole "
                    "deployment is the key_prefix setting, MUTITASK_KEY_PREFIX)"
                )
    problems += _queue_problems(conf)
    if problems:
        raise ConfigurationError(
            "this Celery configuration breaks mutitask's promises (fix celeryconfig.py): " + "; ".join(problems)
        )
    timeout = options.get("visibility_timeout")
    if timeout is not None and float(timeout) < LOW_VISIBILITY:
        log.warning(
            "broker_transport_options['visibility_timeout'] is %s s: a task running or held longer gets "
            "a second copy from kombu (mutitask's default is %d s)",
            timeout,
            VISIBILITY_TIMEOUT,
        )


def _queue_problems(conf: Any) -> list[str]:
    """What in ``celeryconfig.py`` contradicts the quorum_queues setting."""
    problems = []
    wanted = str(conf.task_create_missing_queue_type)  # queue_type() of the settings (apply_settings)
    theirs = getattr(_settings._config_module(), "task_create_missing_queue_type", None)
    if theirs is not None and str(theirs) != wanted:
        problems.append(
            f"task_create_missing_queue_type is {theirs!r} but the channel queues are {wanted}: their type is "
            "the mutitask_quorum_queues setting (MUTITASK_QUORUM_QUEUES); remove it from celeryconfig.py"
        )
    if wanted == "quorum" and not conf.worker_detect_quorum_queues:
        problems.append(
            "worker_detect_quorum_queues is off: on quorum queues a device would ask RabbitMQ for a global "
            "prefetch (QoS), which quorum queues refuse (NOT_IMPLEMENTED)"
        )
    return problems
