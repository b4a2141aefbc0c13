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

Every call may be narrowed by a :class:`.DeadFilter` (reason, device, time window, task text;
``where=``): :mod:`.dead_search` finds what it names, in O(what matches) where an index allows,
and the steps that act check each record is still what was judged.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import cast

import redis

from mutitask_celery import codec
from mutitask_celery.books import messages, steps
from mutitask_celery.books.dead_filter import EVERYTHING, DeadFilter
from mutitask_celery.books.dead_search import Match, Planner, TimePager, dead_channels
from mutitask_celery.books.records import RECORD_VERSION, FailedTask, decode_record, hash_fields
from mutitask_celery.connection import raw_twin, redis_now, text
from mutitask_celery.errors import ConfigurationError, RecordNotFound
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


@dataclass(frozen=True)
class FoundRecords:
    """A page of records a search found, and where the next page starts (``cursor``: pass it
    back for the records after these; None when there are no more)."""

    records: list[FailedTask]
    cursor: str | None


def _cursor(match: Match) -> str:
    """Where the page after ``match`` starts: its failure time as stored and its id."""
    return f"{match.stamp}:{match.id}"


def _after(cursor: str | None) -> tuple[float, str] | None:
    """The place a cursor names in the failure-time order; raises ConfigurationError for one
    that is not a cursor this store gave."""
    if cursor is None:
        return None
    stamp, sep, task_id = cursor.partition(":")
    try:
        if not sep or not task_id:
            raise ValueError(cursor)
        return float(stamp), task_id
    except ValueError:
        raise ConfigurationError(
            f"not a cursor of this list: {cursor[:80]!r} (pass back the one a page gave)"
        ) from None


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
        self.planner = Planner(client, keys)

    @staticmethod
    def _where(channel: int | None, where: DeadFilter | None) -> DeadFilter:
        """One filter of a channel given apart and a filter (which may name the same channel)."""
        where = where or EVERYTHING
        if channel is None or where.channel == channel:
            return where
        if where.channel is not None:
            raise ConfigurationError(f"two channels given: {channel} and the filter's {where.channel}")
        return replace(where, channel=channel)

    def count(
        self, channel: int | None = None, where: DeadFilter | None = None, ids: Sequence[str] | None = None
    ) -> int:
        """How many records (one channel, or all; those ``where`` names; of ``ids`` when given):
        ``ZCARD`` or ``ZCOUNT`` for a channel and a window, else what a search finds (what a
        reload or delete of the same would move, as it stands now)."""
        where = self._where(channel, where)
        index = self.keys.dead_index(where.channel)
        if ids is None and not where.by_content:
            if where.since is None and where.until is None:
                return int(self.client.zcard(index))
            since, until = (("-inf" if v is None else repr(v)) for v in (where.since, where.until))
            return int(self.client.zcount(index, since, "+inf" if where.until is None else until))
        return sum(len(page) for page in self.planner.search(where, ids))

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

    def counts(self, where: DeadFilter) -> dict[int, int]:
        """How many records ``where`` names, by channel (the channels without any left out): one
        search, whatever the number of channels."""
        found: Counter[int] = Counter()
        for page in self.planner.search(where):
            found.update(m.channel for m in page)
        return dict(sorted(found.items()))

    def failed(
        self, channel: int | None = None, limit: int | None = None, offset: int = 0, where: DeadFilter | None = None
    ) -> list[FailedTask]:
        """Records (one channel, or all; those ``where`` names) ordered by last failure time,
        oldest first: ``limit`` of them from ``offset`` (None: all); an unreadable one is
        skipped with a warning."""
        where = self._where(channel, where)
        if not where.narrows:
            return self._load(self._ids(where.channel, limit, offset))
        return self.find(where, limit, offset).records

    def find(
        self, where: DeadFilter, limit: int | None = None, offset: int = 0, cursor: str | None = None
    ) -> FoundRecords:
        """The records ``where`` names, oldest failure first: ``limit`` of them (None: all), from
        ``offset`` of those after ``cursor`` (a :attr:`FoundRecords.cursor`; None: from the first)."""
        if limit is not None and limit <= 0:
            return FoundRecords([], None)
        after = _after(cursor)
        if after is not None and (where.since is None or where.since < after[0]):
            where = replace(where, since=after[0])  # the window need not be read again up to there
        matches, more = self._page(where, limit, offset, after)
        cursor_next = _cursor(matches[-1]) if more and matches else None
        return FoundRecords(self._load([m.id for m in matches]), cursor_next)

    def _page(
        self, where: DeadFilter, limit: int | None, offset: int, after: tuple[float, str] | None
    ) -> tuple[list[Match], bool]:
        """``limit`` matches from ``offset`` in failure-time order (after ``after``), and whether
        more follow. The failure-time window gives them in order, and stops as soon as it has
        them; the field index's candidates (fewer than the window holds, or it would not be
        read) are kept to the first ``offset + limit`` by a bounded heap."""
        end = None if limit is None else offset + limit
        search = self.planner.search(where)
        matches = (m for page in search for m in page if after is None or m.position > after)
        if search.source.ordered:
            found = list(islice(matches, None if end is None else end + 1))
        elif end is None:
            found = sorted(matches, key=lambda m: m.position)
        else:
            found = heapq.nsmallest(end + 1, matches, key=lambda m: m.position)
        return found[offset:end], end is not None and len(found) > end

    def get(self, task_id: str) -> FailedTask:
        """One record; raises :class:`RecordNotFound` (also for one that cannot be read)."""
        raw = raw_twin(self.client).hgetall(self.keys.dead_record(task_id))
        record = decode_record(hash_fields(cast("dict[bytes, bytes]", raw))) if raw else None
        if record is None:
            raise RecordNotFound(task_id)
        return record

    def _batches(self, channel: int | None, ids: Iterable[str] | None) -> Iterator[list[str]]:
        """Ids to delete, a bounded batch at a time (never the whole store in memory): the ids
        given, or those an index holds when this is called (see :class:`.TimePager`)."""
        if ids is not None:
            yield from _chunks(ids, BATCH)
            return
        pager = TimePager(self.client, self.keys.dead_index(channel), BATCH)
        for page in pager:
            yield page  # the caller deletes what it can of it
            pager.left_of(page)

    def reload(
        self, channel: int | None = None, ids: Iterable[str] | None = None, where: DeadFilter | None = None
    ) -> int:
        """Put records back (``lua/reload.lua``), a page at a time: each task enters its
        channel's backlog in the books, and goes out as devices make room in the channel
        (:meth:`Ledger.feed_backlog`, run here once per channel, then by the server and the
        devices). ``where`` narrows it (of ``ids`` when given). Returns how many moved."""
        where = self._where(channel, where)
        moved: Counter[int] = Counter()
        if where.narrows:
            acting = self.planner.acting(where, None if ids is None else list(ids))
            for batch in acting:
                moved[batch.channel] += self._reload_page(batch.channel, batch.ids, batch.stamps, acting.where)[0]
        else:
            for ch, chosen, pager in self._to_reload(where.channel, ids):
                n, left = self._reload_page(ch, chosen)
                moved[ch] += n
                if pager is not None:
                    pager.left(len(left))
        return self._fed(moved)

    def _fed(self, moved: Counter[int]) -> int:
        """Feed each channel that got reloaded tasks; returns how many moved in all."""
        for ch, n in moved.items():
            if n and self.feed is not None:
                self.feed(ch)  # the first ones go out at once, if devices have room
        total = sum(moved.values())
        if total:
            log.info("reloaded %d failed task(s); they go out as devices make room", total)
        return total

    def _to_reload(
        self, channel: int | None, ids: Iterable[str] | None
    ) -> Iterator[tuple[int, list[str], TimePager | None]]:
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
            pager = TimePager(self.client, self.keys.dead_index(ch), RELOAD_PAGE, began)
            for page in pager:
                yield ch, page, pager
        if channel is None:
            strays = TimePager(self.client, self.keys.dead_index(), BATCH, began)
            for page in strays:
                grouped = self._by_channel(page)
                self._drop_strays(page, grouped)
                for ch, chosen in grouped.items():
                    yield ch, chosen, None
                strays.left_of(page)

    def channels(self) -> list[int]:
        """The channels that have records (every record's writer adds its channel to the set; a
        channel may stay in it after its last record went)."""
        return dead_channels(self.client, self.keys)

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

    def _reload_page(
        self, channel: int, ids: Sequence[str], stamps: Sequence[str] | None = None, where: DeadFilter = EVERYTHING
    ) -> tuple[int, list[str]]:
        """Move a page of the channel's records (``lua/reload.lua``) that ``where`` holds for (the
        step judges what it can; ``stamps``: each one's last failure time as judged here, it moves
        only if it still has it). Returns how many moved, and the ids left alone (another
        channel's, unreadable, or newer; those the filter passed over are not named)."""
        prefix = self.keys.dead_record_prefix  # self.keys.dead_record, without a call per record
        moved, _passed, *left = self._reload(
            dead_index=self.keys.dead_index_all,
            dead_index_ch=self.keys.dead_index(channel),
            pending=self.keys.pending(channel),
            meta=self.keys.meta(channel),
            stats=self.keys.stats(channel),
            backlog=self.keys.backlog(channel),
            dead_by_field=self.keys.dead_by_field,
            records=[prefix + t for t in ids],
            channel=channel,
            now=repr(time.time()),
            version=RECORD_VERSION,
            **where.lua_clauses(),
            stamped="" if stamps is None else "1",
            ids_then_stamps=[*ids, *(stamps or ())],
        )
        for task_id in left:
            log.warning("not reloading dead-letter record %s: unreadable or written by a newer version", task_id)
        return int(moved), [text(t) for t in left]

    def delete(
        self, channel: int | None = None, ids: Iterable[str] | None = None, where: DeadFilter | None = None
    ) -> int:
        """Remove records for good (the ids given, of ``channel`` only when given; else the
        channel's, or all; ``where`` narrows it); returns how many."""
        where = self._where(channel, where)
        deleted = 0
        if where.narrows:
            acting = self.planner.acting(where, None if ids is None else list(ids))
            for batch in acting:
                deleted += self._delete_group(batch.channel, batch.ids, stamps=batch.stamps, where=acting.where)
            return deleted
        for chosen in self._batches(where.channel, ids):
            deleted += self._delete_page(chosen, only=where.channel)
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
                dead_by_field=self.keys.dead_by_field,
                records=[self.keys.dead_record(t) for t in strays],
                count="",
                channel="",
                **EVERYTHING.lua_clauses(),
                stamped="",
                ids_then_stamps=strays,
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
            deleted += self._delete_group(ch, chosen, count)
        return deleted

    def _delete_group(
        self,
        channel: int,
        ids: Sequence[str],
        count: bool = False,
        stamps: Sequence[str] | None = None,
        where: DeadFilter = EVERYTHING,
    ) -> int:
        """Delete records of one channel (``lua/delete.lua``) that ``where`` holds for (see
        :meth:`_reload_page`). Returns how many went."""
        return int(
            self._delete(
                dead_index=self.keys.dead_index_all,
                dead_index_ch=self.keys.dead_index(channel),
                dropped=self.keys.dead_dropped,
                dead_by_field=self.keys.dead_by_field,
                records=[self.keys.dead_record(t) for t in ids],
                count="count" if count else "",
                channel=channel,
                **where.lua_clauses(),
                stamped="" if stamps is None else "1",
                ids_then_stamps=[*ids, *(stamps or ())],
            )
        )

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
            dead_by_field=self.keys.dead_by_field,
            task_id=task_id,
            channel=channel,
            data=codec.encode(_cut(text)),
            reason=reason,
        )
        self.prune()
        return task_id
