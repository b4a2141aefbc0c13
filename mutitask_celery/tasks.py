"""The one Celery task every device runs: ``mutitask.run``.

A message carries a channel number and a list of ``[task_id, task_data]``
items. Each item gets its own outcome (saved, or dead-lettered with its
reason), and all outcomes of a message are written in one atomic step.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from . import codec, hooks, keys, prefetch, runtime, wanted  # noqa: F401  (hooks: device start/stop behaviour)
from .celery_app import TASK_NAME, app
from .errors import BooksLost, BrokerUnavailable
from .ledger import Finished, Outcome
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
    attempt = 0
    while True:
        try:
            result = handler.task_function(arg)
            break
        except Exception as exc:  # the user's code: any error is a task failure
            if attempt >= handler.retries:
                reason = f"{type(exc).__name__}: {exc}"
                if attempt:
                    reason += f" (after {attempt} retr{'y' if attempt == 1 else 'ies'})"
                return _failure(task_id, reason, exc)
            delay = handler.retry_backoff * 2**attempt
            log.info("task %s raised %s: retry %d of %d in %.1fs", task_id, type(exc).__name__,
                     attempt + 1, handler.retries, delay)
            time.sleep(delay)  # the backoff the user asked for, in this task's own thread
            attempt += 1
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


FINISH_PATIENCE = 60.0  # seconds a device keeps trying to record outcomes while Redis is away


def _finish(channel: int, device: str, outcomes: list[Outcome], message_id: str, busy: float) -> Finished:
    """Record outcomes, riding out a Redis restart (the finish script is idempotent per task).

    Raises :class:`BooksLost` when the books came back with fewer tasks finished by this
    device than it had seen (see :mod:`.integrity`).
    """
    deadline = time.monotonic() + FINISH_PATIENCE
    delay = 0.1
    key = hooks.done_key(device)
    while True:
        try:
            marks = hooks.books.mark()
            ledger = runtime.ledger()
            finished = ledger.finish(channel, device, outcomes, message_id=message_id, busy=busy)
            hooks.books.check({key: finished.device_done}, {key: marks.get(key, 0) + len(outcomes)}, ledger.client)
            return finished
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("could not record outcomes on channel %s yet (%s): retrying", channel, exc)
            time.sleep(delay)  # Redis is restarting: wait for it, growing the wait
            delay = min(delay * 2, 2.0)


def _hand_back(device: str, message_id: str | None, channel: int, items: list[list[Any]]) -> None:
    """The message goes back to the queue untouched: it is no longer in this device's hands,
    and on another broker its redelivery counts no death."""
    try:
        runtime.ledger().client.hdel(keys.inhand(device), message_id or "")
    except redis.RedisError:
        pass  # a stale note is harmless: its delivery tag will not be in kombu's unacked hash
    redeliveries = runtime.redeliveries()
    if redeliveries is None:
        return
    try:
        redeliveries.given_back(channel, [str(i[0]) for i in items])
    except redis.RedisError:
        pass  # then its redelivery counts one death: a poison task takes max_attempts of them


def _settle_redelivery(channel: int, device: str, items: list[list[Any]]) -> bool:
    """True when a redelivered message must not run (see recovery.Redeliveries); on the
    Redis broker the reaper counts deaths instead, and this is always False."""
    redeliveries = runtime.redeliveries()
    if redeliveries is None:
        return False
    try:
        return redeliveries.settle(channel, device, [(str(i[0]), str(i[1])) for i in items])
    except (redis.RedisError, BrokerUnavailable) as exc:
        raise Reject(f"cannot count the redelivery: {exc}", requeue=True) from exc


@app.task(name=TASK_NAME, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]  # celery's, untyped
def run_items(self: Task, channel: int, items: list[list[Any]]) -> None:
    device = self.request.hostname or "unknown"
    try:
        devices = runtime.devices()
        paused = wanted.local.is_paused(device, lambda: devices.is_paused(device))
    except redis.RedisError as exc:
        raise Reject(f"cannot read the device's wanted state: {exc}", requeue=True) from exc
    if paused:
        # Fetched just before the pause took effect: give it back untouched.
        _hand_back(device, self.request.id, channel, items)
        raise Reject(f"{device} is paused", requeue=True)
    if (self.request.delivery_info or {}).get("redelivered") and _settle_redelivery(channel, device, items):
        return
    handler = handler_for(channel)
    started = time.perf_counter()
    if handler is None:
        log.error("%s has no task function for channel %s: dead-lettering %d task(s)", device, channel, len(items))
        outcomes = [
            _failure(str(i[0]), f"no task function registered for channel {channel} on {device}") for i in items
        ]
    else:
        outcomes = [run_one(handler, str(task_id), str(data)) for task_id, data in items]
    busy = time.perf_counter() - started
    prefetch.observe(busy)
    try:
        failed = _finish(channel, device, outcomes, self.request.id or "", busy).failed
    except BooksLost as exc:
        hooks.books_lost(exc)  # the outcomes went to what is left of the books; the device stops
        return
    except redis.RedisError as exc:
        # The books could not be written: give the message back rather than
        # ack a task whose outcome nobody recorded.
        log.warning("could not record %d outcome(s) on channel %s (%s); requeueing", len(outcomes), channel, exc)
        _hand_back(device, self.request.id, channel, items)
        raise Reject(str(exc), requeue=True) from exc
    if failed:
        try:
            runtime.store().prune()
        except redis.RedisError as exc:  # retention can wait for the next failure
            log.warning("dead-letter retention skipped: %s", exc)
