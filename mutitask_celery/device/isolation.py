"""Suspects run alone: a task that was running when its device died is not run beside others.

When a device of many slots dies (threads, ``concurrency=N``; one process for all its
tasks), every task it had started is charged a death, the poison task and its innocent
neighbours alike, and each goes back flagged *suspect*. A device that takes a suspect
runs it with no other task of this process running: it waits for the running ones to
finish and holds new ones back until the suspect's outcome is in the books (its start
mark stands until then: a poison task let in a moment earlier would charge it a death).
So if the suspect kills the process again, it is the only task charged, and the innocent
ones, run beside nobody, succeed.

A prefork child, a solo worker or a device of one slot runs one task at a time anyway:
there every task runs alone, and a death is always the running task's own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from billiard.process import current_process


class Isolation:
    """A readers-writer lock: ordinary tasks share the device, a suspect takes it alone.

    A suspect waiting for the device holds back ordinary tasks that have not started yet,
    so a steady stream of short tasks cannot keep it waiting for ever.
    """

    def __init__(self) -> None:
        self.slots = 0  # tasks this process runs at once (set when the worker is ready; 0: not known)
        self._cond = threading.Condition()
        self._running = 0  # ordinary tasks running now
        self._alone = False  # a suspect is running
        self._waiting = 0  # suspects waiting for the device

    def runs_one_at_a_time(self) -> bool:
        """True in a prefork child, a solo worker or a one-slot threads pool."""
        return self.slots == 1 or current_process().name != "MainProcess"

    @contextmanager
    def slot(self, alone: bool) -> Iterator[None]:
        """Hold the device for one message: shared, or ``alone`` for a suspect."""
        with self._cond:
            if alone:
                self._waiting += 1
                self._cond.wait_for(lambda: not self._alone and self._running == 0)
                self._waiting -= 1
                self._alone = True
            else:
                self._cond.wait_for(lambda: not self._alone and self._waiting == 0)
                self._running += 1
        try:
            yield
        finally:
            with self._cond:
                if alone:
                    self._alone = False
                else:
                    self._running -= 1
                self._cond.notify_all()
