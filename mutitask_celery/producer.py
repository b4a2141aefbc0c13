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

import redis

from . import codec, messages
from .errors import BrokerUnavailable, EncodingError
from .integrity import Watermarks
from .ledger import ChannelStats, Ledger
from .recovery import HEARTBEAT, Reaper
from .store import RedisDeadLetterStore

log = logging.getLogger(__name__)

WAIT_STEP = 0.5  # longest a control change (resume, new size) waits to be seen
RECONNECT_FOR = 120.0  # seconds the run waits for Redis to come back before giving up
TARGET_MESSAGE_SECONDS = 0.1  # work one message should carry: short tasks travel together
MAX_BATCH = 100
COUNTERS = ("published", "succeeded", "failed", "duplicates", "reloaded")  # only ever grow (see integrity)


class _Batcher:
    """How many tasks a message carries, from the measured task time of the channel.

    A message carries about 100 ms of work: slow tasks (75 ms or more) travel
    one per message, so Flower shows them one by one and a pause stops them one
    by one; 50 ms tasks travel in pairs, which halves what a device spends per
    task on the broker (a 20-slot device of 50 ms tasks was CPU-bound on that);
    no-op tasks travel up to 100 a message. Starts at 1 until the first tasks
    have been timed.
    """

    PROBE = 8  # tasks published before the first measurement

    def __init__(self) -> None:
        self.size = 1
        self.measured = False
        self._timed = -1
        self._busy = 0.0

    def update(self, stats: ChannelStats) -> None:
        if self._timed < 0:
            self._timed, self._busy = stats.timed, stats.busy
            return
        done, busy = stats.timed - self._timed, stats.busy - self._busy
        if done >= 1:
            average = max(busy / done, 1e-6)
            self.size = max(1, min(MAX_BATCH, round(TARGET_MESSAGE_SECONDS / average)))
            self._timed, self._busy = stats.timed, stats.busy
            self.measured = True

    def batch(self, channel_size: int) -> int:
        """Never so large that one device takes all the room while others wait."""
        return max(1, min(self.size, channel_size // 4))

    def take(self, room: int, outstanding: int, channel_size: int) -> int:
        """How many tasks to pull now: whole messages, a small probe before any timing."""
        if not self.measured:
            return max(0, min(room, self.PROBE - outstanding))
        batch = self.batch(channel_size)
        if room < batch and outstanding > 0:
            return 0  # wait for room for a full message; devices are busy anyway
        return room if outstanding == 0 else room - room % batch


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
        # Taken from the generator, not yet in the books (Redis went away meanwhile), and the
        # publish step's id: published again with it, they enter the books once.
        self.unsent: list[messages.Item] = []
        self.step = ""

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
        self._batchers: dict[int, _Batcher] = {}
        self._channel_size = channel_size
        self._paused = threading.Event()
        self._feeding_stopped = threading.Event()
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.summary = RunSummary()
        self._feeds: list[_Feed] = []
        self._books = Watermarks()

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

    def snapshot(self) -> tuple[RunSummary, dict[int, bool]]:
        """The latest summary, and which channels' generators have ended (for progress displays)."""
        return self.summary, {f.channel: f.exhausted for f in self._feeds}

    # -- the run ---------------------------------------------------------------
    def run(self, sources: list[Iterator[object]]) -> RunSummary:
        feeds = [_Feed(n, src) for n, src in enumerate(sources, start=1)]
        self._feeds = feeds
        channels = [f.channel for f in feeds]
        before = self._read_stats(channels)
        self._batchers = {ch: _Batcher() for ch in channels}
        for ch in channels:
            self._batchers[ch].update(before[ch])
        published = dict.fromkeys(channels, 0)
        for ch in channels:
            left = self.ledger.outstanding(ch)
            if left:
                log.warning("channel %d still has %d task(s) outstanding from an earlier run; "
                            "this run waits for them too", ch, left)
        outage: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    if outage is not None:  # Redis is back: did it keep the books?
                        self._read_stats(channels)
                    if self._step(feeds, channels, before, published):
                        break
                    outage = None
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, BrokerUnavailable) as exc:
                    outage = self._wait_for_redis(outage, exc)  # each feed's unsent tasks go out when it is back
        finally:
            self.finished.set()
        try:
            self.summary = self._summarize(channels, before, published)
        except redis.RedisError as exc:
            log.warning("the final summary could not be read: %s", exc)
        return self.summary

    def _step(self, feeds: list[_Feed], channels: list[int], before: dict[int, ChannelStats],
              published: dict[int, int]) -> bool:
        """One round: top the channels up, recover, wait for progress. True when the run is over."""
        for feed in feeds:
            if feed.unsent:  # taken from the generator before Redis went away
                self._publish(feed, published, 1)
        if not self._paused.is_set() and not self._feeding_stopped.is_set():
            for feed in feeds:
                outstanding = self.ledger.outstanding(feed.channel)
                batcher = self._batchers[feed.channel]
                want = batcher.take(self._channel_size - outstanding, outstanding, self._channel_size)
                if want > 0 and not feed.exhausted:
                    feed.unsent, feed.step = feed.take(want, self.store), messages.new_task_id()
                    self._publish(feed, published, batcher.batch(self._channel_size))
        self._reap(channels)
        self.summary = self._summarize(channels, before, published)
        feeding_over = self._feeding_stopped.is_set() or all(f.exhausted for f in feeds)
        if feeding_over and all(c.outstanding == 0 for c in self.summary.channels.values()):
            return True
        self.ledger.wait_for_progress(channels, WAIT_STEP)
        return False

    def _publish(self, feed: _Feed, published: dict[int, int], batch: int) -> None:
        """Put the feed's unsent tasks in the books and on the queue (once, however often retried)."""
        self.ledger.publish(feed.channel, feed.unsent, batch, step=feed.step)
        published[feed.channel] += len(feed.unsent)
        feed.unsent = []

    def _wait_for_redis(self, since: float | None, exc: Exception) -> float:
        """Back off while Redis (or the broker) is away; give up with a clear error after RECONNECT_FOR seconds."""
        now = time.monotonic()
        if since is None:
            log.warning("lost Redis or the broker (%s): waiting up to %.0fs for it to come back", exc, RECONNECT_FOR)
            since = now
        elif now - since > RECONNECT_FOR:
            raise BrokerUnavailable(f"Redis or the broker did not come back within {RECONNECT_FOR:.0f}s: "
                                    f"{exc}") from None
        self._stop.wait(min(2.0, 0.1 * 2 ** min(int(now - since), 5)))
        return since

    def _reap(self, channels: list[int]) -> None:
        """Every heartbeat period, give dead devices' tasks to live ones (even when all died),
        and publish again any task a dying device took off the queue but never held; on
        another broker (which redelivers by itself), any task a dying publisher left unsent."""
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + HEARTBEAT
            if self.reaper is not None:
                self.reaper.reap()
                self.reaper.sweep(channels)
            self.ledger.resend_unsent(channels)

    def _read_stats(self, channels: list[int]) -> dict[int, ChannelStats]:
        """Every channel's counters; :class:`BooksLost` when one is lower than seen before."""
        marks = self._books.mark()
        stats = {ch: self.ledger.stats(ch) for ch in channels}
        values = {f"channel {ch} {name}": getattr(s, name) for ch, s in stats.items() for name in COUNTERS}
        self._books.check(values, marks, self.ledger.client)
        return stats

    def _summarize(self, channels: list[int], before: dict[int, ChannelStats],
                   published: dict[int, int]) -> RunSummary:
        summary = RunSummary()
        stats = self._read_stats(channels)
        for ch in channels:
            now, then = stats[ch], before[ch]
            if ch in self._batchers:
                self._batchers[ch].update(now)
            summary.channels[ch] = ChannelSummary(
                channel=ch,
                published=published[ch],
                succeeded=now.succeeded - then.succeeded,
                failed=now.failed - then.failed,
                duplicates=now.duplicates - then.duplicates,
                outstanding=self.ledger.outstanding(ch),
            )
        return summary
