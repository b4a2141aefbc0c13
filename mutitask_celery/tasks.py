"""The one Celery task every device runs: ``mutitask.run``.

A message carries a channel number and a list of ``[task_id, task_data]``
items. Each item gets its own outcome (saved, or dead-lettered with its
reason), and all outcomes of a message are written in one atomic step.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from . import codec, hooks, runtime  # noqa: F401  (hooks: device start/stop behaviour)
from .celery_app import TASK_NAME, app
from .ledger import Outcome
from .registry import ChannelHandler, TaskFormat, handler_for

log = logging.getLogger(__name__)


def _failure(task_id: str, reason: str, exc: BaseException | None = None, result: str = "") -> Outcome:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc else ""
    return Outcome(task_id=task_id, ok=False, reason=reason, traceback=tb, result=result)


def run_one(handler: ChannelHandler, task_id: str, data: str) -> Outcome:
    """Run the task function (and a user's save function) on one item."""
    try:
        value = codec.decode(data)
    except (ValueError, TypeError) as exc:
        return _failure(task_id, f"undecodable task data: {exc}", exc)
    arg = value if handler.task_format is TaskFormat.NATIVE else codec.to_text(value)
    try:
        result = handler.task_function(arg)
    except Exception as exc:  # the user's code: any error is a task failure
        return _failure(task_id, f"{type(exc).__name__}: {exc}", exc)
    if result is None:
        return _failure(task_id, "returned None")
    if handler.save_function is None:
        try:
            return Outcome(task_id=task_id, ok=True, result=codec.encode(result))
        except (TypeError, ValueError) as exc:
            return _failure(task_id, f"unserializable result: {exc}", exc)
    try:
        handler.save_function(result)
    except Exception as exc:
        kept = ""
        try:
            kept = codec.encode(result)
        except (TypeError, ValueError):
            kept = codec.encode(repr(result))
        return _failure(task_id, f"save function failed: {type(exc).__name__}: {exc}", exc, kept)
    return Outcome(task_id=task_id, ok=True)


@app.task(name=TASK_NAME, bind=True, ignore_result=True)
def run_items(self: Task, channel: int, items: list[list[Any]]) -> None:
    device = self.request.hostname or "unknown"
    try:
        paused = runtime.devices().is_paused(device)
    except redis.RedisError as exc:
        raise Reject(f"cannot read the device's wanted state: {exc}", requeue=True) from exc
    if paused:
        # Fetched just before the pause took effect: give it back untouched.
        raise Reject(f"{device} is paused", requeue=True)
    handler = handler_for(channel)
    if handler is None:
        log.error("%s has no task function for channel %s: dead-lettering %d task(s)", device, channel, len(items))
        outcomes = [
            _failure(str(i[0]), f"no task function registered for channel {channel} on {device}") for i in items
        ]
    else:
        outcomes = [run_one(handler, str(task_id), str(data)) for task_id, data in items]
    try:
        _ok, failed, _dup = runtime.ledger().finish(channel, device, outcomes, message_id=self.request.id or "")
    except redis.RedisError as exc:
        # The books could not be written: give the message back rather than
        # ack a task whose outcome nobody recorded.
        log.warning("could not record %d outcome(s) on channel %s (%s); requeueing", len(outcomes), channel, exc)
        raise Reject(str(exc), requeue=True) from exc
    if failed:
        try:
            runtime.store().prune()
        except redis.RedisError as exc:  # retention can wait for the next failure
            log.warning("dead-letter retention skipped: %s", exc)
