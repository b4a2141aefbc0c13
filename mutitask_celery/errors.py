"""Exceptions raised by mutitask_celery.

Every error the package raises on purpose derives from one root, so a caller
can catch them all; each also derives from the built-in it refines, so code
written for the original (catching ``TypeError`` or ``ValueError``) still works::

    MutitaskError
     ├── ConfigurationError (ValueError)   a setting or argument is invalid
     ├── InvalidTasksError (TypeError)     run() was given something that is not tasks
     ├── FunctionError (TypeError)         a task/save function is not usable
     ├── EncodingError (TypeError)         a value JSON cannot carry
     ├── BrokerUnavailable (ConnectionError)  Redis/broker cannot be reached
     ├── BooksLost (RuntimeError)          Redis came back without data the books held
     ├── TooManyLateRunners (RuntimeError) task functions past their time limit hold the threads
     ├── LeaseHeld (RuntimeError)          another live process is this device, or serves this channel/run
     │    └── LeaseLost                    ... and took it over while this one was out of reach
     ├── RedisOutOfMemory (RuntimeError)   Redis stayed full (maxmemory) past the wait
     └── RecordNotFound (KeyError)         no dead-letter record with that id

and :class:`ExitCode`, the exit codes of the package's processes.
"""

from __future__ import annotations

from enum import IntEnum


class MutitaskError(Exception):
    """Root of every error mutitask_celery raises on purpose."""


class ConfigurationError(MutitaskError, ValueError):
    """A setting or an argument has a value that cannot work."""


class InvalidTasksError(MutitaskError, TypeError):
    """``Terminal.run`` was given something other than iterators of tasks."""


class FunctionError(MutitaskError, TypeError):
    """A task or save function is not a callable of one argument."""


class EncodingError(MutitaskError, TypeError):
    """A task or result holds a value that cannot travel as JSON."""


class BrokerUnavailable(MutitaskError, ConnectionError):
    """Redis (or the broker) does not answer at the configured URL."""


class BooksLost(MutitaskError, RuntimeError):
    """Redis came back with counters lower than this process had seen: it lost data
    (a restart without its append-only file, or with a part of it refused)."""


class TooManyLateRunners(MutitaskError, RuntimeError):
    """Task functions past their time limit still run on so many threads of this process
    (``MUTITASK_MAX_LATE_RUNNERS``, or no thread can start at all) that the next task gets
    none: not the task's fault, so no task fails for it; the device hands its message back
    and stops (exit code 6) for a fresh process to take its place."""


class LeaseHeld(MutitaskError, RuntimeError):
    """Another live process holds what this one needs for itself: a device's name, or a
    channel or run a server feeds (one process per device name, one server per channel and
    per run; see :mod:`.books.leases`). The message names the holder and what to do."""


class LeaseLost(LeaseHeld):
    """This process held the lease, and another one took it after it had expired (this one
    was frozen, or cut off, for longer than its lease lasts): it must stop, not work beside
    the new holder."""


class RedisOutOfMemory(MutitaskError, RuntimeError):
    """Redis refused writes for longer than a run waits: it reached ``maxmemory`` (with the
    ``noeviction`` policy mutitask needs) and nothing freed memory meanwhile."""


class RunCancelled(MutitaskError, RuntimeError):
    """The run ended because one of its channels was cancelled (``mutitask cancel``): its
    tasks that had not started were recorded as cancelled, not run (exit code 9)."""


class RecordNotFound(MutitaskError, KeyError):
    """No dead-letter record has the given id."""


class ExitCode(IntEnum):
    """How every process of the package ends: the ``mutitask`` command, the demo, a legacy
    server or device script, a Celery worker stopped by the package. One set, so a unit
    file or a shell script reads the same code the same way."""

    OK = 0
    # Not done: a record or device asked for does not exist (or no device answered), or the
    # demo could not show what it shows. One name a code: a log of ExitCode(1) says this one.
    FAILED = 1
    USAGE = 2  # bad usage or configuration (ConfigurationError)
    UNREACHABLE = 3  # Redis or the broker cannot be reached (BrokerUnavailable)
    BOOKS_LOST = 4  # Redis lost data the books held (BooksLost): see the README
    IN_USE = 5  # another live process is this device, or serves this channel or run (LeaseHeld)
    LATE_RUNNERS = 6  # a device stopped for a fresh process: too many task functions past their time limit
    OUT_OF_MEMORY = 7  # Redis stayed full (maxmemory reached) past the wait (RedisOutOfMemory)
    # A device told to leave (SIGTERM, SIGINT) handed its running tasks back and exited: its
    # shutdown grace ran out, or it was told twice. Nothing is lost; the tasks run elsewhere.
    HANDED_BACK = 8
    CANCELLED = 9  # a server's run ended cancelled (`mutitask cancel`): its unstarted tasks never ran
    STILL_STOPPING = 75  # `mutitask stop`: a device asked to stop still runs a task (sysexits' EX_TEMPFAIL: ask again)
