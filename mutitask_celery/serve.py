"""A whole server run: validate the tasks, feed the channels, offer the console.

With a terminal on standard input the operator's console runs in the
foreground and the producer in a thread; otherwise the producer runs in the
foreground and any piped lines are executed as console commands as they
arrive. Either way the run returns its :class:`RunSummary` once every task has
finished (or the operator typed ``stop``).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from . import runtime, settings
from .connection import check_redis
from .console import PROMPT, Console
from .errors import InvalidTasksError
from .producer import Producer, RunSummary

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


def serve(tasks: Any, channel_size: int, stdin: TextIO | None = None, out: TextIO | None = None) -> RunSummary:
    """Run ``tasks`` to the end; see the module docstring."""
    sources = as_sources(tasks)
    conf = runtime.reset(settings.current())
    check_redis(conf.redis_url)
    producer = Producer(runtime.ledger(), runtime.store(), channel_size)
    stdin = sys.stdin if stdin is None else stdin
    out = sys.stdout if out is None else out
    console = Console(producer, runtime.store(), out)
    interactive = _isatty(stdin)
    if interactive:
        summary = _run_interactive(producer, console, sources, stdin, out)
    else:
        reader = threading.Thread(target=_read_commands, args=(console, stdin), name="mutitask-console", daemon=True)
        reader.start()
        summary = producer.run(sources)
    for line in str(summary).splitlines():
        print(line, file=out, flush=True)
    return summary


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _read_commands(console: Console, stdin: TextIO) -> None:
    """Execute piped lines as console commands, until EOF or ``stop``."""
    try:
        for line in stdin:
            if not console.execute(line):
                return
    except (OSError, ValueError):  # stdin closed under us: nothing more to read
        return


def _run_interactive(producer: Producer, console: Console, sources: list[Iterator[Any]],
                     stdin: TextIO, out: TextIO) -> RunSummary:
    worker = threading.Thread(target=producer.run, args=(sources,), name="mutitask-producer", daemon=True)
    worker.start()
    console.say("console ready: type help for the commands, stop to end")
    while True:
        try:
            out.write(PROMPT)
            out.flush()
            line = stdin.readline()
        except KeyboardInterrupt:
            console.say("")
            producer.stop()
            break
        if not line:  # end of file: finish the run, then return
            break
        if not console.execute(line):
            break
    worker.join()
    return producer.summary
