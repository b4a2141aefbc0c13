"""The dead-letter store: every failed task with why, where and when.

:class:`FailedTask` is a record, its fields declared once (:attr:`FailedTask.FIELDS`:
how each reads from the hash and where it shows). :class:`RedisDeadLetterStore` keeps
each record in a hash (``mutitask:dead:rec:<id>``) indexed by failure time in one sorted
set per channel and one for all channels, so counting is ``ZCARD`` and listing is
paged. Records are written by ``lua/dead_letter.lua``, from the device's finish step
(``ledger.py``) in the same atomic step that takes the task out of the books.

A reload moves records back in one Lua step per page: each record is
deleted and its task re-entered in the books, in the channel's *backlog*, all
at once, so a task is never in the store and the books together, nor in
neither. The backlog goes into the channel as devices make room
(:meth:`.Ledger.feed_backlog`), through whichever broker carries the tasks
(:mod:`.transports`). A reloaded task keeps its id, so
failing again updates the same record (``failures`` + 1).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import cast

import redis

from mutitask_celery import codec
from mutitask_celery.books import messages, steps
from mutitask_celery.books.records import RECORD_VERSION, FailedTask, decode_record, hash_fields
from mutitask_celery.connection import raw_twin, redis_now, text
from mutitask_celery.errors import RecordNotFound
from mutitask_celery.keys import DEFAULT, Keys

log = logging.getLogger(__name__)

BATCH = 2000  # records a Lua step deletes: big enough to be quick, small enough not to stall Redis
RELOAD_PAGE = 8000  # records a reload step moves (about 50 ms of Redis's time)

PRUNE_BUDGET = 1000


def _cut(text: str) -> str:
    """An unpublishable item's text as its record keeps it: all of it, unless it is too long
    to be written at all (an item too long to travel often is), then its start."""
    limit = codec.MAX_TEXT // 2  # JSON escaping may double it
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _chunks(ids: Iterable[str], size: int) -> Iterator[list[str]]:
    """``ids`` in lists of ``size`` (the last shorter), read as they come."""
    batch: list[str] = []
    for task_id in ids:
        batch.append(task_id)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Pager:
    """The ids an index held at ``until`` (Redis's clock: when the caller began), a page of
    ``size`` at a time, oldest first: O(what matched), never the whole index in memory.

    The reader moves or deletes what it can of each page out of the index, and says how many
    it left there (:meth:`left`, or :meth:`left_of` when the step that acted cannot say):
    those stay at the head (unreadable, another channel's, newer) and the next page starts
    past them. A task that fails again meanwhile re-enters the index later than ``until``
    (failure times are Redis's clock), so it is not met again, and the count at the start caps
    the pages anyway: acting on N records acts on at most N, however fast they fail again.
    """

    def __init__(self, client: redis.Redis, index: str, size: int, until: float | None = None) -> None:
        self.client, self.index, self.size = client, index, size
        self.until = redis_now(client) if until is None else until
        self.budget = int(client.zcard(index))
        self.offset = 0

    def __iter__(self) -> Iterator[list[str]]:
        while self.budget > 0:
            page = cast(
                "list[str]",
                self.client.zrangebyscore(
                    self.index, "-inf", self.until, start=self.offset, num=min(self.size, self.budget)
                ),
            )
            if not page:
                return
            self.budget -= len(page)
            yield page

    def left(self, count: int) -> None:
        """The reader left ``count`` ids of the last page in the index: the next starts past them."""
        self.offset += count

    def left_of(self, page: list[str]) -> None:
        """The reader left those of ``page`` that the index still holds (from before the start)."""
        scores = self.client.zmscore(self.index, page)
        self.left(sum(1 for score in scores if score is not None and score <= self.until))


class RedisDeadLetterStore:
    """The store in Redis, next to the books (see module docstring): what the API, the
    console, the CLI, the web page and the server's producer read and change.

    It has no abstract base and no in-memory twin: a reload is a move into the books in the
    same Lua step (``lua/reload.lua``), so a store without the books would be a different
    store, and a test of it would pass where this one could fail. What the record's fields
    decide (:class:`FailedTask`) is read without a store, and tested so.
    """

    def __init__(
        self,
        client: redis.Redis,
        max_records: int | None = None,
        max_age: float | None = None,
        feed: Callable[[int], object] | None = None,
        keys: Keys = DEFAULT,
    ) -> None:
        self.client, self.keys = client, keys
        self.max_records = max_records
        self.max_age = max_age
        self.feed = feed  # feeds a channel's backlog (Ledger.feed_backlog), after a reload
        self._reload = steps.RELOAD.on(client)
        self._delete = steps.DELETE.on(client)
        self._unpublishable = steps.UNPUBLISHABLE.on(client)

    def count(self, channel: int | None = None) -> int:
        """How many records (one channel, or all)."""
        return int(self.client.zcard(self.keys.dead_index(channel)))

    def _ids(self, channel: int | None, limit: int | None = None, offset: int = 0) -> list[str]:
        stop = -1 if limit is None else offset + limit - 1
        if limit is not None and limit <= 0:
            return []
        return cast("list[str]", self.client.zrange(self.keys.dead_index(channel), offset, stop))  # ids, no scores

    def _load(self, ids: Sequence[str]) -> list[FailedTask]:
        pipe = raw_twin(self.client).pipeline(transaction=False)  # a task's data may be a frame
        for task_id in ids:
            pipe.hgetall(self.keys.dead_record(task_id))
        records = []
        for raw in pipe.execute():
            if raw:
                record = decode_record(hash_fields(raw))
                if record is not None:
                    records.append(record)
        return records

    def failed(self, channel: int | None = None, limit: int | None = None, offset: int = 0) -> list[FailedTask]:
        """Records (one channel, or all) ordered by last failure time, oldest first: ``limit``
        of them from ``offset`` (None: all); an unreadable one is skipped with a warning."""
        return self._load(self._ids(channel, limit, offset))

    def get(self, task_id: str) -> FailedTask:
        """One record; raises :class:`RecordNotFound` (also for one that cannot be read)."""
        raw = raw_twin(self.client).hgetall(self.keys.dead_record(task_id))
        record = decode_record(hash_fields(cast("dict[bytes, bytes]", raw))) if raw else None
        if record is None:
            raise RecordNotFound(task_id)
        return record

    def _batches(self, channel: int | None, ids: Iterable[str] | None) -> Iterator[list[str]]:
        """Ids to delete, a bounded batch at a time (never the whole store in memory): the ids
        given, or those an index holds when this is called (see :class:`_Pager`)."""
        if ids is not None:
            yield from _chunks(ids, BATCH)
            return
        pager = _Pager(self.client, self.keys.dead_index(channel), BATCH)
        for page in pager:
            yield page  # the caller deletes what it can of it
            pager.left_of(page)

    def reload(self, channel: int | None = None, ids: Iterable[str] | None = None) -> int:
        """Put records back (``lua/reload.lua``), a page at a time: each task enters its
        channel's backlog in the books, and goes out as devices make room in the channel
        (:meth:`Ledger.feed_backlog`, run here once per channel, then by the server and the
        devices). Returns how many moved."""
        moved: Counter[int] = Counter()
        for ch, page, pager in self._to_reload(channel, ids):
            n, left = self._reload_page(ch, page)
            moved[ch] += n
            if pager is not None:
                pager.left(len(left))
        for ch, n in moved.items():
            if n and self.feed is not None:
                self.feed(ch)  # the first ones go out at once, if devices have room
        total = sum(moved.values())
        if total:
            log.info("reloaded %d failed task(s); they go out as devices make room", total)
        return total

    def _to_reload(
        self, channel: int | None, ids: Iterable[str] | None
    ) -> Iterator[tuple[int, list[str], _Pager | None]]:
        """What a reload moves, as pages of one channel's ids for ``lua/reload.lua``: the ids
        given (of ``channel`` only, when given); else the channel's index; else every channel's
        index, then what only the all-channels index names (an entry of it whose record is
        gone is dropped). A page of a channel's index comes with its pager, to be told how
        many the step left there; the others step over what they left themselves. Every index
        is read as it was when the call began: a task reloaded from its channel's index that
        fails again meanwhile is not met again in the all-channels one."""
        if ids is not None:
            for batch in _chunks(ids, BATCH):
                for ch, chosen in self._by_channel(batch).items():
                    if channel is None or ch == channel:
                        yield ch, chosen, None
            return
        began = redis_now(self.client)
        for ch in [channel] if channel is not None else self.channels():
            pager = _Pager(self.client, self.keys.dead_index(ch), RELOAD_PAGE, began)
            for page in pager:
                yield ch, page, pager
        if channel is None:
            strays = _Pager(self.client, self.keys.dead_index(), BATCH, began)
            for page in strays:
                grouped = self._by_channel(page)
                self._drop_strays(page, grouped)
                for ch, chosen in grouped.items():
                    yield ch, chosen, None
                strays.left_of(page)

    def channels(self) -> list[int]:
        """The channels that have records (every record's writer adds its channel to the set; a
        channel may stay in it after its last record went)."""
        found = []
        for ch in self.client.smembers(self.keys.dead_channels):
            try:
                found.append(int(ch))
            except ValueError:
                continue
        return sorted(found)

    def _by_channel(self, ids: Sequence[str]) -> dict[int, list[str]]:
        """Chosen ids by the channel their record names (records gone or unreadable left out)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(self.keys.dead_record(task_id), "channel")
        grouped: dict[int, list[str]] = {}
        for task_id, ch in zip(ids, pipe.execute(), strict=True):
            try:
                grouped.setdefault(int(ch), []).append(task_id)
            except (TypeError, ValueError):
                continue
        return grouped

    def _reload_page(self, channel: int, ids: Sequence[str]) -> tuple[int, list[str]]:
        """Move a page of the channel's records (``lua/reload.lua``); returns how many moved, and
        the ids left alone (another channel's, unreadable, or newer)."""
        prefix = self.keys.dead_record_prefix  # self.keys.dead_record, without a call per record
        moved, *left = self._reload(
            dead_index=self.keys.dead_index_all,
            dead_index_ch=self.keys.dead_index(channel),
            pending=self.keys.pending(channel),
            meta=self.keys.meta(channel),
            stats=self.keys.stats(channel),
            backlog=self.keys.backlog(channel),
            records=[prefix + t for t in ids],
            channel=channel,
            now=repr(time.time()),
            version=RECORD_VERSION,
            task_ids=ids,
        )
        for task_id in left:
            log.warning("not reloading dead-letter record %s: unreadable or written by a newer version", task_id)
        return int(moved), [text(t) for t in left]

    def delete(self, channel: int | None = None, ids: Iterable[str] | None = None) -> int:
        """Remove records for good (the ids given, of ``channel`` only when given; else the
        channel's, or all); returns how many."""
        deleted = 0
        for batch in self._batches(channel, ids):
            deleted += self._delete_page(batch, only=channel)
        return deleted

    def _drop_strays(self, ids: Sequence[str], grouped: dict[int, list[str]]) -> None:
        """Drop the index entries of ``ids`` that :meth:`_by_channel` found no record for, in
        ``lua/delete.lua``: only those still without a record in that step (one that failed
        again meanwhile keeps its new entry)."""
        known = {t for chosen in grouped.values() for t in chosen}
        strays = [t for t in ids if t not in known]
        if strays:
            self._delete(
                dead_index=self.keys.dead_index_all,
                dead_index_ch=self.keys.dead_index_all,  # no channel: the index of all stands in
                dropped=self.keys.dead_dropped,
                records=[self.keys.dead_record(t) for t in strays],
                count="",
                channel="",
                task_ids=strays,
            )

    def _delete_page(self, ids: Sequence[str], only: int | None = None, count: bool = False) -> int:
        """Delete records (``lua/delete.lua``, one step per channel: every key it touches is named
        to it, so each record's channel is read first); ``only``: of that channel; ``count``: as
        the retention limits' drops. An index entry whose record is gone is dropped."""
        grouped = self._by_channel(ids)
        self._drop_strays(ids, grouped)
        deleted = 0
        for ch, chosen in grouped.items():
            if only is not None and ch != only:
                continue
            deleted += int(
                self._delete(
                    dead_index=self.keys.dead_index_all,
                    dead_index_ch=self.keys.dead_index(ch),
                    dropped=self.keys.dead_dropped,
                    records=[self.keys.dead_record(t) for t in chosen],
                    count="count" if count else "",
                    channel=ch,
                    task_ids=chosen,
                )
            )
        return deleted

    def prune(self) -> int:
        """Apply the retention limits (cap, age); returns how many records were dropped.

        A record's age is judged in Redis's clock, in which its failure time was written: a
        host whose own clock runs ahead would otherwise drop records written a moment ago."""
        dropped = 0
        if self.max_age is not None:
            cutoff = f"({redis_now(self.client) - self.max_age!r}"
            while old := cast(
                "list[str]",
                self.client.zrangebyscore(self.keys.dead_index_all, "-inf", cutoff, start=0, num=PRUNE_BUDGET),
            ):
                dropped += self._delete_page(old, count=True)
                if len(old) < PRUNE_BUDGET:
                    break
        if self.max_records is not None:
            while (
                excess := min(int(self.client.zcard(self.keys.dead_index_all)) - self.max_records, PRUNE_BUDGET)
            ) > 0:
                oldest = cast("list[str]", self.client.zrange(self.keys.dead_index_all, 0, excess - 1))
                n = self._delete_page(oldest, count=True)
                dropped += n
                if n == 0:  # only stray index entries, dropped now
                    break
        if dropped:
            log.info("dead-letter retention dropped %d record(s)", dropped)
        return dropped

    def ids_at(self, channel: int, positions: Sequence[int]) -> list[str]:
        """Ids at 0-based positions in the channel's order (the operator console's index): one
        record read each, never the channel's all (O(log N) each)."""
        found: list[str] = []
        for i in positions:
            if i >= 0:
                found += [record.id for record in self.failed(channel, limit=1, offset=i)]
        return found

    def dropped(self, channel: int | None = None) -> int:
        """How many records the retention limits have dropped (one channel, or all)."""
        if channel is not None:
            return int(self.client.hget(self.keys.dead_dropped, str(channel)) or 0)
        return sum(int(v) for v in self.client.hvals(self.keys.dead_dropped))

    def add_unpublishable(self, channel: int, text: str, reason: str) -> str:
        """Record a yielded item that could not be published (e.g. not JSON-able), written by
        ``lua/dead_letter.lua`` like every record (``lua/unpublishable.lua``); returns its id."""
        task_id = messages.new_task_id()
        self._unpublishable(
            record=self.keys.dead_record(task_id),
            dead_index=self.keys.dead_index(),
            dead_index_ch=self.keys.dead_index(channel),
            dead_channels=self.keys.dead_channels,
            meta=self.keys.meta(channel),
            stats=self.keys.stats(channel),
            task_id=task_id,
            channel=channel,
            data=codec.encode(_cut(text)),
            reason=reason,
        )
        self.prune()
        return task_id
