"""A device told to leave (SIGTERM or SIGINT) leaves cleanly, within a grace period.

Platforms stop processes all day: Kubernetes scaling in, a spot instance reclaimed, systemd
restarting a unit. Each sends SIGTERM and, after a grace period (30 s on Kubernetes), SIGKILL.
Celery's own warm shutdown waits for every task it holds to finish, however long: the SIGKILL
then lands mid-task, the message waits for the death detection, and the death is charged to
the task (three scale-ins bury a healthy task as 'worker lost'). So a device, on the first
SIGTERM or SIGINT:

1. stops taking work at once (Celery's warm shutdown, which it starts);
2. hands back, at once, the messages it holds but has not started (they start elsewhere
   within a second, not after the death detection), and keeps doing so for any it took a
   moment before the signal;
3. lets its running tasks finish within ``MUTITASK_SHUTDOWN_GRACE`` seconds (25: below
   Kubernetes' 30) — then the worker ends as usual, exit code 0;
4. when the grace runs out, or at a second SIGTERM or SIGINT, hands back the running tasks'
   messages too (each task back alone, no death charged: the device left, it did not die;
   a result it was saving is buried as 'worker lost while saving', as it may have been saved),
   and exits at once with :attr:`.ExitCode.HANDED_BACK`.

The hand-backs are the reaper's own step (``lua/recover.lua``) done by the device itself, with
no death (``leaving``). A message not started goes back only if it still has not started, in
the same atomic step; a task thread that took it first runs it. A prefork child, which does not
see this process's state, starts a message only while the device still notes it
(``lua/start.lua``, ``noted_only``), so a message handed back as the child took it runs once.

On RabbitMQ (no notes: the broker redelivers by itself) the held messages go back as the
threads reach them, and the running ones when the connection closes at the exit; their start
marks are dropped first, so their redelivery counts no death either.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Protocol

import redis
from celery.worker import state as worker_state

from mutitask_celery import runtime
from mutitask_celery.books.leases import Leases
from mutitask_celery.control import Ending
from mutitask_celery.errors import ExitCode

log = logging.getLogger(__name__)
LOOK_EVERY = 0.2  # seconds between two looks for messages held but not started, while leaving
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Leaver(Protocol):
    """What of a device (:class:`.DeviceLife`) its departure uses."""

    name: str
    told_to_leave: threading.Event  # no task starts once set
    stopping: threading.Event  # set as the worker ends
    leases: Leases | None
    consumer: Any  # Celery's consumer, once ready (its pool)


class Departure:
    """How one device leaves: :meth:`install` once its worker consumes (in the main thread,
    where signal handlers live); the signals then do the rest."""

    def __init__(self, life: Leaver, grace: float) -> None:
        self.life = life
        self.grace = grace
        self.told = threading.Event()  # the first signal came
        self.now = threading.Event()  # a second signal came: leave at once
        self.signals = 0

    def install(self) -> bool:
        """Take SIGTERM and SIGINT over from Celery's handlers; False where this cannot be (not
        the main thread: a task run outside a worker, in tests)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in SIGNALS:
            signal.signal(sig, self.on_signal)
        threading.Thread(target=self._leave, name="mutitask-leaving", daemon=True).start()
        return True

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The handler: flags only (it interrupts the main thread anywhere, even inside a lock
        the logging module holds), the leaving thread does the work."""
        self.signals += 1
        if self.signals > 1:
            self.now.set()
            return
        self.life.told_to_leave.set()  # from now on no task starts here (see tasks._admit)
        if worker_state.should_stop is None:  # Celery's warm shutdown: it stops consuming
            worker_state.should_stop = ExitCode.OK
        self.told.set()

    def _leave(self) -> None:
        self.told.wait()
        life = self.life
        log.warning(
            "%s is leaving: it takes no new task and hands back what it has not started; its running "
            "tasks have %g s to finish (MUTITASK_SHUTDOWN_GRACE), then they go back too. Signal again to "
            "leave at once.",
            life.name,
            self.grace,
        )
        deadline = time.monotonic() + self.grace
        self._give_back_waiting()
        while not self.now.wait(LOOK_EVERY):
            if life.stopping.is_set():
                return  # every task finished: the worker ends as usual (exit code 0)
            if time.monotonic() >= deadline:
                break
            self._give_back_waiting()
        if life.stopping.is_set():
            return
        self._give_back_running()

    def _give_back_waiting(self) -> None:
        """Every message held but not started goes back now (those running are kept)."""
        running = {r.id for r in worker_state.active_requests if r.id}
        try:
            handed = runtime.recovery().hand_back(self.life.name, keep=running, started=False)
        except redis.RedisError as exc:
            log.warning("%s could not hand back what it holds yet: %s", self.life.name, exc)
            return
        if handed:
            log.warning("%s handed back %d message(s) it had not started", self.life.name, handed)

    def _give_back_running(self) -> None:
        """The grace ran out (or a second signal came): everything goes back, and the process
        ends now, before the platform's SIGKILL."""
        life = self.life
        running = [r for r in worker_state.active_requests if r.id]
        handed = 0
        try:
            handed = runtime.recovery().hand_back(life.name, keep=(), started=True)
            if not runtime.transport().notes_holds:  # RabbitMQ requeues them as the connection closes
                ledger = runtime.ledger()
                for request in running:
                    ledger.give_back(life.name, _channel_of(request), str(request.id))
        except redis.RedisError as exc:
            log.warning("%s could not hand back its running tasks (%s): a reaper will", life.name, exc)
        log.warning(
            "%s: %s; handed back %d message(s) of %d running task message(s), uncharged: it exits now (code %d)",
            life.name,
            "told twice to leave" if self.now.is_set() else f"its shutdown grace ({self.grace:g} s) ran out",
            handed,
            len(running),
            ExitCode.HANDED_BACK,
        )
        _stop_pool_children(life)
        life.stopping.set()
        try:
            runtime.devices().ending(life.name, Ending.STOPPED)
        except redis.RedisError:
            pass  # a silent device with nothing in hand: the roster forgets it in time
        if life.leases is not None:
            life.leases.release()
        logging.shutdown()
        os._exit(ExitCode.HANDED_BACK)


def _channel_of(request: Any) -> int:
    """The channel a request's message belongs to (its first argument); 0 if not one of ours."""
    try:
        return int(request.args[0])
    except (AttributeError, IndexError, TypeError, ValueError):
        return 0


def _stop_pool_children(life: Leaver) -> None:
    """A prefork pool's children would run on after this process exits, and record outcomes of
    tasks handed back: they go first (SIGKILL; the messages are back already)."""
    pool = getattr(life.consumer, "pool", None)
    try:
        pids = [int(p) for p in (getattr(pool, "info", None) or {}).get("processes", [])]
    except (TypeError, ValueError):
        return
    for pid in pids:
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # gone already
