"""The books of every channel, kept in Redis, and the atomic steps that change them.

A task is *outstanding* from the moment it is published until a device
finishes it: it sits in ``pending:<ch>`` with its data. Finishing is one Lua
script: it removes the task from ``pending`` and, in the same step, appends the
result (default save function) or writes the dead-letter record, and counts.
So a result is saved once and a failure recorded once, even when a message is
delivered twice (the second finish finds nothing pending and is counted as a
duplicate run). The server's back-pressure reads ``HLEN pending``, which works
whatever the broker is.

On the Redis broker a task enters the books and its queue in one transaction;
on another broker (RabbitMQ) it enters the books and a journal first, and
:mod:`.transports.publisher` sends it: the ledger publishes through its :class:`.Transport`,
which knows which (see :mod:`.transports`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import redis
from celery import Celery

from mutitask_celery import codec
from mutitask_celery.books import messages, steps
from mutitask_celery.books.transports.base import Transport
from mutitask_celery.connection import raw_twin, text

if TYPE_CHECKING:
    from mutitask_celery.books.leases import Lease

log = logging.getLogger(__name__)

PUBLISHER = "server"  # the writer whose publish steps steps:<writer> keeps (one server per channel)
DEFAULT_CHANNEL_SIZE = 50  # the seed's, for a channel whose server never said
TARGET_MESSAGE_SECONDS = 0.1  # work one message should carry: short tasks travel together
MAX_BATCH = 500


def batch_size(stats: ChannelStats, cap: int | None = None, since: tuple[int, float] = (0, 0.0)) -> int:
    """Tasks a message should carry: about :data:`TARGET_MESSAGE_SECONDS` of work, from the
    channel's measured task time (since ``since``: tasks timed and seconds then), at most
    ``cap`` and :data:`MAX_BATCH`; 1 before any task was timed."""
    done, busy = stats.timed - since[0], stats.busy - since[1]
    if done < 1:
        return 1
    return max(1, min(MAX_BATCH, cap or MAX_BATCH, round(TARGET_MESSAGE_SECONDS / max(busy / done, 1e-6))))


@dataclass(frozen=True)
class Outcome:
    """How one task ended on a device.

    ``result`` is the JSON-encoded result for the default save function to
    append (``''`` when a user's save function already took it, or for a
    failure without a result); ``reason`` is empty for a success.
    """

    task_id: str
    ok: bool
    result: str = ""
    reason: str = ""
    traceback: str = ""
    skipped: bool = False  # it ran, but another run owns its outcome (see :meth:`Ledger.claim`)
    cancelled: bool = False  # its channel was cancelled before it started: it never ran (see .cancels)
    tries: int = 0  # calls of the task function behind it on the device (1 + retries; 0: none, or not said)
    # The exception behind a failure, in the device's process only (never written): for its trace.
    error: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        """The word ``lua/finish.lua`` takes for it."""
        return "cancel" if self.cancelled else "skip" if self.skipped else "ok" if self.ok else "fail"


def claim_of(device: str, message_id: str, run: str) -> str:
    """A device's claim on the tasks of a message it holds (see :meth:`Ledger.claim`).

    ``run`` tells apart two runs of one message on one device: after a Redis failover the new
    master may lack kombu's last pops (they are not confirmed), so the very same message can
    reach the device that already runs it; its two runs must not both count as the claim's
    holder, or both would call the save function."""
    return f"{device}|{message_id}|{run}"


class Claimed(IntEnum):
    """What :meth:`Ledger.claim` says of a task (``lua/claim.lua``'s codes)."""

    HELD_ELSEWHERE = -1  # another run holds the claim: not to be saved here
    NOT_YOURS = 0  # finished already, or its message was taken back from this device
    CLAIMED = 1  # save it
    REVIVING = 2  # save it: its burial as 'worker lost' gives way to this success

    @property
    def save(self) -> bool:
        return self > 0


class Finished(NamedTuple):
    """What one finish step did."""

    succeeded: int
    failed: int
    duplicates: int
    device_done: int  # the device's finished-task count after this step (see integrity)
    backlog: int = 0  # reloaded tasks of the channel waiting for room (the device feeds some)
    # Which outcomes (their places in the step, from 0) were counted as run twice: the task had
    # finished before, or another run holds its claim. Empty when a retried step replies from
    # its first try's memo, which keeps the counts only.
    run_twice: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChannelStats:
    """Counters of a channel since its keys were created."""

    published: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    reloaded: int = 0
    revived: int = 0  # burials as 'worker lost' that a late success replaced (counted in both)
    messages: int = 0  # messages finished (one carries one or more tasks)
    timed: int = 0  # tasks whose run time is in ``busy``
    busy: float = 0.0  # seconds devices spent running tasks
    cancelled: int = 0  # tasks that left the books unrun, their channel cancelled (see .cancels)


@dataclass
class Outgoing:
    """Tasks taken from a generator for one publish step, and their messages, built once."""

    channel: int
    items: list[messages.Item]
    batch: int  # tasks a message
    step: str  # the step's id: a repeated step applies once
    run: str = ""  # the resumable run whose record notes this step (see .runs), or none
    taken: int = 0  # ... the items its server had taken from the channel's generator with these
    lease: Lease | None = None  # the server's lease of the channel, which fences the step (see .leases)
    byte_budget: int = 0  # the channel's outstanding data may not pass it (0: no byte bound; see publish.lua)
    templates: list[list[str | int]] | None = None  # its messages around the data (see messages.template), built once

    def groups(self) -> list[list[messages.Item]]:
        return _groups(self.items, self.batch)


MESSAGE_BYTES = 1 << 20  # a message bundles tasks only up to this much data (a big task travels alone)


def _groups(items: list[messages.Item], batch: int, sizes: dict[str, int] | None = None) -> list[list[messages.Item]]:
    """The items in order, ``batch`` a message, and no more than :data:`MESSAGE_BYTES` of data a
    message (but at least one task): a message of many big tasks would keep one device busy
    while another waits, and hold a device's whole share of memory at once. ``sizes``: the
    data's size by task id, for items that do not carry their data (read from the books)."""
    groups: list[list[messages.Item]] = []
    group: list[messages.Item] = []
    size = 0
    for item in items:
        length = len(item[1]) if sizes is None else sizes.get(item[0], len(item[1]))
        if group and (len(group) >= batch or size + length > MESSAGE_BYTES):
            groups.append(group)
            group, size = [], 0
        group.append(item)
        size += length
    if group:
        groups.append(group)
    return groups


@dataclass(frozen=True)
class ChannelBooks:
    """One channel's books as the server reads them each round."""

    stats: ChannelStats
    outstanding: int  # published (or reloaded) and not yet finished
    held: int  # of those, in devices' hands (taken off the queue)
    backlog: int = 0  # of those, reloaded and not yet fed into the channel

    @property
    def waiting(self) -> int:
        """Tasks waiting in the channel: what ``ChannelSize`` bounds, as in the original."""
        return max(0, self.outstanding - max(0, self.held) - self.backlog)


def _stats(raw: dict[str, str]) -> ChannelStats:
    fields = ChannelStats.__dataclass_fields__
    values: dict[str, Any] = {k: (float(v) if k == "busy" else int(v)) for k, v in raw.items() if k in fields}
    return ChannelStats(**values)


def _round_replies(
    outgoing: Sequence[Outgoing], read: Sequence[int], replies: list[Any]
) -> tuple[set[int], dict[int, ChannelBooks]]:
    """A round's replies read back: the channels whose tasks went, and every named channel's books."""
    went: set[int] = set()
    books: dict[int, ChannelBooks] = {}
    for out, reply in zip(outgoing, replies, strict=False):
        published, outstanding, held, backlog, *pairs = reply
        books[out.channel] = ChannelBooks(
            _stats(dict(zip(pairs[::2], pairs[1::2], strict=True))), int(outstanding), int(held), int(backlog)
        )
        if int(published) > 0:  # -1: fenced, another server holds the channel (see Ledger.round)
            went.add(out.channel)
    rest = replies[len(outgoing) :]
    for i, channel in enumerate(read):
        stats, outstanding, held, backlog = rest[4 * i : 4 * i + 4]
        books[channel] = ChannelBooks(_stats(stats), int(outstanding), int(held or 0), int(backlog))
    return went, books


class Ledger:
    """Reads and changes the books of the channels in one Redis database."""

    def __init__(self, client: redis.Redis, app: Celery, transport: Transport) -> None:
        self.client = client
        self.app = app
        self.transport = transport  # how messages reach the queues (see .transports)
        self.keys = transport.keys  # the books' names on this Redis
        self._finish = steps.FINISH.on(client)
        self._give_back = steps.DROP_NOTE.on(client)
        self._publish = steps.PUBLISH.on(client)
        self._publish_known = False  # loaded into Redis by this process (round() pipelines EVALSHA)
        self._feed = steps.FEED.on(client)
        self._claim = steps.CLAIM.on(client)
        self._mark = steps.CLAIM_MARK.on(client)

    def outstanding(self, channel: int) -> int:
        """Tasks of the channel published (or reloaded) and not yet finished."""
        return int(self.client.hlen(self.keys.pending(channel)))

    def give_back(self, device: str, channel: int, message_id: str) -> None:
        """``device`` hands a message back without an outcome (paused, Redis away): it leaves the
        device's hands, and its next delivery counts no death."""
        self._give_back(
            inhand=self.keys.inhand(device),
            held=self.keys.held(channel),
            started=self.keys.started(channel),
            message_id=message_id,
            noted="",  # whatever it is
            drop_mark="1",
            device=device,
        )

    def stats(self, channel: int) -> ChannelStats:
        return _stats(cast("dict[str, str]", self.client.hgetall(self.keys.stats(channel))))

    def books(self, channels: Sequence[int]) -> dict[int, ChannelBooks]:
        """Every channel's counters, outstanding and held tasks, in one round trip."""
        return self.round([], channels)[1]

    def publish(
        self, channel: int, items: Sequence[messages.Item], batch: int = 1, step: str = "", room_for: int = 0
    ) -> tuple[bool, ChannelBooks]:
        """Enter ``items`` in the books and put them on the channel's queue, ``batch`` tasks a
        message; returns whether they went (not when ``room_for``, a channel size, 0 for none,
        left no room for them) and the channel's books after. See :meth:`round`."""
        out = Outgoing(channel, list(items), batch, step or messages.new_task_id())
        went, books = self.round([out], [], room_for)
        return channel in went, books[channel]

    def round(
        self,
        outgoing: Sequence[Outgoing],
        read: Sequence[int],
        room_for: int = 0,
        wait: Sequence[int] = (),
        timeout: float = 0.5,
    ) -> tuple[set[int], dict[int, ChannelBooks]]:
        """The server's round, in one round trip: each outgoing step published if its channel
        has room (``lua/publish.lua``, which reads the books back), the books of the ``read``
        channels read, then, if ``wait`` names channels, a block until a device takes or
        finishes a message of one of them (or ``timeout``). Returns the channels whose tasks
        went, and the books of all the channels named.

        A step repeated with the same id (its first reply was lost with the connection) does
        nothing if the first one applied. A step fenced by a lease (``Outgoing.lease``) whose
        channel another server has taken publishes nothing, and this raises :class:`.LeaseLost`.
        """
        if outgoing and not self._publish_known:  # else the first round's NOSCRIPT costs its whole wait
            self.client.script_load(self._publish.script.script)
            self._publish_known = True
        # Another broker gets the messages only after this round trip: wait after sending them.
        wait_after = list(wait) if outgoing and not self.transport.pushes_in_step else []
        wait = [] if wait_after else wait

        def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for out in outgoing:
                ks, argv = steps.PUBLISH.keys_and_args(self._publish_step(out, room_for))
                pipe.evalsha(self._publish.sha, len(ks), *ks, *argv)
            for channel in read:
                pipe.hgetall(self.keys.stats(channel))
                pipe.hlen(self.keys.pending(channel))
                pipe.get(self.keys.held(channel))
                pipe.zcard(self.keys.backlog(channel))
            if wait:
                pipe.blpop([self.keys.notify(c) for c in wait], timeout=max(timeout, 0.01))
            return pipe.execute()

        try:
            replies = send()
        except redis.exceptions.NoScriptError:  # Redis restarted, forgetting it: none of it applied
            self.client.script_load(self._publish.script.script)
            replies = send()
        went, books = _round_replies(outgoing, read, replies)
        for out in outgoing:
            if out.channel in went and out.items:
                self.transport.after_step(out.channel, out.groups())
        for out, reply in zip(outgoing, replies, strict=False):
            if int(reply[0]) < 0 and out.lease is not None:  # fenced: nothing of it went
                raise out.lease.lost(text(self.client.get(out.lease.key) or ""))
        if wait_after:
            self.wait_for_progress(wait_after, timeout)
        return went, books

    def _publish_step(self, out: Outgoing, room_for: int) -> dict[str, Any]:
        """The publish step of ``out``, by name (see :data:`.steps.PUBLISH`)."""
        channel, lease = out.channel, out.lease
        if out.templates is None:  # built once, however often the step waits for room
            out.templates = self.transport.step_templates(channel, out.groups())
        items: list[str | bytes | int] = [part for item in out.items for part in item]
        return {
            "pending": self.keys.pending(channel),
            "stats": self.keys.stats(channel),
            "held": self.keys.held(channel),
            "queue": self.keys.queue_list(channel),
            "steps": self.keys.steps(PUBLISHER),
            "unsent": self.keys.unsent(channel),
            "backlog": self.keys.backlog(channel),
            "run": self.keys.run(out.run or "-"),  # "-": no run noted (the step does not touch it)
            "lease": lease.key if lease is not None else self.keys.channel_lease(channel),  # untouched without a lease
            "lease_holders": self.keys.lease_holders,
            "channel_size": room_for,
            "step": out.step,
            "slot": f"publish:{channel}",
            "mode": self.transport.lua_mode,
            "now": time.time(),
            "tasks": len(out.items),
            "run_channel": str(channel) if out.run else "",
            "taken": out.taken,
            "lease_value": lease.value if lease is not None else "",
            "lease_ttl": lease.ttl_ms if lease is not None else 0,
            "byte_budget": out.byte_budget,
            "items": [*items, *(piece for pieces in out.templates for piece in pieces)],
        }

    def _send(
        self,
        channel: int,
        items: list[messages.Item],
        pipe: redis.client.Pipeline,
        batch: int = 1,
        suspect: bool = False,
    ) -> None:
        """Queue the items, ``batch`` a message; on this Redis, in the same transaction as ``pipe``."""
        self.transport.send(channel, _groups(items, batch), pipe, suspect)

    def channel_sizes(self, sizes: dict[int, int]) -> None:
        """The server says with which ``ChannelSize`` it runs its channels (reloads and devices
        feed backlogs by it)."""
        if sizes:
            self.client.hset(self.keys.channel_sizes, mapping={str(ch): size for ch, size in sizes.items()})

    def feed_backlog(self, channel: int, channel_size: int | None = None) -> int:
        """Move reloaded tasks from the channel's backlog into the channel while there is room
        (``lua/feed.lua``); returns how many went. Any process may do it at any time: the
        server each round, every device of the channel every couple of seconds, a reload."""
        size = channel_size or int(self.client.hget(self.keys.channel_sizes, str(channel)) or DEFAULT_CHANNEL_SIZE)
        books = self.books([channel])[channel]
        room = size - books.waiting
        if books.backlog == 0 or room <= 0:
            return 0
        ids = cast("list[str]", self.client.zrange(self.keys.backlog(channel), 0, room - 1))
        if not ids:  # another process fed them since the books were read
            return 0
        items, sizes = self._outstanding_data(channel, ids)
        gone = [t for t in ids if t not in sizes]
        if gone:  # finished meanwhile (a copy ran elsewhere): nothing to feed
            self.client.zrem(self.keys.backlog(channel), *gone)
        groups = _groups(items, batch_size(books.stats, size), sizes)
        each: list[str | int] = []  # per message: its number of tasks, their ids, the message
        for group, message in zip(groups, self.transport.step_messages(channel, groups), strict=True):
            each += [len(group), *[t for t, _ in group], message]
        fed = self._feed(
            backlog=self.keys.backlog(channel),
            pending=self.keys.pending(channel),
            held=self.keys.held(channel),
            queue=self.keys.queue_list(channel),
            unsent=self.keys.unsent(channel),
            channel_size=size,
            mode=self.transport.lua_mode,
            now=time.time(),
            messages=each,
        )
        went = [text(t) for t in fed]
        sent = set(went)
        self.transport.after_step(channel, [g for g in groups if g[0][0] in sent])
        return len(went)

    def _outstanding_data(self, channel: int, task_ids: Sequence[str]) -> tuple[list[messages.Item], dict[str, int]]:
        """The outstanding tasks among ``task_ids`` as items for new messages, and each one's
        data size. Where a big task's message refers to its data in the books, its data is not
        read here (``''``: :func:`.messages.by_reference`): this may be a device feeding a
        backlog of big tasks. Elsewhere it is read, as text (a frame converted)."""
        ids = list(task_ids)
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hstrlen(self.keys.pending(channel), task_id)
        sizes = {t: int(n) for t, n in zip(ids, pipe.execute(), strict=True) if int(n) > 0}
        refer = self.transport.keeps_frames
        wanted = [t for t in ids if t in sizes and not (refer and sizes[t] >= messages.REF_BYTES)]
        raw = raw_twin(self.client).hmget(self.keys.pending(channel), wanted) if wanted else []
        read = {t: codec.as_text(d) for t, d in zip(wanted, raw, strict=True) if d is not None}
        kept = [t for t in ids if t in sizes and (t in read or t not in wanted)]  # none finished meanwhile
        items: list[messages.Item] = [(t, read.get(t, "")) for t in kept]
        return items, sizes

    def republish(self, channel: int, task_ids: Sequence[str], suspect: bool = False) -> int:
        """Put outstanding tasks on the queue again (their data from the books), one a message;
        returns how many. ``suspect``: see :func:`messages.task_message`."""
        items, _ = self._outstanding_data(channel, task_ids)
        if items:
            self._send(channel, items, self.client.pipeline(transaction=True), suspect=suspect)
        return len(items)

    def finish(
        self,
        channel: int,
        device: str,
        outcomes: Iterable[Outcome],
        message_id: str = "",
        busy: float = 0.0,
        step: str = "",
        writer: str = "",
        claim: str = "",
    ) -> Finished:
        """Record outcomes atomically (``lua/finish.lua``); returns what the step did.

        ``message_id`` (the Celery message that carried them) leaves the device's in-hand
        list and the started marks in the same step; ``busy`` (seconds the tasks took)
        feeds the producer's choice of how many tasks a message carries. ``step`` and
        ``writer`` make a retry safe: a call repeated with the same step id by the same
        writer (one thread of the device) returns the first call's result and changes
        nothing, so a lost reply never counts a task twice. ``claim``: the device's claim, when
        its save function saved the results (see :meth:`claim`).
        """
        listed = list(outcomes)
        if not listed:
            return Finished(0, 0, 0, 0, 0)
        reply = self._finish(
            pending=self.keys.pending(channel),
            meta=self.keys.meta(channel),
            stats=self.keys.stats(channel),
            notify=self.keys.notify(channel),
            results=self.keys.results(channel),
            dead_index=self.keys.dead_index(),
            dead_index_ch=self.keys.dead_index(channel),
            dead_channels=self.keys.dead_channels,
            devices_done=self.keys.devices_done,
            devices_seen=self.keys.devices_seen,
            devices_beats=self.keys.devices_beats,
            inhand=self.keys.inhand(device),
            lost=self.keys.lost(channel),
            started=self.keys.started(channel),
            steps=self.keys.steps(device),
            held=self.keys.held(channel),
            backlog=self.keys.backlog(channel),
            claims=self.keys.claims(channel),
            dead_by_field=self.keys.dead_by_field,
            records=[self.keys.dead_record(o.task_id) for o in listed],
            device=device,
            channel=str(channel),
            message_id=message_id,
            busy=repr(float(busy)),
            step=step or messages.new_task_id(),
            writer=writer or f"{device}:{threading.get_ident()}",
            claim=claim,
            outcomes=[part for o in listed for part in (o.kind, o.task_id, o.result, o.reason, o.traceback)],
        )
        ok, failed, twice, done, backlog, *places = (int(n) for n in reply)
        return Finished(ok, failed, twice, done, backlog, run_twice=tuple(places))

    def claim(self, channel: int, device: str, message_id: str, run: str, task_ids: Sequence[str]) -> list[Claimed]:
        """Claim tasks before a user's save function is called on their results
        (``lua/claim.lua``): a task is saved only by the run that claimed it, so a task that ran
        twice (a device taken for dead that was only frozen, a message delivered twice) is
        saved once. Safe to repeat: a claim made again by its holder stands."""
        if not task_ids:
            return []
        codes = self._claim(
            pending=self.keys.pending(channel),
            claims=self.keys.claims(channel),
            inhand=self.keys.inhand(device),
            records=[self.keys.dead_record(t) for t in task_ids],
            claim=claim_of(device, message_id, run),
            message_id=message_id,
            notes_holds="1" if self.transport.notes_holds else "0",
            task_ids=task_ids,
        )
        return [Claimed(int(code)) for code in codes]

    def mark_claims(
        self, channel: int, device: str, message_id: str, run: str, task_ids: Sequence[str], mark: str
    ) -> list[str]:
        """``mark`` ``'saving'``: the device begins calling its save function on the claimed
        results, so from now on its death may have saved them (a death before this saved
        nothing: its tasks just run again). ``'release'``: it gives its claims up before any
        save (``lua/claim_mark.lua``). Returns the ids it marked: the device saves exactly
        those (a claim a reaper ended meanwhile is not among them)."""
        if not task_ids:
            return []
        marked = self._mark(
            claims=self.keys.claims(channel), claim=claim_of(device, message_id, run), mark=mark, task_ids=task_ids
        )
        return [text(t) for t in marked]

    def wait_for_progress(self, channels: Sequence[int], timeout: float) -> None:
        """Block until a device takes or finishes a message of one of ``channels``, or ``timeout``
        passes."""
        if channels:
            self.client.blpop([self.keys.notify(c) for c in channels], timeout=max(timeout, 0.01))
