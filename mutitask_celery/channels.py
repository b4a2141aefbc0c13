"""Which function handles which channel in this process.

A device (legacy ``client.Terminal`` or ``celery -A mutitask_celery worker``
with a module that calls :func:`register_channel`) must know its channel's
functions before the worker starts consuming; a message for a channel with no
function is dead-lettered with a reason that says so, never dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mutitask_celery.errors import ConfigurationError, FunctionError

TaskFunction = Callable[[Any], Any]
SaveFunction = Callable[[Any], Any]


class TaskFormat(str, Enum):
    """What a task function receives."""

    TEXT = "text"  # the original's way: a str as itself, anything else as a Python literal
    NATIVE = "native"  # the decoded value (numpy arrays as arrays)


@dataclass(frozen=True)
class ChannelHandler:
    channel: int
    task_function: TaskFunction
    save_function: SaveFunction | None  # None: the default (append to ResultChannel<N>)
    task_format: TaskFormat
    retries: int = 0  # extra tries after an exception (a None result is never retried)
    retry_backoff: float = 1.0  # seconds before the first retry, doubling each time
    time_limit: float | None = None  # seconds a task function may run (see device.time_limits)


_handlers: dict[int, ChannelHandler] = {}


def check_channel(channel: object, what: str = "channel") -> int:
    """The channel number, or a clear error when it is not a positive integer."""
    if isinstance(channel, bool) or not isinstance(channel, int) or channel <= 0:
        raise ConfigurationError(f"{what} must be a positive integer, got {channel!r}")
    return channel


def check_function(fn: object, role: str) -> Callable[[Any], Any]:
    """``fn`` if it is a callable that accepts exactly one positional argument."""
    if not callable(fn):
        raise FunctionError(f"the {role} function must be callable, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return fn
    try:
        signature.bind(object())
    except TypeError:
        raise FunctionError(
            f"the {role} function {getattr(fn, '__name__', fn)!r} must accept exactly one argument; "
            f"its signature is {signature}"
        ) from None
    return fn


def check_time_limit(value: object) -> float | None:
    """A time limit in seconds: None (no limit) or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigurationError(f"time_limit must be a positive number of seconds, got {value!r}")
    return float(value)


def check_retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"retries must be a non-negative integer, got {value!r}")
    return value


def check_backoff(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigurationError(f"retry_backoff must be a non-negative number of seconds, got {value!r}")
    return float(value)


def parse_task_format(value: object) -> TaskFormat:
    try:
        return TaskFormat(value)
    except ValueError:
        choices = ", ".join(repr(f.value) for f in TaskFormat)
        raise ConfigurationError(f"task_format must be one of {choices}, got {value!r}") from None


def register_channel(
    channel: int,
    task_function: TaskFunction,
    save_function: SaveFunction | None = None,
    *,
    task_format: str | TaskFormat = TaskFormat.TEXT,
    retries: int = 0,
    retry_backoff: float = 1.0,
    time_limit: float | None = None,
) -> ChannelHandler:
    """Make this process a device of ``channel``: call it at import, before the worker starts.

    ``celery -A mutitask_celery worker -Q channel1 -I mymodule`` then works
    ``channel1`` with the functions ``mymodule`` registered. ``time_limit``: seconds a
    task function may run before its task is dead-lettered as ``timed out after N s``
    (retried first, if ``retries`` allow), on any pool (see :mod:`.device.time_limits`).
    """
    handler = ChannelHandler(
        channel=check_channel(channel),
        task_function=check_function(task_function, "task"),
        save_function=None if save_function is None else check_function(save_function, "save"),
        task_format=parse_task_format(task_format),
        retries=check_retries(retries),
        retry_backoff=check_backoff(retry_backoff),
        time_limit=check_time_limit(time_limit),
    )
    _handlers[channel] = handler
    return handler


def handler_for(channel: int) -> ChannelHandler | None:
    return _handlers.get(channel)
