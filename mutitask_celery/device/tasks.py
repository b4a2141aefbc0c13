"""The one Celery task every device runs: ``mutitask.run``.

A message carries a channel number and a list of ``[task_id, task_data]``
items. Each item gets its own outcome (saved, or dead-lettered with its
reason), and all outcomes of a message are written in one atomic step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Any

import redis
from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import Reject
from celery.worker.request import Request
from celery.worker.state import task_ready

from mutitask_celery import codec, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Finished, Outcome
from mutitask_celery.books.recovery import Verdict
from mutitask_celery.celery_app import TASK_NAME, app
from mutitask_celery.device import isolation, lifecycle, pacing, prefetch, time_limits, wanted
from mutitask_celery.errors import BooksLost, BrokerUnavailable
from mutitask_celery.serving.channels import ChannelHandler, TaskFormat, handler_for

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
            result = time_limits.call_with_limit(handler.task_function, arg, handler.time_limit, task_id)
            break
        except Exception as exc:  # the user's code: any error is a task failure; so is its time limit
            if attempt >= handler.retries:
                timed_out = isinstance(exc, time_limits.TimedOut)
                reason = str(exc) if timed_out else f"{type(exc).__name__}: {exc}"
                if attempt:
                    reason += f" (after {attempt} retr{'y' if attempt == 1 else 'ies'})"
                return _failure(task_id, reason, None if timed_out else exc)
            delay = handler.retry_backoff * 2**attempt
            log.info(
                "task %s raised %s: retry %d of %d in %.1fs",
                task_id,
                type(exc).__name__,
                attempt + 1,
                handler.retries,
                delay,
            )
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
    """Record outcomes, riding out a Redis restart: every try is the same step (one id), so a
    try whose reply was lost and the next one apply once.

    Raises :class:`BooksLost` when the books came back with fewer tasks finished by this
    device than it had seen (see :mod:`.integrity`).
    """
    deadline = time.monotonic() + FINISH_PATIENCE
    delay = 0.1
    key = lifecycle.done_key(device)
    step, writer = messages.new_task_id(), f"{os.getpid()}:{threading.get_ident()}"
    # Taken once, before the first try: a try whose reply was lost may have applied, and the
    # heartbeat may have seen its count since; the retry replies with that try's count.
    marks = lifecycle.life.books.mark()
    while True:
        try:
            ledger = runtime.ledger()
            finished = ledger.finish(
                channel, device, outcomes, message_id=message_id, busy=busy, step=step, writer=writer
            )
            lifecycle.life.books.check(
                {key: finished.device_done}, {key: marks.get(key, 0) + len(outcomes)}, ledger.client
            )
            return finished
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.OutOfMemoryError) as exc:
            full = isinstance(exc, redis.OutOfMemoryError)
            if full:  # Redis is full: the outcomes wait while that lasts, and the message is kept
                deadline = time.monotonic() + FINISH_PATIENCE
            elif time.monotonic() > deadline:
                raise
            why = "Redis is out of memory: " if full else ""
            log.warning("could not record outcomes on channel %s yet (%s%s): retrying", channel, why, exc)
            time.sleep(delay)  # Redis is restarting: wait for it, growing the wait
            delay = min(delay * 2, 2.0)


def _hand_back(device: str, message_id: str, channel: int) -> None:
    """The message goes back to the queue without an outcome (paused, or Redis away): it is no
    longer in this device's hands, and whether it had started or not, its next delivery
    counts no death."""
    try:
        runtime.ledger().give_back(device, channel, message_id)
    except redis.RedisError:
        pass  # a stale note is harmless (the fences see it); a stale start mark costs one death


def _settle_redelivery(channel: int, device: str, message_id: str, items: list[list[Any]]) -> Verdict:
    """How a redelivered message runs (see recovery.Redeliveries); on the Redis broker the
    reaper counts deaths instead, and it runs as it came."""
    try:
        return runtime.broker().settle(channel, device, message_id, [(str(i[0]), str(i[1])) for i in items])
    except (redis.RedisError, BrokerUnavailable) as exc:
        raise Reject(f"cannot count the redelivery: {exc}", requeue=True) from exc


class DeviceRequest(Request):  # type: ignore[misc]  # celery's, untyped
    """A task request that takes its message back itself when a pool child dies running it.

    On the prefork pool (``celery -A mutitask_celery worker`` without ``--pool``) a task
    that kills its process kills a child, not the device; Celery would requeue the message
    (``task_reject_on_worker_lost``) and count nothing, so a poison task would loop for
    ever. Here the device takes the message back with the reaper's own step
    (:meth:`Reaper.worker_lost`): the death is charged, the tasks go back alone, and a
    task that died ``max_attempts`` times is dead-lettered. On a broker that redelivers by
    itself (RabbitMQ), Celery's requeue stays and the redelivery is counted.
    """

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        if _child_lost(self, exc_info.exception) and _take_back(self):
            return None
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def _child_lost(request: Request, exc: BaseException) -> bool:
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):  # billiard may report the exit first
        return not (request._already_cancelled or request._already_revoked)
    return isinstance(exc, WorkerLostError)


def _take_back(request: Request) -> bool:
    """True when the message was taken back (and acknowledged) here."""
    if not request.id:
        return False
    try:
        outcome = runtime.broker().child_lost(request.hostname, request.id)
    except redis.RedisError as exc:
        log.warning("could not take back the message of a lost pool child (%s): Celery requeues it", exc)
        return False
    if outcome is None:  # the broker redelivers it itself (and the redelivery is counted)
        return False
    log.warning("a pool child of %s died running message %s: %s", request.hostname, request.id, outcome.value)
    task_ready(request)
    request.acknowledge()
    return True


@app.task(name=TASK_NAME, bind=True, ignore_result=True, Request=DeviceRequest)  # type: ignore[untyped-decorator]
def run_items(self: Task, channel: int, items: list[list[Any]], suspect: bool = False) -> None:
    device = self.request.hostname or "unknown"
    message_id = self.request.id or ""
    try:
        devices = runtime.devices()
        paused = wanted.local.is_paused(device, lambda: devices.is_paused(device))
    except redis.RedisError as exc:
        raise Reject(f"cannot read the device's wanted state: {exc}", requeue=True) from exc
    if paused:
        # Fetched just before the pause took effect: give it back untouched.
        _hand_back(device, message_id, channel)
        raise Reject(f"{device} is paused", requeue=True)
    alone = suspect  # it was running when a device died: it runs alone (see isolation)
    if (self.request.delivery_info or {}).get("redelivered"):
        verdict = _settle_redelivery(channel, device, message_id, items)
        if verdict is Verdict.SKIP:
            return
        alone = alone or verdict is Verdict.RUN_ALONE
    # The slot is held until the outcomes are in the books: a suspect's start mark stands until
    # then, and a task let in beside it earlier (a poison one) would charge it a death it did
    # not cause.
    with isolation.device.slot(alone=alone):
        outcomes, busy = _run(channel, device, message_id, items, alone or isolation.device.runs_one_at_a_time())
        prefetch.observe(busy)
        try:
            finished = _finish(channel, device, outcomes, message_id, busy)
        except BooksLost as exc:
            lifecycle.books_lost(exc)  # the outcomes went to what is left of the books; the device stops
            return
        except redis.RedisError as exc:
            # The books could not be written: give the message back rather than
            # ack a task whose outcome nobody recorded.
            log.warning("could not record %d outcome(s) on channel %s (%s); requeueing", len(outcomes), channel, exc)
            _hand_back(device, message_id, channel)
            raise Reject(str(exc), requeue=True) from exc
    try:
        if finished.failed:
            runtime.store().prune()
        if finished.backlog:  # reloaded tasks wait for room: let them in, server or no server
            runtime.ledger().feed_backlog(channel)
    except redis.RedisError as exc:  # both can wait for the next message
        log.warning("dead-letter retention or backlog feeding skipped: %s", exc)


def _first_starts(channel: int, device: str, message_id: str, tasks: int) -> int | None:
    """Under a rate limit, take the first starts of a message (before it is marked started: a
    pause or a stop meanwhile hands it back untouched); returns how many starts each take
    holds, None without a limit."""
    try:
        chunk = pacing.local.chunk(channel)
        if chunk is None:
            return None

        def give_up() -> bool:
            return bool(wanted.local.paused) or lifecycle.life.leaving()

        if pacing.local.take(channel, min(chunk, tasks), give_up):
            return chunk
    except redis.RedisError as exc:
        _hand_back(device, message_id, channel)
        raise Reject(f"cannot read the channel's rate limit: {exc}", requeue=True) from exc
    _hand_back(device, message_id, channel)
    raise Reject(f"{device} was paused or stopped while waiting for channel {channel}'s rate limit", requeue=True)


def _next_starts(channel: int, tasks: int) -> None:
    """Take the starts of the next tasks of a message already started (waits inline)."""
    try:
        pacing.local.take(channel, tasks)
    except redis.RedisError as exc:  # the message is in hand: run on rather than lose its place
        log.warning("could not take channel %s's rate-limit budget (%s): starting anyway", channel, exc)


def _run(
    channel: int, device: str, message_id: str, items: list[list[Any]], alone: bool
) -> tuple[list[Outcome], float]:
    """Mark the message started (from now on a death is charged to its tasks; ``alone``: no
    other task of this process runs beside them), then run them."""
    devices = runtime.devices()
    started = time.perf_counter()  # the message's time includes its waits for a rate limit
    chunk = _first_starts(channel, device, message_id, len(items))
    try:
        devices.started(device, channel, message_id, alone=alone, wait=False)
    except redis.RedisError as exc:
        _hand_back(device, message_id, channel)
        raise Reject(f"cannot mark the message started: {exc}", requeue=True) from exc
    handler = handler_for(channel)
    if handler is None:
        log.error("%s has no task function for channel %s: dead-lettering %d task(s)", device, channel, len(items))
        outcomes = [
            _failure(str(i[0]), f"no task function registered for channel {channel} on {device}") for i in items
        ]
    else:
        outcomes = []
        for n, (task_id, data) in enumerate(items):
            if chunk is not None and n and n % chunk == 0:
                _next_starts(channel, min(chunk, len(items) - n))
            outcomes.append(run_one(handler, str(task_id), str(data)))
    busy = time.perf_counter() - started
    try:
        devices.started_settled()
    except redis.RedisError as exc:  # the tasks ran; had the device died, no death would have been charged
        log.warning("marking message %s started failed: %s", message_id, exc)
    return outcomes, busy
