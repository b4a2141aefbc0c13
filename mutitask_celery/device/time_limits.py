"""Time limits that hold on every pool: a task function past its limit is given up on.

Celery's own limits need the prefork pool (a signal, or killing the child), and a killed
child reads as a death here (a poison task). Our devices run threads by default, and a
thread cannot be killed. So the task function runs on a *runner* thread of the worker
thread's own, and the worker thread waits for it at most the limit:

- **In time**: the result comes back to the worker thread, which saves it as always.
- **Too late**: the worker thread records the outcome ``timed out after N s`` (or retries,
  as after an exception) and takes the next task at once: the device's slot is free. The
  runner is abandoned: Python cannot stop it, so it runs on, and whatever the function
  returns or raises at last is dropped (logged, never saved, never a second record:
  the outcome was recorded once, by the worker thread). The next task gets a new runner.

The same holds on the threads, prefork (inside the child) and solo pools. An abandoned
runner still holds what the function holds (a thread, memory, a socket) until it returns; a
device counts them (:meth:`Runners.abandoned`) and says so in its log.

**Too many late runners.** Each abandoned runner keeps a thread, and a process can start only
so many: past that, every task would fail with "can't start new thread", healthy ones too.
So a process leaves at most ``MUTITASK_MAX_LATE_RUNNERS`` behind: :meth:`Runners.check_room`, asked
before a message starts, raises :class:`.TooManyLateRunners` at the cap, and so does a call
whose runner thread cannot start at all. Neither is the task's fault: the device hands the
message back untouched and stops, for a fresh process (see ``tasks``). A message already
started finishes first: its later tasks still get runners, so the cap can be passed by the
tasks of the messages in hand, never more.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mutitask_celery import settings
from mutitask_celery.errors import TooManyLateRunners

log = logging.getLogger(__name__)


class TimedOut(Exception):
    """The task function ran past its limit (the outcome's reason is this message)."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"timed out after {limit:g} s")
        self.limit = limit


@dataclass
class _Call:
    fn: Callable[[Any], Any]
    arg: Any
    label: str
    # The worker thread's context (its current span, as tracing made it): the call runs in it.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class Runners:
    """The runner threads of one device's process, and how many of them it abandoned.

    Each worker thread has a runner of its own, kept in a thread-local (the one state that
    is per thread, not per device: a runner serves the worker thread that made it). The
    count of abandoned runners is per process, as the cap is: a prefork child has its own
    (its copy of the device's), and so has a threads device (one process).
    """

    def __init__(self) -> None:
        self._mine = threading.local()  # .runner: this worker thread's runner, once it has one
        self._lock = threading.Lock()
        self._abandoned = 0

    def call_with_limit(self, fn: Callable[[Any], Any], arg: Any, limit: float | None, label: str = "") -> Any:
        """``fn(arg)``, or :class:`TimedOut` once ``limit`` seconds pass (None: no limit, run here).

        Raises :class:`.TooManyLateRunners` when no thread can be started for it."""
        if limit is None:
            return fn(arg)
        runner: _Runner | None = getattr(self._mine, "runner", None)
        if runner is None:
            runner = self._mine.runner = _Runner(self)
        call = _Call(fn, arg, label)
        if not runner.run(call, limit):
            runner.abandon()
            self._mine.runner = None
            log.warning(
                "task %s timed out after %g s: its slot takes the next task (%d task function(s) still running late)",
                label,
                limit,
                self.abandoned(),
            )
            raise TimedOut(limit)
        if call.error is not None:
            raise call.error
        return call.value

    def abandoned(self) -> int:
        """Task functions of this process still running past their limit."""
        with self._lock:
            return self._abandoned

    def check_room(self) -> None:
        """Raise :class:`.TooManyLateRunners` when this process already leaves
        ``MUTITASK_MAX_LATE_RUNNERS`` task functions running past their limit: asked before a
        message starts, so that one goes back untouched rather than fail for want of a thread."""
        late = self.abandoned()
        if not late:
            return
        cap = settings.current().max_late_runners
        if cap is not None and late >= cap:
            raise TooManyLateRunners(
                f"{late} task function(s) still run past their time limit in this process "
                f"(MUTITASK_MAX_LATE_RUNNERS is {cap})"
            )

    def _count(self, change: int) -> None:
        """A runner was abandoned (+1), or an abandoned one's call ended at last (-1)."""
        with self._lock:
            self._abandoned += change


class _Runner:
    """One daemon thread running calls one at a time for one worker thread."""

    def __init__(self, runners: Runners) -> None:
        self._runners = runners
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self.abandoned = False
        self._thread = threading.Thread(target=self._loop, name="mutitask-task-runner", daemon=True)
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread": the process has no thread left to give
            raise TooManyLateRunners(
                f"cannot start a thread for the next task function ({exc}); "
                f"{runners.abandoned()} task function(s) still run past their time limit in this process"
            ) from exc

    def _loop(self) -> None:
        while True:
            call = self._calls.get()
            try:
                call.value = call.context.run(call.fn, call.arg)
            except BaseException as exc:  # handed to the worker thread, which judges it
                call.error = exc
            call.done.set()
            if self.abandoned:
                late = "raised" if call.error is not None else "returned"
                log.warning("task %s %s after its time limit: dropped, its outcome was recorded", call.label, late)
                self._runners._count(-1)
                return

    def run(self, call: _Call, limit: float) -> bool:
        """True when ``call`` finished within ``limit`` seconds."""
        self._calls.put(call)
        return call.done.wait(limit)

    def abandon(self) -> None:
        self.abandoned = True
        self._runners._count(+1)
