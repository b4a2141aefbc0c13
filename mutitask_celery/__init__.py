"""mutitask_celery: MutiTask's generator-fed task channels, on Celery.

``celery -A mutitask_celery worker -Q channel1`` finds :data:`app` here; a worker of the
app loads the task and the device (``celery_app.TASK_MODULE``), so importing the package
wires no worker signal (a script, the CLI and the web page import it too).
The legacy API lives in :mod:`mutitask_celery.server` and
:mod:`mutitask_celery.client` (and the ``Mutitask`` import shim).
"""

from __future__ import annotations

from mutitask_celery.api import (
    cancel,
    cancelled,
    clear_results,
    delete_failed,
    devices,
    failed,
    failed_count,
    failed_dropped,
    find_failed,
    get_failed,
    pause,
    rate_limits,
    reload_failed,
    results,
    results_count,
    set_rate_limit,
    start,
    stop,
)
from mutitask_celery.books.cancels import Cancelled, NothingToCancel
from mutitask_celery.books.dead_filter import DeadFilter
from mutitask_celery.books.dead_letters import FoundRecords
from mutitask_celery.books.records import FailedTask
from mutitask_celery.celery_app import app
from mutitask_celery.channels import TaskFormat, register_channel
from mutitask_celery.control import Device, DeviceState
from mutitask_celery.errors import (
    BooksLost,
    BrokerUnavailable,
    ConfigurationError,
    EncodingError,
    FunctionError,
    InvalidTasksError,
    LeaseHeld,
    LeaseLost,
    MutitaskError,
    RecordNotFound,
    RedisOutOfMemory,
    RunCancelled,
)
from mutitask_celery.serving.producer import ChannelSummary, RunSummary

__version__ = "0.2.0"  # the one version source: pyproject.toml reads it from here

__all__ = [
    "app",
    "register_channel",
    "TaskFormat",
    "results",
    "results_count",
    "clear_results",
    "failed",
    "failed_count",
    "failed_dropped",
    "get_failed",
    "find_failed",
    "reload_failed",
    "delete_failed",
    "FailedTask",
    "DeadFilter",
    "FoundRecords",
    "devices",
    "pause",
    "start",
    "stop",
    "cancel",
    "cancelled",
    "Cancelled",
    "NothingToCancel",
    "RunCancelled",
    "set_rate_limit",
    "rate_limits",
    "Device",
    "DeviceState",
    "RunSummary",
    "ChannelSummary",
    "MutitaskError",
    "ConfigurationError",
    "InvalidTasksError",
    "FunctionError",
    "EncodingError",
    "BrokerUnavailable",
    "BooksLost",
    "LeaseHeld",
    "LeaseLost",
    "RecordNotFound",
    "RedisOutOfMemory",
]
