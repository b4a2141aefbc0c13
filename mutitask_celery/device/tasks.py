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
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import redis
from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Celery, Task
from celery.exceptions import Reject
from celery.worker.request import Request
from celery.worker.state import task_ready

from mutitask_celery import codec, runtime, settings, tracing
from mutitask_celery.books import messages
from mutitask_celery.books.ledger import Finished, Outcome, claim_of
from mutitask_celery.books.recovery.base import Verdict
from mutitask_celery.celery_app import TASK_NAME, app
from mutitask_celery.channels import ChannelHandler, SaveFunction, TaskFormat, handler_for
from mutitask_celery.connection import redis_client
from mutitask_celery.device import lifecycle
from mutitask_celery.device.cancelled import CANCELLED, running_channel
from mutitask_celery.device.lifecycle import DeviceLife
from mutitask_celery.device.time_limits import Runners, TimedOut
from mutitask_celery.errors import BooksLost, BrokerUnavailable, TooManyLateRunners

log = logging.getLogger(__name__)


class Delivery(NamedTuple):
    """The message in hand: whose channel, which device took it, its id (Celery's task id),
    which the books know it by, and this run's own token (see :func:`.claim_of`: one message
    can reach one device twice)."""

    channel: int
    device: str
    message_id: str
    run: str

    @property
    def claim(self) -> str:
        """This run's claim on the message's tasks, for a user's save function."""
        return claim_of(self.device, self.message_id, self.run)


def _failure(task_id: str, reason: str, exc: BaseException | None = None, result: str = "", tries: int = 0) -> Outcome:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc else ""
    return Outcome(task_id=task_id, ok=False, reason=reason, traceback=tb, result=result, tries=tries, error=exc)


@dataclass(frozen=True)
class ToSave:
    """A result for a user's save function, called only once the task is claimed (see
    :func:`save_claimed`): not before, or a task that ran twice would be saved twice."""

    task_id: str
    value: Any
    tries: int = 1  # calls of the task function that made it (1 + retries)


def run_one(
    handler: ChannelHandler, task_id: str, data: str | bytes | messages.Spliced, runners: Runners
) -> Outcome | ToSave:
    """Run the task function on one item (its data as JSON text, or as the message carried it
    parsed) on one of the device's ``runners``: its outcome, or the result a user's save
    function is to save."""
    try:
        value = codec.unpack(data.value) if isinstance(data, messages.Spliced) else codec.decode(data)
    except (ValueError, TypeError) as exc:
        return _failure(task_id, f"undecodable task data: {exc}", exc)
    arg = value if handler.task_format is TaskFormat.NATIVE else codec.to_text(value)
    attempt = 0
    while True:
        try:
            result = runners.call_with_limit(handler.task_function, arg, handler.time_limit, task_id)
            break
        except TooManyLateRunners:
            raise  # not the task's fault: no outcome, the device reacts (see NoRunner)
        except Exception as exc:  # the user's code: any error is a task failure; so is its time limit
            if attempt >= handler.retries:
                timed_out = isinstance(exc, TimedOut)
                reason = str(exc) if timed_out else f"{type(exc).__name__}: {exc}"
                if attempt:
                    reason += f" (after {attempt} retr{'y' if attempt == 1 else 'ies'})"
                return _failure(task_id, reason, None if timed_out else exc, tries=attempt + 1)
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
    tries = attempt + 1
    if result is None:
        return _failure(task_id, "returned None", tries=tries)
    if handler.save_function is not None:
        return ToSave(task_id, result, tries)
    try:
        return Outcome(task_id=task_id, ok=True, result=codec.encode(result), tries=tries)
    except (TypeError, ValueError) as exc:
        return _failure(task_id, f"unserializable result: {exc}", exc, tries=tries)


def save_one(save: SaveFunction, task_id: str, value: Any, tries: int = 1) -> Outcome:
    """A user's save function on one claimed result; a failure keeps the result in the record.
    ``tries``: calls of the task function that made it."""
    try:
        save(value)
    except Exception as exc:
        kept = ""
        try:
            kept = codec.encode(value)
        except (TypeError, ValueError):
            kept = codec.encode(repr(value))
        return _failure(task_id, f"save function failed: {type(exc).__name__}: {exc}", exc, kept, tries)
    return Outcome(task_id=task_id, ok=True, tries=tries)


def save_claimed(delivery: Delivery, save: SaveFunction, ran: list[Outcome | ToSave]) -> list[Outcome]:
    """Claim the tasks whose results are to be saved, mark the claims saving, then save only
    those marked here (``lua/claim.lua``, ``lua/claim_mark.lua``); the others ran elsewhere too,
    or were given to other devices between the claim and the mark, and are counted as run
    twice. Returns the outcomes in order.

    Raises ``redis.RedisError`` (not an outage: those are waited out) when the claim cannot be
    made (nothing was saved: the message can go back).
    """
    channel, device, message_id, _ = delivery
    results = [r for r in ran if isinstance(r, ToSave)]
    codes = _patiently(
        f"claim {len(results)} result(s) on channel {channel}",
        lambda: runtime.ledger().claim(channel, device, message_id, delivery.run, [r.task_id for r in results]),
    )
    claimed = [task_id for task_id, code in zip((r.task_id for r in results), codes, strict=True) if code.save]
    marked = set(
        _patiently(
            f"mark {len(claimed)} claim(s) saving on channel {channel}",
            lambda: runtime.ledger().mark_claims(channel, device, message_id, delivery.run, claimed, "saving"),
        )
    )
    outcomes: list[Outcome] = []
    for r in ran:
        if not isinstance(r, ToSave):
            outcomes.append(r)
        elif r.task_id in marked:
            outcomes.append(save_one(save, r.task_id, r.value, r.tries))
        else:
            outcomes.append(Outcome(task_id=r.task_id, ok=True, skipped=True, tries=r.tries))
    skipped = len(results) - len(claimed)
    if skipped:
        log.warning(
            "%d task(s) of message %s ran elsewhere too: their results are not saved again", skipped, message_id
        )
    taken = len(claimed) - len(marked)
    if taken:
        log.warning(
            "%d task(s) of message %s were given to other devices while they ran here (this device was taken "
            "for dead): not saved here, they are saved where they run again",
            taken,
            message_id,
        )
    return outcomes


SAY_EVERY = 30.0  # seconds between a device's warnings while it waits for Redis to record outcomes


T = TypeVar("T")
_OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def _patiently(what: str, step: Callable[[], T]) -> T:
    """``step()``, tried again while Redis is away or full, for as long as it takes: the outcomes exist
    only in this process until they are recorded, and a message given back would run again
    with its first run never counted (nor could it be given back while Redis is away). Each
    try must be safe to repeat (a step id, or a claim). Says so now and then, not each try."""
    delay, said = 0.1, 0.0
    while True:
        try:
            return step()
        except (*_OUTAGE, redis.OutOfMemoryError) as exc:
            if time.monotonic() - said >= SAY_EVERY:
                why = "Redis is out of memory: " if isinstance(exc, redis.OutOfMemoryError) else ""
                log.warning("could not %s yet (%s%s): waiting for Redis", what, why, exc)
                said = time.monotonic()
            time.sleep(delay)  # Redis is away or restarting: wait for it, growing the wait
            delay = min(delay * 2, 2.0)


def _finish(life: DeviceLife, delivery: Delivery, outcomes: list[Outcome], busy: float, claim: str = "") -> Finished:
    """Record outcomes, riding out a Redis restart however long: every try is the same step
    (one id), so a try whose reply was lost and the next one apply once. ``claim``: the
    device's claim, when a user's save function saved the results.

    Raises :class:`BooksLost` when the books came back with fewer tasks finished by this
    device than it had seen (see :mod:`.integrity`).
    """
    channel, device, message_id, _ = delivery
    key = lifecycle.done_key(device)
    step, writer = messages.new_task_id(), f"{os.getpid()}:{threading.get_ident()}"
    # Taken once, before the first try: a try whose reply was lost may have applied, and the
    # heartbeat may have seen its count since; the retry replies with that try's count.
    marks = life.books.mark()

    def once() -> Finished:
        ledger = runtime.ledger()
        finished = ledger.finish(
            channel, device, outcomes, message_id=message_id, busy=busy, step=step, writer=writer, claim=claim
        )
        at_least = {key: marks.get(key, 0) + len(outcomes)}
        life.books.check({key: finished.device_done}, at_least, ledger.client, confirmed=True)  # the step's own reply
        return finished

    return _patiently(f"record outcomes on channel {channel}", once)


class NoRunner(Reject):  # type: ignore[misc]  # celery's, untyped
    """The message goes back untouched: too many task functions of this process run past their
    time limit (:class:`.TooManyLateRunners`). Raised in the pool's process (a prefork child),
    it reaches :meth:`DeviceRequest.on_failure` in the worker's, which stops the device."""

    def __init__(self, reason: str = "", requeue: bool = True) -> None:
        super().__init__(reason, requeue)  # the same arguments as Reject's: it crosses a pipe pickled


class HandBack(Exception):
    """A step of :func:`run_items` cannot go on (paused, stopping, Redis away): the message goes
    back untouched. :func:`run_items` catches it in one place, hands the message back
    (:func:`_hand_back`) and raises ``rejection`` for Celery to requeue it: :class:`NoRunner`
    when the device has no runner left for its tasks, :class:`Reject` otherwise."""

    def __init__(self, reason: str, rejection: type[Reject] = Reject) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejection = rejection


def _no_runner(device: str, exc: TooManyLateRunners) -> HandBack:
    """No task of the message may run (see :class:`NoRunner`): back it goes, counting no death."""
    return HandBack(f"{device}: {exc}", rejection=NoRunner)


def _hand_back(delivery: Delivery) -> None:
    """The message goes back to the queue without an outcome: it is no longer in this device's
    hands, and whether it had started or not, its next delivery counts no death."""
    try:
        runtime.ledger().give_back(delivery.device, delivery.channel, delivery.message_id)
    except redis.RedisError:
        pass  # a stale note is harmless (the fences see it); a stale start mark costs one death


DELIVERY_COUNT = "x-delivery-count"  # a quorum queue's header: how often the message came back


def _deliveries(request: Any) -> int:
    """How often the broker handed this message out before (a quorum queue's
    ``x-delivery-count``); 0 where it does not say (a classic queue, the Redis broker)."""
    try:
        return int(request.get(DELIVERY_COUNT) or 0)
    except (TypeError, ValueError):
        return 0


def _settle_redelivery(delivery: Delivery, items: list[list[Any]], deliveries: int) -> Verdict:
    """How a redelivered message runs (see recovery.Redeliveries); on the Redis broker the
    reaper counts deaths instead, and it runs as it came."""
    channel, device, message_id, _ = delivery
    try:
        return runtime.recovery().settle(
            channel, device, message_id, [(str(i[0]), messages.item_text(i)) for i in items], deliveries
        )
    except (redis.RedisError, BrokerUnavailable) as exc:
        raise Reject(f"cannot count the redelivery: {exc}", requeue=True) from exc


class DeviceRequest(Request):  # type: ignore[misc]  # celery's, untyped
    """A task request that takes its message back itself when a pool child dies running it.

    On the prefork pool (``celery -A mutitask_celery worker`` without ``--pool``) a task
    that kills its process kills a child, not the device; Celery would requeue the message
    (``task_reject_on_worker_lost``) and count nothing, so a poison task would loop for
    ever. Here the device takes the message back with the reaper's own step
    (:meth:`Reaper.child_lost`): the death is charged, the tasks go back alone, and a
    task that died ``max_attempts`` times is dead-lettered. On a broker that redelivers by
    itself (RabbitMQ), Celery's requeue stays and the redelivery is counted.

    A message given back for want of a runner (:class:`NoRunner`) stops the device: that
    is decided here, in the worker's process, where the stop takes effect, and no pool child
    is recycled for it (a child lost mid-task would be charged as its task's death).
    """

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, NoRunner):  # this runs in the worker's process, whatever the pool
            lifecycle.late_runners(str(exc.reason))
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
        outcome = runtime.recovery().child_lost(request.hostname, request.id)
    except redis.RedisError as exc:
        log.warning("could not take back the message of a lost pool child (%s): Celery requeues it", exc)
        return False
    if outcome is None:  # the broker redelivers it itself (and the redelivery is counted)
        return False
    log.warning("a pool child of %s died running message %s: %s", request.hostname, request.id, outcome.value)
    task_ready(request)
    request.acknowledge()
    return True


def _device(app: Celery, name: str) -> DeviceLife:
    """The device this task runs on: its worker's (see :class:`.DeviceStep`). A task run
    outside a worker (``apply()``, in tests) gets one made on first use and kept as a worker
    keeps its own, so that its runner threads serve the next call too."""
    life = lifecycle.device_of(app)
    if life is None:
        life = DeviceLife(name)
        lifecycle.attach(app, life)
    return life


@app.task(name=TASK_NAME, bind=True, ignore_result=True, Request=DeviceRequest)  # type: ignore[untyped-decorator]
def run_items(self: Task, channel: int, items: list[list[Any]], suspect: bool = False) -> None:
    """Run the tasks of one message and record their outcomes in one step, or give the message
    back untouched (:class:`HandBack`) to run later or elsewhere."""
    delivery = Delivery(channel, self.request.hostname or "unknown", self.request.id or "", messages.new_task_id())
    life = _device(self.app, delivery.device)
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    deliveries = _deliveries(self.request)
    spans = tracing.task_spans(self.request, channel, delivery.device, delivery.message_id)
    # The isolation slot, once taken, is held until the outcomes are in the books or the message
    # is handed back: a suspect's start mark stands until then, and a task let in beside it
    # earlier (a poison one) would charge it a death it did not cause.
    with ExitStack() as slot, spans:
        try:
            alone = _admit(life, delivery, items, suspect, redelivered, deliveries)
            if alone is None:
                return
            slot.enter_context(life.isolation.slot(alone=alone))
            finished = _work(life, delivery, items, alone, spans)
        except HandBack as back:
            _hand_back(delivery)
            raise back.rejection(back.reason, requeue=True) from back.__cause__
    if finished is not None:
        _tidy_up(delivery.channel, finished)


def _admit(
    life: DeviceLife, delivery: Delivery, items: list[list[Any]], suspect: bool, redelivered: bool, deliveries: int
) -> bool | None:
    """Whether the message may run here, before any of it starts: True to run it alone (a
    suspect), False beside others, None to skip it (a redelivery already settled, or published
    afresh). ``deliveries``: see :func:`_deliveries`."""
    device = delivery.device
    try:
        devices = runtime.devices()
        paused = life.wanted.is_paused(device, lambda: devices.is_paused(device))
    except redis.RedisError as exc:
        raise Reject(f"cannot read the device's wanted state: {exc}", requeue=True) from exc
    if paused:  # fetched just before the pause took effect
        raise HandBack(f"{device} is paused")
    if life.leaving():  # held when it was told to leave (SIGTERM): it starts elsewhere
        raise HandBack(f"{device} is leaving")
    if delivery.channel in CANCELLED:  # never started: its tasks leave the books as cancelled
        _cancel_unstarted(delivery, items)
        return None
    try:
        life.runners.check_room()
    except TooManyLateRunners as exc:
        raise _no_runner(device, exc) from None  # the reason says it all: no chained traceback in the log
    alone = suspect  # it was running when a device died: it runs alone (see isolation)
    if redelivered:
        verdict = _settle_redelivery(delivery, items, deliveries)
        if verdict is Verdict.SKIP:
            return None
        alone = alone or verdict is Verdict.RUN_ALONE
    return alone


def _cancel_unstarted(delivery: Delivery, items: list[list[Any]]) -> None:
    """A message of a cancelled channel that had not started: its tasks leave the books as
    cancelled, and it leaves this device's hands (acknowledged, it is gone)."""
    channel, device, message_id, _ = delivery
    try:
        runtime.cancels().drop(channel, [str(item[0]) for item in items])
        runtime.ledger().give_back(device, channel, message_id)
    except redis.RedisError as exc:
        raise HandBack(f"cannot record the cancelled tasks of message {message_id}: {exc}") from exc
    log.info(
        "%s: channel %s is cancelled: message %s's %d task(s) recorded cancelled",
        device,
        channel,
        message_id,
        len(items),
    )


def _work(
    life: DeviceLife, delivery: Delivery, items: list[list[Any]], alone: bool, spans: tracing.TaskSpans
) -> Finished | None:
    """Run the message's tasks (in the slot :func:`run_items` holds), save what a user's save
    function is to save, and record the outcomes; None when the books were lost (the device
    stops). Each task's span (``spans``) ends with its outcome in the books."""
    ran, busy, save = _run(life, delivery, items, alone or life.isolation.runs_one_at_a_time(), spans)
    if life.prefetch is not None:
        life.prefetch.observe(busy)
    claim = ""
    if save is None:
        outcomes = [r for r in ran if isinstance(r, Outcome)]
    else:
        outcomes = _save(delivery, save, ran)
        claim = delivery.claim
    try:
        finished = _finish(life, delivery, outcomes, busy, claim)
    except BooksLost as exc:
        _end_spans(spans, outcomes, ())
        lifecycle.books_lost(exc)  # the outcomes went to what is left of the books; the device stops
        return None
    except redis.RedisError as exc:
        # The books could not be written: give the message back rather than
        # ack a task whose outcome nobody recorded.
        log.warning(
            "could not record %d outcome(s) on channel %s (%s); requeueing", len(outcomes), delivery.channel, exc
        )
        raise HandBack(str(exc)) from exc
    _end_spans(spans, outcomes, finished.run_twice)
    return finished


def _end_spans(spans: tracing.TaskSpans, outcomes: list[Outcome], run_twice: Sequence[int]) -> None:
    """Each task's span ends with its outcome as the books took it (``run_twice``: the places of
    the outcomes they counted as run twice)."""
    if not spans.recording:
        return
    twice = set(run_twice)
    for n, outcome in enumerate(outcomes):
        if outcome.cancelled:
            continue  # its span ended when it was not started
        if outcome.skipped or n in twice:
            kind = tracing.TaskOutcome.RUN_TWICE
        else:
            kind = tracing.TaskOutcome.SUCCEEDED if outcome.ok else tracing.TaskOutcome.FAILED
        spans.ended(outcome.task_id, kind, outcome.tries, outcome.reason, outcome.error)


def _tidy_up(channel: int, finished: Finished) -> None:
    """After the outcomes are in: dead-letter retention, and the channel's reloaded tasks let in."""
    try:
        if finished.failed:
            runtime.store().prune()
        if finished.backlog:  # reloaded tasks wait for room: let them in, server or no server
            runtime.ledger().feed_backlog(channel)
    except redis.RedisError as exc:  # both can wait for the next message
        log.warning("dead-letter retention or backlog feeding skipped: %s", exc)


def _save(delivery: Delivery, save: SaveFunction, ran: list[Outcome | ToSave]) -> list[Outcome]:
    """:func:`save_claimed`, or the message back untouched when the claim cannot be made."""
    channel, device, message_id, _ = delivery
    try:
        return save_claimed(delivery, save, ran)
    except redis.RedisError as exc:
        log.warning(
            "could not claim the results of message %s on channel %s (%s): requeueing", message_id, channel, exc
        )
        try:  # nothing was saved: the claims go, or the tasks' next runs would find them held
            ids = [r.task_id for r in ran if isinstance(r, ToSave)]
            runtime.ledger().mark_claims(channel, device, message_id, delivery.run, ids, "release")
        except redis.RedisError:
            pass  # their next runs find them held until a reaper ends this device's claims
        raise HandBack(str(exc)) from exc


def _first_starts(life: DeviceLife, delivery: Delivery, tasks: int) -> int | None:
    """Under a rate limit, take the first starts of a message (before it is marked started: a
    pause or a stop meanwhile hands it back untouched); returns how many starts each take
    holds, None without a limit."""
    channel = delivery.channel
    try:
        chunk = life.pacing.chunk(channel)
        if chunk is None:
            return None

        def give_up() -> bool:
            return bool(life.wanted.paused) or life.leaving()

        if life.pacing.take(channel, min(chunk, tasks), give_up):
            return chunk
    except redis.RedisError as exc:
        raise HandBack(f"cannot read the channel's rate limit: {exc}") from exc
    raise HandBack(f"{delivery.device} was paused or stopped while waiting for channel {channel}'s rate limit")


def _next_starts(life: DeviceLife, channel: int, tasks: int) -> None:
    """Take the starts of the next tasks of a message already started (waits inline)."""
    try:
        life.pacing.take(channel, tasks)
    except redis.RedisError as exc:  # the message is in hand: run on rather than lose its place
        log.warning("could not take channel %s's rate-limit budget (%s): starting anyway", channel, exc)


def _task_data(channel: int, items: list[list[Any]]) -> list[tuple[str, str | bytes | messages.Spliced | None]]:
    """Each item's task id and data, the data a message left in the books read from there in
    one round trip (see :func:`.messages.build`). None for a task no longer in the books: it
    finished elsewhere meanwhile (another device ran a copy, or it was dead-lettered), and
    does not run again here."""
    data = [(str(item[0]), messages.item_data(item)) for item in items]
    wanted = [task_id for task_id, found in data if isinstance(found, messages.InBooks)]
    if not wanted:
        return cast("list[tuple[str, str | bytes | messages.Spliced | None]]", data)
    raw = redis_client(settings.current().redis_url, raw=True)  # bytes: a big task's data is decoded in place
    read = dict(zip(wanted, raw.hmget(runtime.keys().pending(channel), wanted), strict=True))
    out: list[tuple[str, str | bytes | messages.Spliced | None]] = []
    for task_id, found in data:
        if isinstance(found, messages.InBooks):
            value = read[task_id]
            if value is None:
                log.info("task %s of channel %s finished elsewhere before it ran here: skipped", task_id, channel)
            out.append((task_id, value))
        else:
            out.append((task_id, found))
    return out


def _run(
    life: DeviceLife, delivery: Delivery, items: list[list[Any]], alone: bool, spans: tracing.TaskSpans
) -> tuple[list[Outcome | ToSave], float, SaveFunction | None]:
    """Mark the message started (from now on a death is charged to its tasks; ``alone``: no
    other task of this process runs beside them), then run them, each in its span. Returns what
    they gave, the time it took, and the channel's save function (None: the default)."""
    channel, device, message_id, _ = delivery
    devices = runtime.devices()
    started = time.perf_counter()  # the message's time includes its waits for a rate limit
    chunk = _first_starts(life, delivery, len(items))
    try:
        if life.in_child():  # its device may have handed the message back as it left: start only if not
            if not devices.started(
                device, channel, message_id, alone=alone, noted_only=runtime.transport().notes_holds
            ):
                raise HandBack(f"{device} is leaving: the message went back before it started")
        else:  # the device's own process: a message it hands back as it leaves never reaches here
            devices.started(device, channel, message_id, alone=alone, wait=False)
        data = _task_data(channel, items)
    except redis.RedisError as exc:
        raise HandBack(f"cannot mark the message started or read its tasks: {exc}") from exc
    handler = handler_for(channel)
    outcomes: list[Outcome | ToSave]
    if handler is None:
        log.error("%s has no task function for channel %s: dead-lettering %d task(s)", device, channel, len(items))
        outcomes = [
            _failure(str(i[0]), f"no task function registered for channel {channel} on {device}") for i in items
        ]
    else:
        outcomes = []
        running_channel(channel)  # for cancelled(), which a task function may ask
        try:
            for n, (task_id, task_data) in enumerate(data):
                if chunk is not None and n and n % chunk == 0:
                    _next_starts(life, channel, min(chunk, len(items) - n))
                if task_data is None:
                    spans.ended(task_id, tracing.TaskOutcome.SKIPPED)
                    continue
                if channel in CANCELLED:  # cancelled since the message started: the rest never start
                    outcomes.append(Outcome(task_id=task_id, ok=False, cancelled=True))
                    spans.ended(task_id, tracing.TaskOutcome.CANCELLED)
                    continue
                with spans.running(task_id):
                    outcomes.append(run_one(handler, task_id, task_data, life.runners))
        except TooManyLateRunners as exc:
            # No thread at all mid-message (the cap is asked before a message starts): nothing
            # is recorded, the whole message runs again elsewhere, the tasks that ran here too.
            try:
                devices.started_settled()  # in Redis before the hand-back undoes it
            except redis.RedisError:
                pass
            raise _no_runner(device, exc) from None
        finally:
            running_channel(None)
    busy = time.perf_counter() - started
    try:
        devices.started_settled()
    except redis.RedisError as exc:  # the tasks ran; had the device died, no death would have been charged
        log.warning("marking message %s started failed: %s", message_id, exc)
    return outcomes, busy, None if handler is None else handler.save_function
