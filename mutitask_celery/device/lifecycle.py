"""What every device does at start and stop, however it was started.

A device is one :class:`DeviceLife`, put into the Celery worker that runs it by a consumer
bootstep, :class:`DeviceStep`. ``celery_app`` adds the step to every worker of the app, as it
names the task module in ``include``: the legacy client script and
``celery -A mutitask_celery worker`` on any pool (solo, threads, prefork) behave alike, and
importing the package wires nothing (only a worker builds a consumer).

Before the pool starts, the device checks that the Celery configuration keeps its promises,
takes the lease of its name (one process per device name: a second one started under a live
device's name exits with code 5 having taken nothing, see :mod:`.books.leases`) and gives back
what a previous life under its name held. Once its consumer has its queues, it enters the
roster with its channels, and if the operator wants it paused (it was paused before a restart,
or the run started paused) it stops consuming before it takes a task.

Three threads of its own run while it works, in the worker's main process:

* the **lease** (``mutitask-lease``, from :meth:`DeviceLife.init` on) renews its
  name's lease, and stops the device (exit code 5) if another process took the
  name while this one was frozen or cut off;
* the **heartbeat** (``mutitask-heartbeat``) says the device lives every
  :data:`.settings.HEARTBEAT` seconds and does nothing else, so no other duty can make it
  late and get a live device taken for dead;
* the **housekeeping** (``mutitask-housekeeping``) re-reads the wanted state (a
  pause made while the device was out of reach), gives dead devices' tasks to
  live ones, and now and then drops long-silent names from the roster.

Everything the device keeps in this process (its name, queues, consumer, threads, the books'
watermarks, its wanted state, pacing, isolation, prefetch tuning and late runners) is its
:class:`DeviceLife`. The task and the remote-control commands find it on the worker's app
(:func:`device_of`); a prefork child finds its own copy there, made when the pool forked.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.signals import task_received, worker_shutdown
from celery.worker import state as worker_state
from celery.worker.control import control_command
from redis.sentinel import SentinelConnectionPool

from mutitask_celery import celery_app, kombu_guard, memory, runtime, settings
from mutitask_celery.books.integrity import Watermarks
from mutitask_celery.books.leases import Leases
from mutitask_celery.books.transports import queues
from mutitask_celery.control import LEAVING_COMMAND, WANTED_COMMAND, Ending, Taken, channels_of
from mutitask_celery.device.isolation import Isolation
from mutitask_celery.device.leaving import Departure
from mutitask_celery.device.pacing import Pacing
from mutitask_celery.device.prefetch import PrefetchTuner
from mutitask_celery.device.time_limits import Runners
from mutitask_celery.device.wanted import WantedState
from mutitask_celery.errors import BooksLost, ConfigurationError, ExitCode, LeaseHeld

log = logging.getLogger(__name__)
FORGET_EVERY = 60.0  # seconds between looks for long-silent names to drop from the roster
NOTE_TRIES = 3  # noting a message in hand is idempotent: worth another try after a blip
DEVICE_ATTRIBUTE = "mutitask_device"  # the name under which a worker's app holds its DeviceLife


def done_key(name: str) -> str:
    """The name of a device's finished-task count among its watermarks."""
    return f"tasks finished by {name}"


def books_lost(exc: BooksLost) -> None:
    """Redis lost data: say so once, and stop this device (warm: tasks in hand finish) with
    exit code 4, as the server does."""
    if worker_state.should_stop is None:
        log.critical("mutitask: %s This device stops.", exc)
        worker_state.should_stop = ExitCode.BOOKS_LOST


def late_runners(reason: str) -> None:
    """Task functions past their time limit hold too many threads (see :mod:`.time_limits`):
    say so once, and stop this device (warm: tasks in hand finish; what it holds goes back)
    with exit code 6, so that a supervisor starts a fresh process in its place."""
    if worker_state.should_stop is None:
        log.critical(
            "mutitask: %s. This device takes no more tasks and stops (exit code %d): "
            "a fresh process should take its place.",
            reason,
            ExitCode.LATE_RUNNERS,
        )
        worker_state.should_stop = ExitCode.LATE_RUNNERS


def device_of(app: Celery) -> DeviceLife | None:
    """The device a worker of ``app`` runs in this process, or None where none started.

    Tasks and remote-control commands reach their device through the app they run for: in
    the worker's process, and in a prefork child, whose app (forked after the device began)
    holds the child's own copy.
    """
    life = getattr(app, DEVICE_ATTRIBUTE, None)
    return life if isinstance(life, DeviceLife) else None


def attach(app: Celery, life: DeviceLife) -> None:
    """Make ``life`` the device that ``app``'s tasks and remote-control commands find here."""
    setattr(app, DEVICE_ATTRIBUTE, life)


def detach(app: Celery, life: DeviceLife) -> None:
    """``life`` has ended: a worker started later in this process begins a life of its own."""
    if getattr(app, DEVICE_ATTRIBUTE, None) is life:
        delattr(app, DEVICE_ATTRIBUTE)


class DeviceLife:
    """One device in this worker process, from its worker's start to its end.

    It owns what the device keeps while it works: the operator's wish (:class:`.WantedState`),
    its copy of the rate limits (:class:`.Pacing`), who runs alone (:class:`.Isolation`), how
    much it holds (:class:`.PrefetchTuner`, once it consumes) and its task functions past
    their time limit (:class:`.Runners`).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = os.getpid()  # the worker's own process (a prefork child's copy keeps it: see in_child)
        self.wanted = WantedState()
        self.pacing = Pacing()
        self.isolation = Isolation()
        self.runners = Runners()
        self.prefetch: PrefetchTuner | None = None  # once ready: it tunes the consumer's prefetch
        self.queues: list[str] = []  # the queues it was started with, for `start` after a pause
        self.consumer: Any = None  # the worker's consumer, once ready
        self.books = Watermarks()  # the tasks it has finished, as the books said (see integrity)
        self.stopping = threading.Event()  # ends its threads
        self.told_to_leave = threading.Event()  # a stop is coming (see leaving)
        # A message may be in no device's note (one went un-noted, kombu could not record it, see
        # kombu_guard, or Redis went away while kombu took one): the server's sweep must look for it.
        self.unnoted = kombu_guard.stranded
        self.reconnects = 0  # the consumer's restarts seen so far (each follows a lost connection)
        self.next_forget = 0.0
        self.leases: Leases | None = None  # the lease of its name, from init to shutdown

    @classmethod
    def begin(cls, app: Celery, name: str) -> DeviceLife:
        """The device ``name`` starts in a worker of ``app``, before the pool and before any
        message: refuse a configuration that breaks our promises, or a queue RabbitMQ holds with
        the other type (exit code 2), then :meth:`init`."""
        try:
            celery_app.check_compatible(app)
            queues.check(app, list(app.amqp.queues.consume_from))
            memory.check_policy(runtime.books_client(), settings.mask_url(settings.current().redis_url))
        except ConfigurationError as exc:
            log.critical("mutitask: %s", exc)
            raise SystemExit(ExitCode.USAGE) from None
        life = cls(name)
        life.init()
        return life

    def init(self) -> None:
        """Before consuming: take the lease of the name, then give back what this device's
        previous life held when it died (only the name's holder may: another live process
        under the name holds those messages)."""
        if not self.take_name():
            return
        try:
            restored = runtime.recovery().device_started(self.name)
            if restored:
                log.warning("%s restarted: took back %d message(s) its previous run held", self.name, restored)
        except redis.RedisError as exc:
            log.warning("%s could not check what its previous run held: %s", self.name, exc)

    def take_name(self) -> bool:
        """Take the lease of the name: True once held. A live process under the name already:
        one critical line naming it, and ``SystemExit(5)`` before anything is touched. Redis
        not answering yet: False, and the lease thread takes the lease once it does."""
        name = self.name
        what = f"the device name {name}"
        advice = (
            f"One process per device name: stop the other one first (`mutitask stop {name}`), or start "
            "this one under another name (another deviceID, or celery worker -n)."
        )
        try:
            self.leases = Leases(
                runtime.books_client(), settings.current().dead_after, on_lost=self.name_lost, keys=runtime.keys()
            )
            self.leases.take(runtime.keys().device_lease(name), what, advice)
            return True
        except LeaseHeld as exc:
            log.critical("mutitask: %s", exc)
            raise SystemExit(ExitCode.IN_USE) from None
        except redis.RedisError as exc:
            log.warning("%s could not take the lease of its name yet (%s): it will once Redis answers", name, exc)
            if self.leases is not None:
                self.leases.want(runtime.keys().device_lease(name), what, advice)
            return False

    def name_lost(self, exc: LeaseHeld) -> None:
        """Another process works under this device's name (it took the name while this one was
        frozen or cut off past its lease): say so once, and stop (warm) with exit code 5."""
        if worker_state.should_stop is None:
            log.critical("mutitask: %s", exc)
            worker_state.should_stop = ExitCode.IN_USE

    def holds_name(self) -> bool:
        return self.leases is not None and self.leases.get(runtime.keys().device_lease(self.name)) is not None

    def ready(self, consumer: Any) -> None:
        """Consuming: enter the roster, stop consuming if the operator wants it paused, start the threads."""
        name = self.name
        queues = [q.name for q in consumer.task_consumer.queues]
        self.queues[:] = queues
        self.consumer = consumer
        self.reconnects = int(getattr(consumer, "restart_count", 0) or 0)
        slots = int(getattr(getattr(consumer, "pool", None), "num_processes", 1) or 1)
        qos = getattr(consumer, "qos", None)
        self.prefetch = PrefetchTuner(qos, slots) if qos is not None else None
        self.isolation.slots = slots
        try:
            devices = runtime.devices()
            devices.register(name, channels_of(queues), socket.gethostname(), os.getpid())
            paused = devices.is_paused(name)
            self.wanted.install(name, paused)
            if paused:
                for queue in queues:
                    consumer.cancel_task_queue(queue)
                log.warning("%s starts paused (the operator paused it); `start` resumes it", name)
        except redis.RedisError as exc:
            log.warning("%s could not enter the device roster: %s", name, exc)
        self.stopping.clear()
        self.told_to_leave.clear()
        Departure(self, settings.current().shutdown_grace).install()  # SIGTERM, SIGINT: see leaving
        self.next_forget = time.monotonic() + FORGET_EVERY
        for thread_name, duty, what in (
            ("mutitask-heartbeat", self.beat, f"heartbeat of {name}"),
            ("mutitask-housekeeping", self.housekeeping, f"housekeeping of {name}"),
        ):
            threading.Thread(
                target=self.every, args=(settings.HEARTBEAT, duty, what), name=thread_name, daemon=True
            ).start()

    def received(self, request: Any) -> None:
        """Note the message in this device's hands, so a reaper can give it back if the device dies."""
        message = getattr(request, "message", None)
        tag = getattr(message, "delivery_tag", None)
        if tag is None or not runtime.transport().notes_holds:
            return
        try:
            channel, items = request.args[0], request.args[1]
            taken = Taken(request.id, str(tag), len(items), int(channel))
        except (IndexError, TypeError, ValueError):
            return  # not one of our messages
        for attempt in range(1, NOTE_TRIES + 1):
            try:
                # Taking a message proves the device lives: said in the same step, or a device back
                # from a network cut (its last heartbeat old) would have it taken back under it.
                # Written now, its reply read when the next message is noted: the worker's loop does
                # not wait a round trip per message, and the note reaches Redis even if the device
                # dies the next instant.
                runtime.devices().heard(request.hostname, in_hand=taken, wait=False)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt == NOTE_TRIES:
                    log.warning("could not note message %s in hand: %s", request.id, exc)
                    self.unnoted.set()
            except redis.RedisError as exc:
                log.warning("could not note message %s in hand: %s", request.id, exc)
                self.unnoted.set()
                return

    def every(self, period: float, duty: Callable[[], None], what: str) -> None:
        """Run ``duty`` every ``period`` seconds until the worker stops; no error ends the loop."""
        while not self.stopping.wait(period):
            try:
                duty()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                runtime.recovery().lost_touch()  # no device could beat meanwhile: no silence is a death yet
                log.warning("%s failed: %s", what, exc)
            except redis.RedisError as exc:
                log.warning("%s failed: %s", what, exc)
            except BooksLost as exc:
                books_lost(exc)
                return
            except Exception:  # a bug must not silently stop the heartbeat: say it, go on
                log.exception("%s failed", what)

    def beat(self) -> None:
        """One heartbeat, and the books' count of this device's finished tasks checked.

        After an outage (the consumer reconnected, or a heartbeat failed) it also calls for
        the server's sweep: kombu may have popped a message as Redis went away and never
        recorded it, and nothing else would find it while every device lives.
        """
        name = self.name
        devices = runtime.devices()
        reconnects = int(getattr(self.consumer, "restart_count", 0) or 0)
        if reconnects > self.reconnects:
            self.reconnects = reconnects
            self.unnoted.set()
        marks = self.books.mark()
        try:
            done = devices.heard(name)  # first: a full Redis takes it (see heard.lua), not what follows
        except (redis.ConnectionError, redis.TimeoutError):
            self.unnoted.set()
            raise
        self.follow_master(devices.client)
        try:
            if self.unnoted.is_set():
                runtime.recovery().look_for_strays()  # not a death, but the same crack: a message in no device's note
                self.unnoted.clear()
            runtime.recovery().release_dropped(name, self.holding())
            if self.leaving():  # a warm shutdown, however asked: status shows it stopping, not offline
                devices.ending(name, Ending.STOPPING)
        except redis.OutOfMemoryError:
            pass  # said when Redis filled up; done at the next beat
        if done < 0:  # the roster had forgotten this device: its counts start afresh
            self.books.forget(done_key(name))
            return
        self.books.check({done_key(name): done}, marks, devices.client)

    def follow_master(self, client: redis.Redis) -> None:
        """Behind Sentinel, at every beat: move the consumer to the master the sentinels name
        when it is still on another (see :func:`.kombu_guard.leave_old_master`: a frozen old
        master would hold it until it woke and was demoted). One question to a sentinel."""
        pool = client.connection_pool
        connection = getattr(self.consumer, "connection", None)
        if not isinstance(pool, SentinelConnectionPool) or connection is None:
            return
        master = pool.get_master_address()  # type: ignore[no-untyped-call]  # redis-py's, untyped
        if kombu_guard.leave_old_master(connection, master):
            log.warning(
                "%s: the broker connection was still to an old master: reconnecting to %s:%s", self.name, *master
            )

    @staticmethod
    def holding() -> set[str]:
        """The message ids this worker holds: reserved (waiting for a slot) or running."""
        return {r.id for r in (*worker_state.reserved_requests, *worker_state.active_requests) if r.id}

    def housekeeping(self) -> None:
        """The duties other than the heartbeat (see the module docstring)."""
        name = self.name
        devices = runtime.devices()
        was = self.wanted.paused
        self.wanted.refresh(partial(devices.is_paused, name))  # a change made while unreachable
        if self.wanted.paused is not None and self.wanted.paused != was and self.consumer is not None:
            log.warning(
                "%s is wanted %s (changed while it was out of reach)",
                name,
                "paused" if self.wanted.paused else "running",
            )
            self.consume(not self.wanted.paused)
        recovery = runtime.recovery()
        recovery.reap()
        if time.monotonic() >= self.next_forget:
            self.next_forget = time.monotonic() + FORGET_EVERY
            recovery.forget_silent()
        ledger = runtime.ledger()
        for channel in channels_of(self.queues):  # reloaded tasks go out even when no server runs
            ledger.feed_backlog(channel)

    def consume(self, resume: bool) -> None:
        """Stop or resume consuming this device's queues, in the worker's own loop (nothing to
        do before it is ready: it reads its wanted state then).

        A paused device that kept consuming would fetch and hand back messages in a loop.
        """
        consumer = self.consumer
        for queue in self.queues:
            if resume:
                consumer.call_soon(consumer.add_task_queue, queue)
            else:
                consumer.call_soon(consumer.cancel_task_queue, queue)

    def in_child(self) -> bool:
        """Whether this runs in a prefork child (its copy of the device, made at the fork), where
        the worker's own state (told to leave, what it holds) is not seen."""
        return os.getpid() != self.pid

    def leaving(self) -> bool:
        """The worker is stopping (a warm shutdown asked by a signal, or announced by
        :meth:`.Devices.stop` before its remote-control shutdown, or its end): a task still
        waiting to start hands its message back instead of waiting."""
        asked = worker_state.should_stop is not None or worker_state.should_terminate is not None
        return asked or self.told_to_leave.is_set() or self.stopping.is_set()

    def shutdown(self) -> None:
        """The worker has stopped: its tasks are done and kombu has put back what it held, so
        its notes of those are stale; they go (a note of a message kombu could not put back,
        Redis being away, stays for a reaper). A device that does not hold its name's lease
        (refused, or another process took the name) leaves the name's books alone."""
        self.stopping.set()
        self.wanted.forget()
        try:
            if self.holds_name():
                dropped = runtime.recovery().device_stopped(self.name)
                if dropped:
                    log.info("%s handed back %d message(s) it held", self.name, dropped)
                runtime.devices().heard(self.name)
                runtime.devices().ending(self.name, Ending.STOPPED)  # what `mutitask stop` waits for
        except redis.RedisError:
            pass
        if self.leases is not None:
            self.leases.release()


class DeviceStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery's, untyped
    """The device in a Celery worker's consumer, on every pool (the consumer lives in the
    worker's main process; a prefork child only runs tasks).

    Created with the consumer, before the pool starts and before anything is consumed, it
    begins the device (:meth:`DeviceLife.begin`) and attaches it to the app. Started once the
    consumer has its task queues, it makes the device ready (:meth:`DeviceLife.ready`); a
    consumer restarted after a lost connection starts nothing again.

    Two moments have no bootstep, so the step connects Celery's signals for them, for its own
    consumer and worker only (``sender=``): a message received (``task_received``), and the
    worker's end (``worker_shutdown``), which comes after the pool has finished its tasks and
    the connection has closed (kombu has put back what it held). A consumer step's own
    ``shutdown`` runs before that close, while kombu still holds those messages.
    """

    label = "mutitask device"
    requires = ("celery.worker.consumer.tasks:Tasks",)  # ready needs the task queues and the QoS

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.life: DeviceLife | None = None
        self.consumer = c

    def create(self, c: Any) -> None:
        life = self.life = DeviceLife.begin(c.app, c.hostname)
        attach(c.app, life)
        task_received.connect(self.on_received, sender=c, weak=False)
        worker_shutdown.connect(self.on_shutdown, sender=c.controller, weak=False)

    def start(self, c: Any) -> None:
        if self.life is not None and self.life.consumer is None:
            self.life.ready(c)

    def stop(self, c: Any) -> None:
        """A lost connection, or the worker stopping: the device's threads go on (its end
        comes with ``worker_shutdown``)."""

    def on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is not None and self.life is not None:
            self.life.received(request)

    def on_shutdown(self, sender: Any = None, **_: Any) -> None:
        life, self.life = self.life, None
        task_received.disconnect(self.on_received, sender=self.consumer)
        worker_shutdown.disconnect(self.on_shutdown, sender=sender)
        if life is not None:
            life.shutdown()
            detach(self.consumer.app, life)


@control_command(name=WANTED_COMMAND, args=[("wanted_state", str)], signature="<running|paused>")  # type: ignore[untyped-decorator]
def tell_wanted(state: Any, wanted_state: str = "running", **_: Any) -> dict[str, str]:
    """Pause or start this device: no task starts once this has replied (see :mod:`.wanted`)."""
    paused = wanted_state == "paused"
    life = device_of(state.consumer.app)
    if life is not None:
        life.wanted.told(paused)
        life.consume(not paused)
    return {"ok": "paused" if paused else "running"}


@control_command(name=LEAVING_COMMAND)  # type: ignore[untyped-decorator]
def tell_leaving(state: Any, **_: Any) -> dict[str, str]:
    """A warm shutdown follows: tasks waiting for a rate limit hand their messages back now,
    so the shutdown waits only for tasks that run (see :meth:`DeviceLife.leaving`)."""
    life = device_of(state.consumer.app)
    if life is not None:
        life.told_to_leave.set()
    try:
        runtime.devices().ending(state.consumer.hostname, Ending.STOPPING)
    except redis.RedisError:
        pass  # the next heartbeat says it
    return {"ok": "leaving"}
