"""The server's side of a run: pull tasks from generators as devices finish them.

For each channel at most ``channel_size`` tasks are outstanding (published and
not yet finished, as the books in Redis count them). The producer tops each
channel up to that bound, then blocks on the devices' finish notifications;
a generator is only ever advanced with ``next()``, never turned into a list.
The run is over when every generator is exhausted (or feeding was stopped)
and nothing is outstanding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import codec, messages
from .errors import EncodingError
from .ledger import ChannelStats, Ledger
from .recovery import HEARTBEAT, Reaper
from .store import RedisDeadLetterStore

log = logging.getLogger(__name__)

WAIT_STEP = 0.5  # longest a control change (resume, new size) waits to be seen


@dataclass
class ChannelSummary:
    """What happened on one channel during one run."""

    channel: int
    published: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    outstanding: int = 0

    def line(self) -> str:
        text = (
            f"channel {self.channel}: published {self.published}, succeeded {self.succeeded}, "
            f"failed {self.failed}"
        )
        if self.duplicates:
            text += f", run twice {self.duplicates}"
        if self.outstanding:
            text += f", still outstanding {self.outstanding}"
        return text


@dataclass
class RunSummary:
    """Per-channel counts of a run, as ``Terminal.run`` returns them."""

    channels: dict[int, ChannelSummary] = field(default_factory=dict)

    @property
    def published(self) -> int:
        return sum(c.published for c in self.channels.values())

    @property
    def succeeded(self) -> int:
        return sum(c.succeeded for c in self.channels.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.channels.values())

    def __str__(self) -> str:
        return "\n".join(c.line() for c in self.channels.values())


class _Feed:
    """One channel's generator and how far it got."""

    def __init__(self, channel: int, source: Iterator[object]) -> None:
        self.channel = channel
        self.source = source
        self.index = 0
        self.exhausted = False

    def take(self, n: int, store: RedisDeadLetterStore) -> list[messages.Item]:
        items: list[messages.Item] = []
        while len(items) < n and not self.exhausted:
            try:
                value = next(self.source)
            except StopIteration:
                self.exhausted = True
                break
            except Exception:
                log.exception("the task generator of channel %d raised at item %d; "
                              "its earlier tasks still run", self.channel, self.index)
                self.exhausted = True
                break
            self.index += 1
            try:
                items.append((messages.new_task_id(), codec.encode(value)))
            except EncodingError as exc:
                log.error("channel %d item %d cannot be sent: %s", self.channel, self.index - 1, exc)
                store.add_unpublishable(self.channel, repr(value), f"unserializable: {exc}")
        return items


class Producer:
    """Feeds channels from iterators with back-pressure; controllable from another thread."""

    def __init__(self, ledger: Ledger, store: RedisDeadLetterStore, channel_size: int,
                 reaper: Reaper | None = None) -> None:
        self.ledger = ledger
        self.store = store
        self.reaper = reaper
        self._next_reap = 0.0
        self._channel_size = channel_size
        self._paused = threading.Event()
        self._feeding_stopped = threading.Event()
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.summary = RunSummary()

    # -- controls (the console calls these from its own thread) ---------------
    @property
    def channel_size(self) -> int:
        return self._channel_size

    @channel_size.setter
    def channel_size(self, size: int) -> None:
        self._channel_size = size

    def pause_feeding(self) -> None:
        self._paused.set()

    def resume_feeding(self) -> None:
        self._paused.clear()

    def stop_feeding(self) -> None:
        """Pull no more tasks; the run ends when what was published has finished."""
        self._feeding_stopped.set()

    def stop(self) -> None:
        """End the run now (outstanding tasks stay with the devices)."""
        self._stop.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    # -- the run ---------------------------------------------------------------
    def run(self, sources: list[Iterator[object]]) -> RunSummary:
        feeds = [_Feed(n, src) for n, src in enumerate(sources, start=1)]
        channels = [f.channel for f in feeds]
        before = {ch: self.ledger.stats(ch) for ch in channels}
        published = dict.fromkeys(channels, 0)
        for ch in channels:
            left = self.ledger.outstanding(ch)
            if left:
                log.warning("channel %d still has %d task(s) outstanding from an earlier run; "
                            "this run waits for them too", ch, left)
        try:
            while not self._stop.is_set():
                if not self._paused.is_set() and not self._feeding_stopped.is_set():
                    for feed in feeds:
                        room = self._channel_size - self.ledger.outstanding(feed.channel)
                        if room > 0 and not feed.exhausted:
                            items = feed.take(room, self.store)
                            self.ledger.publish(feed.channel, items)
                            published[feed.channel] += len(items)
                self._reap(channels)
                self.summary = self._summarize(channels, before, published)
                feeding_over = self._feeding_stopped.is_set() or all(f.exhausted for f in feeds)
                if feeding_over and all(c.outstanding == 0 for c in self.summary.channels.values()):
                    break
                self.ledger.wait_for_progress(channels, WAIT_STEP)
        finally:
            self.summary = self._summarize(channels, before, published)
            self.finished.set()
        return self.summary

    def _reap(self, channels: list[int]) -> None:
        """Every heartbeat period, give dead devices' tasks to live ones (even when all died),
        and publish again any task a dying device took off the queue but never held."""
        now = time.monotonic()
        if self.reaper is not None and now >= self._next_reap:
            self._next_reap = now + HEARTBEAT
            self.reaper.reap()
            for channel in channels:
                self.reaper.sweep(channel)

    def _summarize(self, channels: list[int], before: dict[int, ChannelStats],
                   published: dict[int, int]) -> RunSummary:
        summary = RunSummary()
        for ch in channels:
            now, then = self.ledger.stats(ch), before[ch]
            summary.channels[ch] = ChannelSummary(
                channel=ch,
                published=published[ch],
                succeeded=now.succeeded - then.succeeded,
                failed=now.failed - then.failed,
                duplicates=now.duplicates - then.duplicates,
                outstanding=self.ledger.outstanding(ch),
            )
        return summary
