"""What a run shows while it goes: per channel published / done / failed, rate, time left.

On a terminal it is a live bar in the terminal's bottom lines: the lines
above them scroll as usual (an ANSI scroll region), so the console's prompt,
its answers and log lines stay usable while the bar is redrawn. Anywhere else
(a pipe, a file, CI) it is one ``logging`` line per channel every
``progress_every`` seconds, which a log keeps readable.

The figures come from the producer's summary, which it refreshes from the
books in Redis every step, so the display costs no extra round trip.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TextIO

from mutitask_celery.serving.producer import RunSummary

log = logging.getLogger(__name__)

WINDOW = 10.0  # seconds of history the rate is measured over
BAR_EVERY = 0.5  # seconds between redraws of the live bar


@dataclass(frozen=True)
class ChannelProgress:
    """One channel at one moment."""

    channel: int
    published: int
    done: int
    failed: int
    rate: float  # tasks finished per second, over the last WINDOW seconds
    total: int | None  # all the channel's tasks, once known (a sized source, or its generator is exhausted)

    @property
    def left(self) -> float | None:
        """Seconds until every task is done, when the total and a rate are known."""
        if self.total is None:
            return None
        remaining = max(self.total - self.done, 0)
        if remaining == 0:
            return 0.0
        return remaining / self.rate if self.rate > 0 else None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(self.done / self.total, 1.0)

    def text(self) -> str:
        """``channel 1: published 1200, done 1150 (3 failed), 95.1 tasks/s, 0:12 left``"""
        shown = f"{self.done}/{self.total}" if self.total is not None else str(self.done)
        return (
            f"channel {self.channel}: published {self.published}, done {shown} ({self.failed} failed), "
            f"{self.rate:.1f} tasks/s, {_duration(self.left)} left"
        )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"  # a generator of unknown length, or nothing finished yet
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def bar(fraction: float | None, width: int) -> str:
    """``[#########.........]`` (empty while the total is unknown)."""
    inner = max(width - 2, 1)
    filled = 0 if fraction is None else int(round(fraction * inner))
    return "[" + "#" * filled + "." * (inner - filled) + "]"


class Meter:
    """Turns successive summaries into progress lines (rates over a sliding window)."""

    def __init__(self, totals: Mapping[int, int | None], clock: Callable[[], float] = time.monotonic) -> None:
        self._totals = dict(totals)
        self._clock = clock
        self._history: dict[int, deque[tuple[float, int]]] = {}
        self._started = clock()  # every channel starts with nothing done: the first rate is since then

    def read(self, summary: RunSummary, exhausted: Mapping[int, bool]) -> list[ChannelProgress]:
        now = self._clock()
        out = []
        for channel, c in sorted(summary.channels.items()):
            done = c.succeeded + c.failed
            history = self._history.setdefault(channel, deque([(self._started, 0)]))
            history.append((now, done))
            while len(history) > 2 and now - history[1][0] >= WINDOW:
                history.popleft()
            then, done_then = history[0]
            rate = (done - done_then) / (now - then) if now > then else 0.0
            total = self._totals.get(channel)
            if total is None and exhausted.get(channel):
                total = c.published  # the generator ended: everything it gave is published
            out.append(ChannelProgress(channel, c.published, done, c.failed, rate, total))
        return out


class _Display:
    """Where progress goes: one of the two kinds below."""

    every: float = BAR_EVERY

    def show(self, lines: list[ChannelProgress]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Leave the output as it was before the run."""


class LogLines(_Display):
    """One log line per channel every ``every`` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every

    def show(self, lines: list[ChannelProgress]) -> None:
        for line in lines:
            log.info("%s", line.text())


class TerminalBar(_Display):
    """A live bar in the bottom lines of a terminal, under a scroll region (VT100)."""

    def __init__(self, out: TextIO, channels: int) -> None:
        self.out = out
        self.height = channels
        self._rows = 0

    def _size(self) -> os.terminal_size:
        try:
            return os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError, AttributeError):
            return shutil.get_terminal_size()

    def _reserve(self, rows: int) -> str:
        """Make room at the bottom and keep scrolling above it (DECSTBM moves the cursor: save it)."""
        top = max(rows - self.height, 1)
        return "\n" * self.height + f"\x1b[{self.height}A" + f"\x1b7\x1b[1;{top}r\x1b8"

    def show(self, lines: list[ChannelProgress]) -> None:
        size = self._size()
        if size.lines <= self.height + 1:
            return  # no room for a bar and a prompt
        text = ""
        if size.lines != self._rows:
            text += self._reserve(size.lines)
            self._rows = size.lines
        text += "\x1b7"
        for i, line in enumerate(lines[: self.height]):
            words = line.text()
            width = min(size.columns - len(words) - 2, 40)
            shown = f"{bar(line.fraction, width)} {words}" if width >= 10 and line.fraction is not None else words
            text += f"\x1b[{size.lines - self.height + 1 + i};1H\x1b[2K{shown[: size.columns - 1]}"
        text += "\x1b8"
        self.out.write(text)  # the whole redraw in one write
        self.out.flush()

    def close(self) -> None:
        if not self._rows:
            return
        rows = self._rows
        text = "\x1b7"
        for i in range(self.height):
            text += f"\x1b[{rows - self.height + 1 + i};1H\x1b[2K"
        text += "\x1b[r\x1b8"  # the whole screen scrolls again
        self.out.write(text)
        self.out.flush()
        self._rows = 0


def choose(mode: str, out: TextIO, channels: int, every: float | None) -> _Display | None:
    """The display a run gets for ``mode`` (auto, bar, log, off) and its output."""
    if mode == "off":
        return None
    is_tty = False
    try:
        is_tty = out.isatty()
    except (AttributeError, ValueError):
        pass
    if mode == "bar" or (mode == "auto" and is_tty and os.environ.get("TERM", "") != "dumb"):
        return TerminalBar(out, channels)
    return LogLines(every or 10.0)


class Reporter:
    """Shows a run's progress from a thread until :meth:`stop`; the last figures once more at the end."""

    def __init__(self, display: _Display, meter: Meter, snapshot: Callable[[], tuple[RunSummary, dict[int, bool]]]):
        self.display = display
        self.meter = meter
        self.snapshot = snapshot
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mutitask-progress", daemon=True)

    def _tick(self) -> None:
        summary, exhausted = self.snapshot()
        if summary.channels:
            self.display.show(self.meter.read(summary, exhausted))

    def _loop(self) -> None:
        while not self._stop.wait(self.display.every):
            try:
                self._tick()
            except Exception:  # a display must never end a run
                log.debug("progress display failed", exc_info=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.display.close()
