"""Finding the dead-letter records a :class:`.DeadFilter` names, a page at a time: in
O(what matches) where an index allows, never the whole store in memory.

**Candidates, then judgement.** A search takes its candidates from one *source*, then reads
just the fields the filter needs of each (``lua/peek.lua``: an ``HMGET`` each, one call a
page) and keeps those the filter holds for (:class:`Match`). The sources:

- the failure-time index (a channel's, or all channels'): the window ``since``..``until`` is a
  ``ZRANGEBYSCORE`` (its scores are the records' last failure times, Redis's clock), so a
  channel and a time window cost what they hold, oldest failure first;
- the field index (``lua/dead_index.lua``): the records of a device, or those whose reason
  starts with a glob's text before its first wildcard (``ConnectionError*``), as
  ``ZRANGEBYLEX`` ranges;
- the ids a caller named.

The smallest source wins (``ZCOUNT`` and ``ZLEXCOUNT`` say how big each is in one round
trip): a filtered reload of 10,000 ``ConnectionError``\\ s among a million records reads
10,000 candidates. What no index can find, a reason's substring (it may be anywhere in the
text) and a task's text, is judged over the candidates the other clauses leave (the window, at
worst the whole store), which is then O(what the window holds).

**Why a field index, and not a scan of the window.** A scan reads every record of the window
to find a few: at a million records that is seconds of Redis's time for ten thousand matches,
many times what moving them costs, and a filtered reload of 10,000 would crawl at a few
thousand records a second where the index lets it move at the unfiltered reload's rate
(``bench/dead_letter_reload.py``). The index costs a sorted-set entry per record and per
indexed field (a value's first :data:`.INDEX_CUT` bytes), written by the Lua steps that write
and remove records, in the same step, so it never disagrees with the store; the fields it
covers are the ones :class:`.FailedTask` marks ``indexed``. That is paid by every write and
removal: an unfiltered reload of a million records took about 40 % longer with it (the README
has the figures). Its entries are candidates only: a value is cut, and a short device name
matches every host, so each is judged on the record's whole fields.

**Acting on what matched when the call began.** The window ends, at the latest, when the call
began (Redis's clock, in which failure times are written). A reload or delete whose filter
Redis can judge (a window, a device, a reason's substring or ``text*``) hands its candidates to
``lua/reload.lua`` / ``lua/delete.lua`` unread: the step judges each record as it moves it
(``lua/dead_match.lua``), in one atomic step. Another filter (a glob beyond ``text*``, a task's
text) is judged here first, and each match carries its last failure time as read (its
*stamp*): the step moves a record only if it still has it. Either way a record written again
meanwhile (reloaded by someone else, failed again, perhaps for another reason) is newer than
the call: left alone, never moved twice by one call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import redis

from mutitask_celery import codec
from mutitask_celery.books import steps
from mutitask_celery.books.dead_filter import DeadFilter
from mutitask_celery.books.records import INDEXED, RECORD_VERSION, index_range
from mutitask_celery.connection import raw_twin, redis_now
from mutitask_celery.keys import Keys

log = logging.getLogger(__name__)

PAGE = 8000  # candidates judged at a time (a reload step's page)
TEXT_PAGE = 500  # ... when the task's data is read too (a task may be megabytes)
REINDEX_PAGE = 1000  # records filed in the field index per step

Candidate = tuple["int | None", str]  # a record's channel (None: not known without reading it) and id


@dataclass(frozen=True)
class Match:
    """A record a filter holds for, as read: its id, channel, last failure time and that time's
    text as stored (the *stamp* the acting step checks)."""

    id: str
    channel: int
    stamp: str
    last_failed: float

    @property
    def position(self) -> tuple[float, str]:
        """Its place in the failure-time index: by time, then by id (the index's own order)."""
        return self.last_failed, self.id


class TimePager:
    """The ids an index holds in the window ``since``..``until`` (Redis's clock), a page of
    ``size`` at a time, oldest first: O(what matched), never the whole index in memory.

    The reader moves or deletes what it can of each page out of the index, and says how many
    it left there (:meth:`left`, or :meth:`left_of` when the step that acted cannot say):
    those stay at the head (unreadable, another channel's, not matching, newer) and the next
    page starts past them. A task that fails again meanwhile re-enters the index later than
    ``until`` (failure times are Redis's clock), so it is not met again, and the count at the
    start caps the pages anyway: acting on N records acts on at most N, however fast they fail
    again.
    """

    ordered = True

    def __init__(
        self,
        client: redis.Redis,
        index: str,
        size: int,
        until: float | None = None,
        since: float | None = None,
        channel: int | None = None,
    ) -> None:
        self.client, self.index, self.size, self.channel = client, index, size, channel  # channel: the index's
        self.until = redis_now(client) if until is None else until
        self.since = "-inf" if since is None else repr(since)
        self.budget = int(client.zcard(index)) if since is None else int(client.zcount(index, self.since, self.until))
        self.offset = 0

    def __iter__(self) -> Iterator[list[str]]:
        while self.budget > 0:
            page = cast(
                "list[str]",
                self.client.zrangebyscore(
                    self.index, self.since, self.until, start=self.offset, num=min(self.size, self.budget)
                ),
            )
            if not page:
                return
            self.budget -= len(page)
            yield page

    def candidates(self) -> Iterator[list[Candidate]]:
        """The pages, each id with the index's channel (None: the index of all channels)."""
        for page in self:
            yield [(self.channel, task_id) for task_id in page]

    def left(self, count: int) -> None:
        """The reader left ``count`` ids of the last page in the index: the next starts past them."""
        self.offset += count

    def left_of(self, page: list[str]) -> None:
        """The reader left those of ``page`` that the index still holds (from before the start)."""
        scores = self.client.zmscore(self.index, page)
        self.left(sum(1 for score in scores if score is not None and score <= self.until))


class Source(Protocol):
    """Where a search's candidates come from (see the module docstring)."""

    ordered: bool  # candidates come oldest failure first

    def candidates(self) -> Iterator[list[Candidate]]: ...

    def left(self, count: int) -> None: ...

    def left_of(self, page: list[str]) -> None: ...


class FieldPager:
    """The records of the field index's entries in ``ranges`` (``ZRANGEBYLEX`` bounds), a page
    at a time, each with its channel (an entry says it). Each page starts past the last entry
    read, whatever the reader did with the ones before (an entry it removed or left changes
    nothing ahead), so it needs no telling; ``budget`` (the entries there at the start) caps the
    pages."""

    ordered = False

    def __init__(self, client: redis.Redis, key: str, ranges: Sequence[tuple[bytes, bytes]], budget: int, size: int):
        self.client, self.key, self.ranges, self.budget, self.size = raw_twin(client), key, ranges, budget, size

    def candidates(self) -> Iterator[list[Candidate]]:
        for low, high in self.ranges:
            while self.budget > 0:
                entries = cast(
                    "list[bytes]", self.client.zrangebylex(self.key, low, high, 0, min(self.size, self.budget))
                )
                if not entries:
                    break
                self.budget -= len(entries)
                low = b"(" + entries[-1]
                yield [_entry_candidate(entry) for entry in entries]

    def left(self, count: int) -> None:
        """Nothing to do: the next page starts past the last entry read."""

    def left_of(self, page: list[str]) -> None:
        """Nothing to do: the next page starts past the last entry read."""


def _entry_candidate(entry: bytes) -> Candidate:
    """The channel and id of a field-index entry (``<field>\\0<value>\\0<channel>\\0<id>``)."""
    _, channel, task_id = entry.rsplit(b"\0", 2)
    return int(channel), task_id.decode()


class IdPager:
    """The ids a caller named, a page at a time (their channels unknown until read)."""

    ordered = False

    def __init__(self, ids: Sequence[str], size: int) -> None:
        self.ids, self.size = list(dict.fromkeys(ids)), size  # each once, in the order given

    def candidates(self) -> Iterator[list[Candidate]]:
        for start in range(0, len(self.ids), self.size):
            yield [(None, task_id) for task_id in self.ids[start : start + self.size]]

    def left(self, count: int) -> None:
        """Nothing to do: the pages are the ids given."""

    def left_of(self, page: list[str]) -> None:
        """Nothing to do: the pages are the ids given."""


def field_ranges(where: DeadFilter) -> dict[str, list[tuple[bytes, bytes]]]:
    """The field index's ranges that hold every record ``where`` can match, by field (a field
    whose clause no range can narrow, such as a reason's substring, is absent)."""
    ranges: dict[str, list[tuple[bytes, bytes]]] = {}
    if where.device is not None and "device" in INDEXED:
        ranges["device"] = [index_range("device", where.device, whole=True)]
        if "@" not in where.device:  # a short name: device2 is also device2@<any host>
            ranges["device"].append(index_range("device", where.device + "@", whole=False))
    if where.reason_prefix and "reason" in INDEXED:
        ranges["reason"] = [index_range("reason", where.reason_prefix, whole=False)]
    return ranges


def dead_channels(client: redis.Redis, keys: Keys) -> list[int]:
    """The channels that have records (every record's writer adds its channel to the set; a
    channel may stay in it after its last record went)."""
    found = []
    for ch in client.smembers(keys.dead_channels):
        try:
            found.append(int(ch))
        except ValueError:
            continue
    return sorted(found)


class FieldIndex:
    """The store's field index (``lua/dead_index.lua``): whether it covers every record, and
    filing the records it lacks (written by a version before it, or by hand)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self._reindex = steps.REINDEX.on(client)

    def complete(self) -> bool:
        """Every record of the failure-time index has its entries, and no entry more (read at one
        instant: every step changes both together)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.zcard(self.keys.dead_by_field)
        pipe.zcard(self.keys.dead_index_all)
        entries, records = pipe.execute()
        return int(entries) == len(INDEXED) * int(records)

    def ensure(self) -> bool:
        """Make the index complete if it is not (a pass over the store, once: logged); returns
        whether it is complete now (not while a version without it still writes records)."""
        if self.complete():
            return True
        log.info("filing the dead-letter records written without the field index (once; a pass over the store)")
        added = self._file_all()
        dropped = self._check_all()
        log.info("dead-letter field index: %d entries added, %d dropped", added, dropped)
        done = self.complete()
        if not done:
            log.warning("the dead-letter field index is still incomplete (a process of an older version writing?)")
        return done

    def _file_all(self) -> int:
        added = 0
        for batch in self._scan(self.keys.dead_index_all):
            ids = [raw.decode() for raw in batch]
            added += self._step("file", ids, ids)
        return added

    def _check_all(self) -> int:
        dropped = 0
        for batch in self._scan(self.keys.dead_by_field):
            dropped += self._step("check", [_entry_candidate(entry)[1] for entry in batch], batch)
        return dropped

    def _step(self, mode: str, ids: list[str], named: Sequence[str | bytes]) -> int:
        reply = self._reindex(
            dead_index=self.keys.dead_index_all,
            dead_by_field=self.keys.dead_by_field,
            records=[self.keys.dead_record(t) for t in ids],
            mode=mode,
            named=named,
        )
        return int(reply)

    def _scan(self, key: str) -> Iterator[list[bytes]]:
        """The members of ``key`` in batches, by ``ZSCAN`` (every member there throughout is met,
        whatever changes meanwhile)."""
        raw = raw_twin(self.client)
        cursor: int = 0
        while True:
            cursor, pairs = cast("tuple[int, list[tuple[bytes, float]]]", raw.zscan(key, cursor, count=REINDEX_PAGE))
            if pairs:
                yield [member for member, _ in pairs]
            if cursor == 0:
                return


class Judge:
    """Reads a page of candidates' fields (just those the filter needs, ``lua/peek.lua``) and
    keeps the records it holds for. A record written by a newer version is never matched (its
    fields may mean something else); one gone meanwhile is not either."""

    def __init__(self, client: redis.Redis, keys: Keys, where: DeadFilter) -> None:
        self.keys, self.where = keys, where
        self._peek = steps.PEEK.on(raw_twin(client))  # a task's data may be a binary frame
        wanted = {"device": where.device, "reason": where.reason, "data": where.text}
        self.fields = ["channel", "last_failed", "v", *(name for name, clause in wanted.items() if clause is not None)]

    def __call__(self, ids: Sequence[str]) -> list[Match]:
        if not ids:
            return []
        prefix, width = self.keys.dead_record_prefix, len(self.fields)
        values = self._peek(records=[prefix + t for t in ids], fields=self.fields)  # one round trip a page
        found = []
        for n, task_id in enumerate(ids):
            match = self._judge(task_id, values[n * width : (n + 1) * width])
            if match is not None:
                found.append(match)
        return found

    def _judge(self, task_id: str, row: list[bytes | None]) -> Match | None:
        """The record's :class:`Match`, or None: gone, unreadable, newer, or not what is asked."""
        channel, stamp, version = row[0], row[1], row[2]
        try:
            if channel is None or stamp is None or (version is not None and int(version) > RECORD_VERSION):
                return None
            ch, when = int(channel), float(stamp)
        except ValueError:
            return None  # unreadable: the list skips it with a warning, a filter never names it
        more = dict(zip(self.fields[3:], row[3:], strict=True))  # device, reason, data: those asked about
        device, reason = (v.decode(errors="replace") if v else "" for v in (more.get("device"), more.get("reason")))
        if not self.where.holds_for(ch, device, reason, when):
            return None
        if self.where.text is not None and not self.where.shows(_task_text(more.get("data"))):
            return None
        return Match(task_id, ch, stamp.decode(), when)


def _task_text(raw: bytes | None) -> str:
    """A task's data as ``mutitask failed show`` prints it ('' when it cannot be read)."""
    if raw is None:
        return ""
    try:
        return codec.to_text(codec.decode(raw))
    except (ValueError, TypeError):
        return ""


@dataclass
class Search:
    """The records a filter names, judged a page at a time (see the module docstring): iterate
    for pages of :class:`Match`."""

    source: Source
    judge: Judge

    def __iter__(self) -> Iterator[list[Match]]:
        for page in self.source.candidates():
            yield self.judge([task_id for _, task_id in page])
            self.source.left(len(page))  # a search only reads: every candidate stays where it was


@dataclass(frozen=True)
class Batch:
    """Records of one channel for a step to act on: ``stamps`` (their failure times as judged)
    when the caller judged them by what Redis cannot (then each acts only if unchanged)."""

    channel: int
    ids: list[str]
    stamps: list[str] | None = None


@dataclass
class Acting:
    """The records a reload or delete acts on, in batches of one channel (see
    :meth:`Planner.acting`). ``where``: the filter with its window ending when the call began,
    whose clauses the acting step checks itself (``lua/dead_match.lua``)."""

    where: DeadFilter
    pages: Iterator[list[Batch]]

    def __iter__(self) -> Iterator[Batch]:
        for page in self.pages:
            yield from page


class Planner:
    """Chooses a search's source: the ids given, or the smallest of the failure-time window and
    the field index's ranges (counted in one round trip; the window wins a tie, as it gives its
    records in time order)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self.field_index = FieldIndex(client, keys)

    def search(self, where: DeadFilter, ids: Sequence[str] | None = None) -> Search:
        """The records ``where`` names (its window ending when this is called, at the latest), of
        ``ids`` when given, judged here."""
        where = where.until_at_most(redis_now(self.client))
        return Search(self._source(where, ids), Judge(self.client, self.keys, where))

    def acting(self, where: DeadFilter, ids: Sequence[str] | None = None) -> Acting:
        """The records a reload or delete of ``where`` acts on, in batches of one channel. A
        filter that Redis can judge whole (``lua/dead_match.lua``: no glob beyond ``text*``, no
        task text) is judged by the acting step alone, candidates going to it unread; another is
        judged here first, each match stamped. After each page the source learns what stayed."""
        where = where.until_at_most(redis_now(self.client))
        if where.judged_by_redis:
            sources = self._acting_sources(where, ids)
            return Acting(
                where, (self._unread(page, where.channel) for source in sources for page in self._pages(source))
            )
        source = self._source(where, ids)
        judge = Judge(self.client, self.keys, where)
        return Acting(where, (self._judged(judge(ids)) for ids in self._id_pages(source)))

    @staticmethod
    def _pages(source: Source) -> Iterator[list[Candidate]]:
        for page in source.candidates():
            yield page
            source.left_of([task_id for _, task_id in page])

    def _id_pages(self, source: Source) -> Iterator[list[str]]:
        for page in self._pages(source):
            yield [task_id for _, task_id in page]

    @staticmethod
    def _judged(matches: list[Match]) -> list[Batch]:
        grouped: dict[int, list[Match]] = {}
        for match in matches:
            grouped.setdefault(match.channel, []).append(match)
        return [Batch(ch, [m.id for m in group], [m.stamp for m in group]) for ch, group in grouped.items()]

    def _unread(self, page: list[Candidate], channel: int | None) -> list[Batch]:
        """Candidates by channel (of ``channel`` only, when given), as they are: the acting step
        judges them. A channel not known (an id given) is read, one pipelined ``HGET`` each (an
        id without a record is dropped)."""
        unknown = [task_id for ch, task_id in page if ch is None]
        found: dict[str, int] = {}
        if unknown:
            pipe = self.client.pipeline(transaction=False)
            for task_id in unknown:
                pipe.hget(self.keys.dead_record(task_id), "channel")
            for task_id, ch in zip(unknown, pipe.execute(), strict=True):
                if ch is not None and str(ch).isdigit():
                    found[task_id] = int(ch)
        grouped: dict[int, list[str]] = {}
        for ch, task_id in page:
            known = ch if ch is not None else found.get(task_id)
            if known is not None and channel in (None, known):
                grouped.setdefault(known, []).append(task_id)
        return [Batch(ch, chosen) for ch, chosen in grouped.items()]

    def _acting_sources(self, where: DeadFilter, ids: Sequence[str] | None) -> list[Source]:
        """Sources whose candidates all say their channel (the step acting on them is one
        channel's): the field index's, or each channel's window, or the ids given."""
        source = self._source(where, ids)
        if not isinstance(source, TimePager) or source.channel is not None:
            return [source]
        size = PAGE
        return [self._window(where, size, ch) for ch in dead_channels(self.client, self.keys)]

    def _window(self, where: DeadFilter, size: int, channel: int | None) -> TimePager:
        return TimePager(self.client, self.keys.dead_index(channel), size, where.until, where.since, channel)

    def _source(self, where: DeadFilter, ids: Sequence[str] | None) -> Source:
        """The ids given, or the smallest of the window and the field index's ranges."""
        size = TEXT_PAGE if where.text is not None else PAGE
        if ids is not None:
            return IdPager(ids, size)
        ranges = field_ranges(where)
        if ranges and not self.field_index.ensure():
            ranges = {}  # an incomplete index could miss records: the window, judged whole, cannot
        index = self.keys.dead_index(where.channel)
        pipe = self.client.pipeline(transaction=False)
        pipe.zcount(index, "-inf" if where.since is None else repr(where.since), cast(float, where.until))
        for bounds in ranges.values():
            for low, high in bounds:
                pipe.zlexcount(self.keys.dead_by_field, low, high)
        counts = [int(c) for c in pipe.execute()]
        window, rest = counts[0], iter(counts[1:])
        sizes = {name: sum(next(rest) for _ in bounds) for name, bounds in ranges.items()}
        best = min(sizes, key=lambda name: sizes[name], default=None)
        if best is None or sizes[best] >= window:
            return self._window(where, size, where.channel)
        return FieldPager(self.client, self.keys.dead_by_field, ranges[best], sizes[best], size)
