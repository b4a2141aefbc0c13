"""The server's side of a run: pull tasks from generators as devices finish them.

For each channel at most ``channel_size`` tasks are waiting in the channel (published,
not yet taken by a device), as the original's ``ChannelSize`` bounded its task list;
devices hold a few messages more each (one or two per slot). Big tasks are bounded in bytes
too: while tasks wait, the data of a channel's outstanding tasks stays within
``MUTITASK_CHANNEL_BYTES`` (see publish.lua), so forty 8 MiB arrays do not all sit in
Redis at once; a task larger than that budget still travels, alone. The producer tops each
channel up to that bound, then blocks on the devices' finish notifications; a generator
is only ever advanced with ``next()``, never turned into a list. The run is over when
every generator is exhausted (or feeding was stopped) and nothing is outstanding.

Recovery (dead devices, the sweep, a dead publisher's journal) runs in a thread of its
own (:class:`_Recovery`), so feeding never waits for it.

A server holds the leases of its channels (and of its run), see :mod:`.books.leases`:
each publish step is fenced by its channel's lease, and a lease another server took ends
the run with :class:`.LeaseLost` (nothing more is published; what was is in the books).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from mutitask_celery import codec, memory, settings
from mutitask_celery.books import messages
from mutitask_celery.books.cancels import Cancels
from mutitask_celery.books.dead_letters import RedisDeadLetterStore
from mutitask_celery.books.integrity import Watermarks
from mutitask_celery.books.leases import Lease, Leases
from mutitask_celery.books.ledger import ChannelBooks, ChannelStats, Ledger, Outgoing, batch_size
from mutitask_celery.books.recovery.base import Recovery
from mutitask_celery.books.runs import Resumed, RunRecord
from mutitask_celery.errors import BrokerUnavailable, EncodingError, RedisOutOfMemory

log = logging.getLogger(__name__)

STEP_SHARE = 4  # a publish step takes at most this share of the channel's byte budget
# ... and never more data than this: Redis runs one command at a time, and every device's next
# command waits behind a step (16 MiB steps kept 1 MiB-array devices waiting a third of their time)
STEP_BYTES = 4 * 2**20
WAIT_STEP = 0.5  # longest a control change (resume, new size) waits to be seen
RECONNECT_FOR = 120.0  # seconds the run waits for Redis to come back before giving up
CANCEL_LOOK = 0.25  # seconds between two reads of the cancelled channels
COUNTERS = (
    "published",
    "succeeded",
    "failed",
    "duplicates",
    "reloaded",
    "revived",
    "cancelled",
)  # only ever grow (see integrity)
# Waited out (a full Redis too: it refuses writes until memory is freed, and nothing is lost meanwhile).
_OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.OutOfMemoryError, BrokerUnavailable)
FREE_MEMORY = (
    "free memory (raise maxmemory, or take results out of ResultChannel<N>: mutitask_celery.results, clear_results)"
)


class _Batcher:
    """How many tasks a message carries, from the measured task time of the channel.

    A message carries about 100 ms of work: slow tasks (75 ms or more) travel
    one per message, so Flower shows them one by one and a pause stops them one
    by one; 50 ms tasks travel in pairs, which halves what a device spends per
    task on the broker (a 20-slot device of 50 ms tasks was CPU-bound on that);
    no-op tasks travel up to 500 a message, as many as the channel holds at most:
    Celery's own cost per message (decoding, events, acknowledgement) is then spread
    over them. Starts at 1 until the first tasks have been timed.
    """

    PROBE = 8  # tasks published before the first measurement

    def __init__(self, stats: ChannelStats, held_known: bool = True) -> None:
        self.size = 1
        self.measured = False
        self._timed, self._busy = stats.timed, stats.busy
        # Whether the books know which tasks devices hold (notes, on the Redis broker): then a
        # message may fill the channel, as held tasks do not count; elsewhere half of it, so a
        # device holding tasks for long never leaves the channel too full for the next message.
        self._share = 1 if held_known else 2

    def update(self, stats: ChannelStats) -> None:
        if stats.timed - self._timed >= 1:
            self.size = batch_size(stats, since=(self._timed, self._busy))
            self._timed, self._busy = stats.timed, stats.busy
            self.measured = True

    def batch(self, channel_size: int) -> int:
        """No message larger than the channel (or half of it, see ``__init__``)."""
        return max(1, min(self.size, channel_size // self._share))

    def take(self, room: int, waiting: int, channel_size: int) -> int:
        """How many tasks to pull now: whole messages, a small probe before any timing."""
        if not self.measured:
            return max(0, min(room, self.PROBE - waiting))
        batch = self.batch(channel_size)
        if room < batch and waiting > 0:
            return 0  # wait for room for a full message; devices have work anyway
        return room if waiting == 0 else room - room % batch


@dataclass
class ChannelSummary:
    """What happened on one channel during one run."""

    channel: int
    published: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    outstanding: int = 0
    revived: int = 0  # of the succeeded: buried as 'worker lost' first, then a late success came
    cancelled: int = 0  # left the books unrun: the channel was cancelled (mutitask cancel)
    was_cancelled: bool = False  # the channel was cancelled during the run

    def line(self) -> str:
        text = f"channel {self.channel}: published {self.published}, succeeded {self.succeeded}, failed {self.failed}"
        if self.was_cancelled:
            text += f", cancelled {self.cancelled}"
        if self.duplicates:
            text += f", run twice {self.duplicates}"
        if self.revived:
            text += f" ({self.revived} succeeded late, after their burial as worker lost)"
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

    @property
    def cancelled(self) -> int:
        return sum(c.cancelled for c in self.channels.values())

    @property
    def cancelled_channels(self) -> list[int]:
        """The channels cancelled during the run (``mutitask cancel``)."""
        return [c.channel for c in self.channels.values() if c.was_cancelled]

    @property
    def duplicates(self) -> int:
        """Outcomes that came a second time (run twice)."""
        return sum(c.duplicates for c in self.channels.values())

    def __str__(self) -> str:
        return "\n".join(c.line() for c in self.channels.values())


class _Feed:
    """One channel of the run: its generator, how far it got, what it has published."""

    def __init__(self, channel: int, source: Iterator[object], before: ChannelStats, held_known: bool) -> None:
        self.channel = channel
        self.source = source
        self.index = 0
        self.exhausted = False
        self.before = before  # the channel's counters when the run began
        self.published = 0
        self.batcher = _Batcher(before, held_known)
        # Taken from the generator, not yet in the books (no room yet, or Redis went away
        # meanwhile), with its step's id: published again with it, they enter the books once.
        self.outgoing: Outgoing | None = None
        self.lease: Lease | None = None  # the server's lease of the channel: it fences each publish step
        self.largest = 0  # the most data one of its tasks carried (as text), this run
        self.cancelled = False  # the channel was cancelled: it takes no more from its generator

    def byte_budget(self, budget: int | None, channel_size: int) -> int:
        """The byte budget a publish step passes on (0: none). Redis checks it by summing the
        data of the channel's outstanding tasks, which costs little for a few big tasks but much
        for thousands of small ones; so it is asked only once ``channel_size`` tasks as large as
        the largest seen could pass it (below that, the count bounds the bytes already)."""
        if budget is None or self.largest * max(channel_size, 1) <= budget:
            return 0
        return budget

    def take(
        self, n: int, store: RedisDeadLetterStore, max_bytes: int | None = None, binary: bool = False
    ) -> list[messages.Item]:
        """Up to ``n`` items from the generator, as (task id, data) with a new id each; no more
        than ``max_bytes`` of data (but at least one item): a step of many big tasks would
        hold them all in this process and in Redis at once. ``binary``: big arrays and bytes
        as frames (:func:`.codec.encode_binary`). An item that cannot travel is
        dead-lettered as unpublishable, with what was wrong."""
        encode = codec.encode_binary if binary else codec.encode
        items: list[messages.Item] = []
        size = 0
        while len(items) < n and not self.exhausted and (max_bytes is None or size < max_bytes):
            try:
                value = next(self.source)
            except StopIteration:
                self.exhausted = True
                break
            except Exception:
                log.exception(
                    "the task generator of channel %d raised at item %d; its earlier tasks still run",
                    self.channel,
                    self.index,
                )
                self.exhausted = True
                break
            self.index += 1
            try:
                data = encode(value)
            except EncodingError as exc:
                log.error("channel %d item %d cannot be sent: %s", self.channel, self.index - 1, exc)
                store.add_unpublishable(self.channel, repr(value), f"unserializable: {exc}")
                continue
            items.append((messages.new_task_id(), data))
            size += len(data)
            self.largest = max(self.largest, len(data))
        return items


class _Full:
    """Whether the server has said that Redis is full, shared by its two threads: said once
    when it fills up (by whichever thread meets it first), once when it has room again."""

    def __init__(self, client: redis.Redis, probe: str) -> None:
        self.client, self.probe = client, probe
        self.said = False

    def met(self, why: str, found: memory.Memory | None = None) -> None:
        if not self.said:
            self.said = True
            log.warning("%s: %s; %s", memory.describe_full(self.client, found), why, FREE_MEMORY)

    def look(self) -> None:
        """Ask Redis whether it has room: a write that changes nothing (see :func:`.memory.has_room`)
        and, where ``INFO`` is allowed, how near its limit it is (at the limit a small probe can
        find room while every device's larger writes are refused). Redis away (or an ACL refusing
        the probe) says nothing here."""
        try:
            room = memory.has_room(self.client, self.probe)
        except redis.RedisError:
            return
        found = memory.memory(self.client) if room else None
        if not room or (found is not None and found.nearly_full):
            self.met("devices cannot take tasks, and the run waits for room", found)
        elif self.said and (found is None or found.clear):
            self.said = False
            log.warning("Redis has room again: the run goes on")


class _Recovery:
    """The server's recovery duties, every heartbeat period in a thread of their own: give dead
    devices' tasks to live ones (even when all devices died), sweep for tasks a dying device
    stranded when one died (see :meth:`.Reaper.sweep_if_due`), and on another broker (which
    redelivers by itself) publish what a dying publisher left in the journal. It also watches
    for a full Redis, which stops the run without an error while the server only waits."""

    def __init__(self, recovery: Recovery, channels: list[int], full: _Full) -> None:
        self.recovery, self.channels, self.full = recovery, channels, full
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mutitask-recovery", daemon=True)

    def __enter__(self) -> _Recovery:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while True:
            try:
                self.full.look()  # first: duties that write fail while Redis is full
                self.recovery.server_duties(self.channels)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                self.recovery.lost_touch()  # no device could beat meanwhile: no silence is a death yet
                log.debug("recovery round skipped: %s", exc)  # the feeding thread reports outages
            except (redis.RedisError, BrokerUnavailable) as exc:
                log.debug("recovery round skipped: %s", exc)
            except Exception:  # a bug must not end recovery for the rest of the run
                log.exception("recovery round failed")
            if self._stop.wait(settings.HEARTBEAT):
                return


class Producer:
    """Feeds channels from iterators with back-pressure; controllable from another thread."""

    def __init__(
        self,
        ledger: Ledger,
        recovery: Recovery,
        store: RedisDeadLetterStore,
        channel_size: int,
        record: RunRecord | None = None,
        resume: bool = False,
        leases: Leases | None = None,
    ) -> None:
        self.ledger = ledger
        self.recovery = recovery  # beside the ledger: the server's share of it runs in a thread
        self.store = store
        self.leases = leases  # the server's leases of its channels and run, or none taken
        self.record = record  # a resumable run's record (see books.runs), or none kept
        self.resume = resume  # go on from the record's unfinished run, if its generators match
        self._channel_size = channel_size
        self._channel_bytes = settings.current().channel_bytes  # see publish.lua's byte budget
        budget = self._channel_bytes
        self._step_bytes = STEP_BYTES if budget is None else min(max(budget // STEP_SHARE, 1), STEP_BYTES)
        self._paused = threading.Event()
        self._feeding_stopped = threading.Event()
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.summary = RunSummary()
        self._feeds: list[_Feed] = []
        self._last: dict[int, ChannelBooks] = {}  # the books as the last round read them
        self._sizes_said = False
        self._books = Watermarks()
        self._full = _Full(ledger.client, ledger.keys.room_probe())
        self.cancels = Cancels(ledger)
        self._cancels_read = float("-inf")  # when the cancelled channels were last read

    # -- controls (the console calls these from its own thread) ---------------
    @property
    def channel_size(self) -> int:
        return self._channel_size

    @channel_size.setter
    def channel_size(self, size: int) -> None:
        self._channel_size = size
        self._sizes_said = False

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
        channels = list(range(1, len(sources) + 1))
        books = self._read(channels)
        held_known = self.ledger.transport.notes_holds  # devices note what they hold: the books count it
        resumed = Resumed({}, {}, {})
        if self.record is not None:
            sources, resumed = self.record.begin(sources, {ch: books[ch].stats for ch in channels}, self.resume)
        self._feeds = [
            _Feed(ch, src, resumed.before.get(ch, books[ch].stats), held_known)
            for ch, src in zip(channels, sources, strict=True)
        ]
        for feed in self._feeds:
            feed.lease = (
                self.leases.get(self.ledger.keys.channel_lease(feed.channel)) if self.leases is not None else None
            )
            feed.index, feed.published = resumed.taken.get(feed.channel, 0), resumed.published.get(feed.channel, 0)
            if feed.channel in resumed.taken:
                log.warning(
                    "resuming run %r: channel %d skips the %d item(s) it had taken (%d published), waits for the "
                    "%d still outstanding, and goes on",
                    self.record.name if self.record else "",
                    feed.channel,
                    feed.index,
                    feed.published,
                    books[feed.channel].outstanding,
                )
        self._last = books
        self.cancels.clear(channels)  # a cancel of an earlier run of these channels no longer holds
        for ch in channels:
            if books[ch].outstanding and ch not in resumed.taken:
                log.warning(
                    "channel %d still has %d task(s) outstanding from an earlier run; this run waits for them too",
                    ch,
                    books[ch].outstanding,
                )
        outage: float | None = None
        try:
            with _Recovery(self.recovery, channels, self._full):
                while not self._stop.is_set():
                    try:
                        if outage is not None:  # Redis may have taken a message down with it
                            self.recovery.look_for_strays()
                        if self._step():
                            if self.record is not None:
                                self.record.finish()  # started again, it starts afresh
                            self.recovery.end_of_run(channels)
                            break
                        outage = None
                    except _OUTAGE as exc:
                        outage = self._wait_for_redis(outage, exc)  # what a feed had taken goes out when it is back
        finally:
            self.finished.set()
        try:
            self.summary = self._summarize(self._read(channels))
        except redis.RedisError as exc:
            log.warning("the final summary could not be read: %s", exc)
        return self.summary

    def _step(self) -> bool:
        """One round: top the channels up, wait for progress. True when the run is over.

        A channel's tasks are taken from its generator by whole messages (as many as the
        books read last leave room for, at least one) and go out in one round trip
        (:meth:`Ledger.round`) that checks the room again (the books may have moved since),
        reads the books back and then waits for the next take or finish. Tasks that found
        no room wait, taken, for the next round. Raises :class:`.LeaseLost` once another
        server holds one of this server's channels or its run.
        """
        if self.leases is not None:
            self.leases.check()
        self._follow_cancels()
        feeding = not self._paused.is_set() and not self._feeding_stopped.is_set()
        if not self._sizes_said:  # reloads and devices feed the channels' backlogs by it
            self.ledger.channel_sizes({f.channel: self._channel_size for f in self._feeds})
            self._sizes_said = True
        for feed in self._feeds:
            if feeding and self._last[feed.channel].backlog:  # reloaded tasks first, as room allows
                self.ledger.feed_backlog(feed.channel, self._channel_size)
                continue
            if feeding and feed.outgoing is None and not feed.exhausted:
                waiting = self._last[feed.channel].waiting
                batch = feed.batcher.batch(self._channel_size)
                # Full as the books read last were, devices may have taken some since: a
                # message is ready all the same, and goes if the round finds room for it.
                want = feed.batcher.take(self._channel_size - waiting, waiting, self._channel_size) or batch
                items = feed.take(want, self.store, self._step_bytes, self.ledger.transport.keeps_frames)
                if items:
                    run = self.record.name if self.record is not None else ""
                    feed.outgoing = Outgoing(
                        feed.channel,
                        items,
                        batch,
                        messages.new_task_id(),
                        run=run,
                        taken=feed.index,
                        lease=feed.lease,
                        byte_budget=feed.byte_budget(self._channel_bytes, self._channel_size),
                    )
        outgoing = [f.outgoing for f in self._feeds if f.outgoing is not None]
        read = [f.channel for f in self._feeds if f.outgoing is None]
        more = feeding and any(not f.exhausted or f.outgoing is not None for f in self._feeds)
        channels = [f.channel for f in self._feeds]
        went, books = self.ledger.round(
            outgoing, read, room_for=self._channel_size, wait=channels if more else (), timeout=WAIT_STEP
        )
        for feed in self._feeds:
            if feed.channel in went and feed.outgoing is not None:
                feed.published += len(feed.outgoing.items)
                feed.outgoing = None
        self._check(books)
        self._last = books
        self.summary = self._summarize(books)
        if more:
            return False
        feeding_over = self._feeding_stopped.is_set() or all(f.exhausted and f.outgoing is None for f in self._feeds)
        if feeding_over and not went and all(b.outstanding == 0 for b in books.values()):
            return True
        self.ledger.wait_for_progress(channels, WAIT_STEP)
        return False

    def _follow_cancels(self) -> None:
        """A channel cancelled (``mutitask cancel``, read at most every :data:`CANCEL_LOOK`
        seconds): take nothing more from its generator, drop what was taken and not published,
        and drain its queue once more (a message that went out as the cancel came)."""
        now = time.monotonic()
        if now - self._cancels_read < CANCEL_LOOK:
            return
        self._cancels_read = now
        cancelled = self.cancels.channels()
        for feed in self._feeds:
            if feed.channel in cancelled and not feed.cancelled:
                feed.cancelled = feed.exhausted = True
                feed.outgoing = None
                dropped = self.cancels.mark_and_drain(feed.channel)
                log.warning(
                    "channel %d was cancelled: it takes no more tasks; %d more waiting task(s) dropped, the run "
                    "ends when the ones devices run have ended",
                    feed.channel,
                    dropped,
                )

    def _wait_for_redis(self, since: float | None, exc: Exception) -> float:
        """Back off while Redis (or the broker) is away or full; give up with a clear error after
        RECONNECT_FOR seconds (:class:`RedisOutOfMemory` for a full Redis, exit code 7)."""
        now = time.monotonic()
        full = isinstance(exc, redis.OutOfMemoryError)
        if since is None:
            if full:
                self._full.met(f"the server waits up to {RECONNECT_FOR:.0f}s for room to publish")
            else:
                log.warning(
                    "lost Redis or the broker (%s): waiting up to %.0fs for it to come back", exc, RECONNECT_FOR
                )
            since = now
        elif now - since > RECONNECT_FOR:
            if full:
                raise RedisOutOfMemory(
                    f"{memory.describe_full(self.ledger.client)} for more than {RECONNECT_FOR:.0f}s: the run stops "
                    f"(what it published stays in the books, and the next run waits for it); {FREE_MEMORY}"
                ) from None
            raise BrokerUnavailable(
                f"Redis or the broker did not come back within {RECONNECT_FOR:.0f}s: {exc}"
            ) from None
        self._stop.wait(min(2.0, 0.1 * 2 ** min(int(now - since), 5)))
        return since

    def _read(self, channels: list[int]) -> dict[int, ChannelBooks]:
        """Every channel's books in one round trip, checked (see :meth:`_check`)."""
        books = self.ledger.books(channels)
        self._check(books)
        return books

    def _check(self, books: dict[int, ChannelBooks]) -> None:
        """:class:`BooksLost` when a counter is lower than seen before: Redis lost data. (The
        producer is this counter's only reader, so the marks need no snapshot before the read.)"""
        values = {f"channel {ch} {name}": getattr(b.stats, name) for ch, b in books.items() for name in COUNTERS}
        self._books.check(values, self._books.mark(), self.ledger.client)

    def _summarize(self, books: dict[int, ChannelBooks]) -> RunSummary:
        summary = RunSummary()
        for feed in self._feeds:
            now, then = books[feed.channel].stats, feed.before
            feed.batcher.update(now)
            summary.channels[feed.channel] = ChannelSummary(
                channel=feed.channel,
                published=feed.published,
                succeeded=now.succeeded - then.succeeded,
                failed=(now.failed - then.failed) - (now.revived - then.revived),  # a revived burial is a success
                revived=now.revived - then.revived,
                duplicates=now.duplicates - then.duplicates,
                outstanding=books[feed.channel].outstanding,
                cancelled=now.cancelled - then.cancelled,
                was_cancelled=feed.cancelled,
            )
        return summary
