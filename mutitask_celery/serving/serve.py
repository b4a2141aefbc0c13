"""A whole server run: validate the tasks, feed the channels, offer the console.

With a terminal on standard input the operator's console runs in the
foreground and the producer in a thread; otherwise the producer runs in the
foreground and any piped lines are executed as console commands as they
arrive. Either way the run returns its :class:`RunSummary` once every task has
finished (or the operator typed ``stop``).

One server per run and per channel: before it changes or publishes anything, a server
takes the lease of its run (when it has a name) and of every channel it feeds; a channel
or run another live server holds is refused with :class:`.LeaseHeld` naming that server
(exit code 5 for a script), see :mod:`.books.leases`.
"""

from __future__ import annotations

import contextvars
import logging
import operator
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import redis

from mutitask_celery import celery_app, logs, memory, runtime, settings, tracing
from mutitask_celery.books.leases import Leases
from mutitask_celery.books.rate_limits import check_rates
from mutitask_celery.books.runs import RunRecord, check_run_name
from mutitask_celery.connection import check_redis
from mutitask_celery.control import Devices, DeviceState
from mutitask_celery.errors import InvalidTasksError, LeaseHeld, RedisOutOfMemory
from mutitask_celery.keys import DEFAULT, Keys
from mutitask_celery.serving import producer, progress
from mutitask_celery.serving.console import PROMPT, Console
from mutitask_celery.serving.producer import FREE_MEMORY as FREE
from mutitask_celery.serving.producer import Producer, RunSummary

log = logging.getLogger(__name__)


def as_sources(tasks: Any) -> list[Iterator[Any]]:
    """One iterator per channel, or :class:`InvalidTasksError` before anything is published."""
    if isinstance(tasks, Iterator):
        return [tasks]
    if isinstance(tasks, (list, tuple)):
        if not tasks:
            raise InvalidTasksError("tasks is empty: give a generator, or a list of generators (one per channel)")
        sources = []
        for n, source in enumerate(tasks, start=1):
            if isinstance(source, (str, bytes, dict)) or not hasattr(source, "__iter__"):
                raise InvalidTasksError(
                    f"channel {n}: expected a generator or iterator of tasks, got {type(source).__name__}"
                )
            sources.append(iter(source))
        return sources
    raise InvalidTasksError(
        f"tasks must be a generator/iterator or a list of them (one per channel), got {type(tasks).__name__}"
    )


def totals_of(sources: list[Iterator[Any]]) -> dict[int, int | None]:
    """Each channel's number of tasks where its fresh iterator knows it (a list's, a range's).

    A generator's length is unknown until it ends; the progress display then shows ``?``.
    """
    hints = [operator.length_hint(source, -1) for source in sources]
    return {n: (hint if hint >= 0 else None) for n, hint in enumerate(hints, start=1)}


DEFAULT_RUN = "default"  # the run's name in the books when resume=True names none


def serve(
    tasks: Any,
    channel_size: int,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    expected_devices: int | None = None,
    start_paused: bool = False,
    monitor_wait: float = 5.0,
    rate_limits: dict[int, float] | None = None,
    resume: bool = False,
    run_name: str | None = None,
) -> RunSummary:
    """Run ``tasks`` to the end; see the module docstring.

    ``expected_devices`` enters the roster (device1..deviceN show offline until
    they come); ``start_paused`` pauses every device before the first task, as
    the original did, until the operator types ``start_all``; ``rate_limits``
    (channel -> tasks a second) are set before the first task is published;
    ``resume``/``run_name``: keep a record of the run, and go on from an unfinished one
    (see :mod:`.books.runs`).
    """
    sources = as_sources(tasks)
    limits = check_rates(rate_limits or {}, len(sources))
    name = check_run_name(run_name or DEFAULT_RUN) if resume or run_name is not None else None
    options = _Options(channel_size, expected_devices, start_paused, monitor_wait, limits, resume, name)
    with tracing.run_span(len(sources), channel_size, name) as span:  # its context travels in every message
        summary = _serve(sources, options, sys.stdin if stdin is None else stdin, sys.stdout if out is None else out)
        span.summary(summary.published, summary.succeeded, summary.failed, summary.duplicates)
    return summary


@dataclass(frozen=True)
class _Options:
    """What :func:`serve` was asked, checked."""

    channel_size: int
    expected_devices: int | None
    start_paused: bool
    monitor_wait: float
    rate_limits: dict[int, float]
    resume: bool
    run_name: str | None


def _serve(sources: list[Iterator[Any]], options: _Options, stdin: TextIO, out: TextIO) -> RunSummary:
    """:func:`serve`'s run, once its arguments are checked."""
    totals = totals_of(sources)
    conf = runtime.reset(settings.current())
    celery_app.check_compatible(celery_app.app)
    check_redis(conf.redis_url)
    memory.check_policy(runtime.books_client(conf), settings.mask_url(conf.redis_url))  # an evicting Redis loses tasks
    runtime.transport().check(range(1, len(sources) + 1))  # RabbitMQ unreachable, or a queue of the other type
    name, monitor_wait = options.run_name, options.monitor_wait
    names = runtime.keys(conf)
    with take_leases(runtime.books_client(conf), len(sources), name, conf.dead_after, names) as leases:
        devices = Devices(runtime.books_client(conf), timeout=monitor_wait, flower_url=conf.flower_url, keys=names)
        for channel, rate in options.rate_limits.items():
            runtime.rate_limits().set(channel, rate)
            log.info("channel %s: at most %g task(s) a second, all devices together", channel, rate)
        if options.expected_devices is not None:
            devices.set_expected(options.expected_devices)
        if options.start_paused:
            devices.pause(None)
            log.warning("devices start paused: type start_all to let them work")
        else:
            _warn_paused(devices)
        record = RunRecord(runtime.books_client(conf), name, names) if name is not None else None
        producer = Producer(
            runtime.ledger(),
            runtime.recovery(),
            runtime.store(),
            options.channel_size,
            record=record,
            resume=options.resume,
            leases=leases,
        )
        console = Console(producer, runtime.store(), devices, out, rates=runtime.rate_limits())
        logs.ensure_visible()
        display = progress.choose(conf.progress, out, len(sources), conf.progress_every)
        reporter = None
        if display is not None:
            reporter = progress.Reporter(display, progress.Meter(totals), producer.snapshot).start()
        interactive = _isatty(stdin)
        try:
            if interactive:
                summary = _run_interactive(producer, console, sources, stdin, out)
            else:
                reader = threading.Thread(  # in the run's context: what its commands publish carries it
                    target=contextvars.copy_context().run,
                    args=(_read_commands, console, stdin, producer.finished),
                    name="mutitask-console",
                    daemon=True,
                )
                reader.start()
                summary = producer.run(sources)
                reader.join()  # piped commands already written still run before the run returns
        finally:
            if reporter is not None:
                reporter.stop()
    for line in str(summary).splitlines():
        console.say(line)
    return summary


def take_leases(
    client: redis.Redis, channels: int, run: str | None, ttl: float | None, names: Keys = DEFAULT
) -> Leases:
    """The leases of the run (if it has a name) and of channels 1..``channels``, in that order
    (two servers never hold one each of what the other needs), or :class:`.LeaseHeld` naming
    the server that holds one, with nothing held and nothing changed."""
    leases = Leases(client, ttl, keys=names)
    lets_go = f"a server that died lets go within {leases.ttl:g}s of its last renewal"
    try:
        if run is not None:
            advice = f"One server per run: wait for that server to end the run, or stop it; {lets_go}."
            _take_with_room(leases, names.run_lease(run), f"run {run!r}", advice)
        for channel in range(1, channels + 1):
            advice = f"One server per channel: wait for that server's run to end, or stop it; {lets_go}."
            _take_with_room(leases, names.channel_lease(channel), f"channel {channel}", advice)
    except BaseException:
        leases.release()
        raise
    return leases


def _take_with_room(leases: Leases, key: str, what: str, advice: str) -> None:
    """``leases.take``, waiting while Redis is full as the run itself waits to publish (up to
    ``producer.RECONNECT_FOR`` seconds, then :class:`.RedisOutOfMemory`, exit code 7)."""
    since: float | None = None
    while True:
        try:
            leases.take(key, what, advice)
            return
        except redis.OutOfMemoryError:
            now = time.monotonic()
            full = memory.describe_full(leases.client)
            if since is None:
                since = now
                log.warning(
                    "%s: the server waits up to %.0fs for room to start; %s", full, producer.RECONNECT_FOR, FREE
                )
            elif now - since > producer.RECONNECT_FOR:
                raise RedisOutOfMemory(
                    f"{full} for more than {producer.RECONNECT_FOR:.0f}s: the run did not start; {FREE}"
                ) from None
            time.sleep(min(2.0, 0.1 * 2 ** min(int(now - since), 5)))  # growing waits for room


def _warn_paused(devices: Devices) -> None:
    paused = [name for name in devices.known() if devices.wanted(name) == DeviceState.PAUSED.value]
    if paused:
        log.warning("paused by the operator (start_all resumes them): %s", ", ".join(paused))


def _enable_completion(console: Console) -> None:
    """Tab completion of command names where readline exists."""
    try:
        import readline
    except ImportError:  # not on every platform
        return

    def complete(text: str, state: int) -> str | None:
        matches = console.complete(text)
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


POLL = 0.1  # how often a piped console looks for new lines while the run goes on


def _read_stream(console: Console, stdin: TextIO) -> None:
    """Execute the lines of a stream with no file descriptor (e.g. ``io.StringIO``) to its end or ``stop``."""
    try:
        for line in stdin:
            if not console.execute(line):
                return
    except (OSError, ValueError):  # not readable after all (e.g. closed)
        pass


def _read_commands(console: Console, stdin: TextIO, finished: threading.Event) -> None:
    """Execute piped lines as console commands as they come.

    Ends at end of file, at ``stop``, or once the run has finished and no more
    input is waiting: a file of commands is run to its end, while a pipe left
    open and silent does not keep a finished run alive.
    """
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream: read it to its end
        _read_stream(console, stdin)
        return
    pending = b""
    while True:
        try:
            readable, _, _ = select.select([fd], [], [], POLL)
            chunk = os.read(fd, 65536) if readable else None
        except (OSError, ValueError):  # stdin closed under us: nothing more to read
            chunk = b""
        if chunk is None:
            if finished.is_set():
                break
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            if not console.execute(raw.decode(errors="replace")):
                return
        if not chunk:  # end of file
            break
    if pending.strip():
        console.execute(pending.decode(errors="replace"))


def _run_interactive(
    producer: Producer, console: Console, sources: list[Iterator[Any]], stdin: TextIO, out: TextIO
) -> RunSummary:
    lost: list[LeaseHeld] = []

    def produce() -> None:
        try:
            producer.run(sources)
        except LeaseHeld as exc:  # said now (the console waits for the operator), raised when it ends
            lost.append(exc)
            log.critical("mutitask: %s (type stop to end)", exc)

    # The run's context (its span) goes with the producer: every message it publishes carries it.
    worker = threading.Thread(
        target=contextvars.copy_context().run, args=(produce,), name="mutitask-producer", daemon=True
    )
    worker.start()
    console.say("console ready: type help for the commands, stop to end")
    use_input = stdin is sys.stdin and out is sys.stdout
    if use_input:
        _enable_completion(console)
    while True:
        try:
            if use_input:  # input() gives line editing, history and completion
                line = input(PROMPT) + "\n"
            else:
                out.write(PROMPT)
                out.flush()
                line = stdin.readline()
        except EOFError:
            break
        except KeyboardInterrupt:
            console.say("")
            producer.stop()
            break
        if not line:  # end of file: finish the run, then return
            break
        if not console.execute(line):
            break
    worker.join()
    if lost:
        raise lost[0]
    return producer.summary
