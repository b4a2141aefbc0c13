"""Legacy client API: ``from mutitask_celery.client import BaseConfig, FuncItem, Terminal``.

A client script is one device: ``Terminal(...).run()`` registers the channel's
functions and runs a Celery worker named ``device<ID>@<host>`` on the queue
``channel<N>`` until it is stopped.
"""

from __future__ import annotations

from typing import Any

from mutitask_celery import runtime, settings
from mutitask_celery.channels import (
    SaveFunction,
    TaskFunction,
    check_backoff,
    check_channel,
    check_function,
    check_retries,
    check_time_limit,
    parse_task_format,
    register_channel,
)
from mutitask_celery.connection import check_redis, exit_on_unreachable
from mutitask_celery.device.worker import device_name, run_worker
from mutitask_celery.errors import ConfigurationError, ExitCode, FunctionError

__all__ = ["BaseConfig", "FuncItem", "Terminal"]


class BaseConfig:
    """A device's settings, with the original's argument names.

    New, optional: ``task_format`` (``'text'``, the original's, or
    ``'native'``), ``concurrency`` (tasks this device runs at once),
    ``retries`` (tries again after an exception, default 0 as the original;
    a ``None`` result is never retried), ``retry_backoff`` (seconds before
    the first retry, doubling each time) and ``time_limit`` (seconds a task may
    run before it is dead-lettered as ``timed out after N s``; default none).
    """

    def __init__(
        self,
        deviceID: int,
        TaskChannelID: int,
        host: str | None = None,
        port: int | None = None,
        db: int | None = None,
        password: str | None = None,
        *,
        task_format: str = "text",
        concurrency: int = 1,
        retries: int = 0,
        retry_backoff: float = 1.0,
        time_limit: float | None = None,
    ) -> None:
        self.device_id = check_channel(deviceID, "deviceID")
        self.channel = check_channel(TaskChannelID, "TaskChannelID")
        self.task_format = parse_task_format(task_format)
        self.concurrency = check_channel(concurrency, "concurrency")
        self.retries = check_retries(retries)
        self.retry_backoff = check_backoff(retry_backoff)
        self.time_limit = check_time_limit(time_limit)
        base = settings.load_settings().redis_url
        self.redis_url = settings.redis_url_from_parts(host, port, db, password, base=base)

    @property
    def DeviceID(self) -> int:
        return self.device_id

    @property
    def TaskChannelID(self) -> int:
        return self.channel


class FuncItem:
    """The device's task function and, optionally, its save function."""

    def __init__(self, baseConfig: BaseConfig | None = None) -> None:
        self.config = baseConfig
        self.task_function: TaskFunction | None = None
        self.save_function: SaveFunction | None = None

    def load_task_function(self, function: Any) -> None:
        self.task_function = check_function(function, "task")

    def load_save_function(self, function: Any) -> None:
        self.save_function = check_function(function, "save")


class Terminal:
    """``Terminal(baseConfig=..., funcItem=...).run()``: work as a device until stopped."""

    def __init__(self, baseConfig: BaseConfig, funcItem: FuncItem) -> None:
        if not isinstance(baseConfig, BaseConfig):
            raise ConfigurationError(
                f"baseConfig must be a Mutitask.client.BaseConfig, got {type(baseConfig).__name__}"
            )
        if not isinstance(funcItem, FuncItem):
            raise ConfigurationError(f"funcItem must be a Mutitask.client.FuncItem, got {type(funcItem).__name__}")
        self.config = baseConfig
        self.funcs = funcItem

    @property
    def name(self) -> str:
        return device_name(self.config.device_id)

    def run(self) -> int:
        """Block, working tasks of the channel, until SIGINT/SIGTERM or a stop; returns the exit code.

        A device stopped because Redis lost data raises ``SystemExit(4)`` instead, and one
        whose name another live process holds (or took over) ``SystemExit(5)``, and one that
        stopped for a fresh process (too many task functions past their time limit)
        ``SystemExit(6)``, so the legacy script, which ignores the return value, exits with
        that code too.
        """
        if self.funcs.task_function is None:
            raise FunctionError("no task function: call funcItem.load_task_function(f) before run()")
        conf = runtime.reset(settings.configure(redis_url=self.config.redis_url))
        with exit_on_unreachable():
            check_redis(conf.redis_url)
        register_channel(
            self.config.channel,
            self.funcs.task_function,
            self.funcs.save_function,
            task_format=self.config.task_format,
            retries=self.config.retries,
            retry_backoff=self.config.retry_backoff,
            time_limit=self.config.time_limit,
        )
        code = run_worker(self.name, [self.config.channel], concurrency=self.config.concurrency)
        if code in (ExitCode.BOOKS_LOST, ExitCode.IN_USE, ExitCode.LATE_RUNNERS):  # the script ends with that code
            raise SystemExit(code)
        return code
