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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, cast

import redis

from mutitask_celery import codec
from mutitask_celery.books import messages, steps
from mutitask_celery.connection import raw_twin, redis_now, text
from mutitask_celery.errors import RecordNotFound
from mutitask_celery.keys import DEFAULT, Keys
from mutitask_celery.tables import local_time

log = logging.getLogger(__name__)

RECORD_VERSION = 1
BATCH = 2000  # records a Lua step deletes: big enough to be quick, small enough not to stall Redis
RELOAD_PAGE = 8000  # records a reload step moves (about 50 ms of Redis's time)

PRUNE_BUDGET = 1000


class Kind(str, Enum):
    """How a record field reads from its hash, leaves :meth:`FailedTask.as_dict` and shows.

    The value is the word the web page's script knows it by (``mt.field`` in
    ``static/common.js``), so a new field of a known kind shows without touching the script.
    """

    WORD = "word"  # a short text (an id, a device's name): shown whole
    TEXT = "text"  # a text that may be long (a reason, a traceback): cut where shown
    INT = "int"
    TIME = "time"  # Unix seconds in Redis's clock
    VALUE = "value"  # a task's data or result as the codec wrote it (a frame, for a big task)

    def read(self, raw: str | bytes) -> Any:
        """The value from a hash field that a raw client read (see :func:`_fields`)."""
        if self is Kind.VALUE:
            return codec.decode(raw)
        value = text(raw)
        if self is Kind.INT:
            return int(value)
        if self is Kind.TIME:
            return float(value)
        return value

    @property
    def long(self) -> bool:
        """Cut where it is shown, with its whole size beside it: one field may be megabytes."""
        return self in (Kind.TEXT, Kind.VALUE)


@dataclass(frozen=True)
class Column:
    """A field's column in ``mutitask failed list``: its header, its place from the left (the
    table keeps short fields first and long texts last, not the record's order), and the
    characters it shows of a long text."""

    header: str
    place: int
    width: int | None = None


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a record whose hash lacks this field is unreadable


@dataclass(frozen=True)
class Field:
    """One field of a dead-letter record, declared once on :class:`FailedTask`; the store's
    decoder, :meth:`FailedTask.as_dict`, the web page and ``mutitask failed`` all read it.

    ``absent`` is the value when the hash lacks the field or holds it empty (records written
    before the field existed), or :data:`REQUIRED`. ``label`` is its name on the web page
    (None: not shown there); ``listed``: a column of the page's lists; ``block``: a block of
    its own in a record's view rather than a row (a text that runs to many lines).
    """

    name: str
    kind: Kind
    absent: Any = REQUIRED
    column: Column | None = None
    label: str | None = None
    listed: bool = False
    block: bool = False

    def read(self, raw: Mapping[str, str | bytes]) -> Any:
        """This field of a record's hash; raises ``KeyError`` when it is required and missing,
        ``ValueError`` or ``TypeError`` when it cannot be read."""
        value = raw.get(self.name)
        if self.absent is REQUIRED:
            if value is None:
                raise KeyError(self.name)
        elif not value:
            return self.absent
        return self.kind.read(value)

    def export(self, value: Any) -> Any:
        """The value as :meth:`FailedTask.as_dict` gives it: a task's data or result as its
        text (:func:`.codec.to_text`), a result that is absent as None."""
        if self.kind is not Kind.VALUE or (value is None and self.absent is None):
            return value
        return codec.to_text(value)

    def cell(self, exported: Any) -> str:
        """The value (as :meth:`export` gave it) in its column of ``mutitask failed list``."""
        if self.kind is Kind.TIME:
            return local_time(exported)
        cell = str(exported)
        width = self.column.width if self.column else None
        if width is None or len(cell) <= width:
            return cell
        return cell[:width] + ("..." if self.kind is Kind.VALUE else "")  # else its start reads as a whole value


def _record(kind: Kind, absent: Any = REQUIRED, **shown: Any) -> dict[str, Any]:
    """A :class:`FailedTask` field's metadata: how it is stored and shown (see :class:`Field`)."""
    return {"record": {"kind": kind, "absent": absent, **shown}}


@dataclass(frozen=True)
class FailedTask:
    """One dead-letter record.

    Each field is declared once, here, with how its hash field reads and where it shows
    (:class:`Field`); :data:`FIELDS` collects them in this order, which is the order of
    :meth:`as_dict`, the web page's lists and ``mutitask failed show``. A new field is a line
    here (with ``absent``: records written before it lack it) and its value in
    ``lua/dead_letter.lua``'s writer; the pages lay it out by ``label``, ``listed`` and
    ``block`` and show it by its :class:`Kind`. The hash also holds ``v``
    (:data:`RECORD_VERSION`) and ``claim`` (read only by the Lua steps: see ``lua/claim.lua``).
    """

    id: str = field(metadata=_record(Kind.WORD, column=Column("ID", 1)))
    channel: int = field(metadata=_record(Kind.INT, column=Column("CH", 2), label="Channel", listed=True))
    data: Any = field(  # the task exactly as the generator yielded it
        metadata=_record(Kind.VALUE, column=Column("TASK", 7, 40), label="Task", listed=True, block=True)
    )
    reason: str = field(metadata=_record(Kind.TEXT, "", column=Column("REASON", 6, 40), label="Reason", listed=True))
    traceback: str = field(metadata=_record(Kind.TEXT, "", label="Traceback", block=True))
    device: str = field(metadata=_record(Kind.WORD, "", column=Column("DEVICE", 5), label="Device", listed=True))
    first_failed: float = field(metadata=_record(Kind.TIME, 0.0, label="First failed"))
    last_failed: float = field(
        metadata=_record(Kind.TIME, 0.0, column=Column("LAST FAILED", 4), label="Last failed", listed=True)
    )
    failures: int = field(metadata=_record(Kind.INT, 1, column=Column("FAILS", 3), label="Failures", listed=True))
    result: Any = field(  # kept when the save function failed
        default=None, metadata=_record(Kind.VALUE, None, label="Result kept", block=True)
    )

    FIELDS: ClassVar[tuple[Field, ...]]

    @classmethod
    def from_hash(cls, raw: Mapping[str, str | bytes]) -> FailedTask:
        """A record from its hash's fields (text, but a task's data may be a frame: see
        :func:`_fields`); raises ``KeyError``, ``ValueError`` or ``TypeError`` when it cannot
        be read."""
        return cls(**{f.name: f.read(raw) for f in cls.FIELDS})

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (task data and result as their JSON text values)."""
        return {f.name: f.export(getattr(self, f.name)) for f in self.FIELDS}


FailedTask.FIELDS = tuple(Field(name=f.name, **f.metadata["record"]) for f in fields(FailedTask))
_FRAMES = {f.name.encode() for f in FailedTask.FIELDS if f.kind is Kind.VALUE}  # fields that may hold a frame
_COLUMNS = sorted(((f.column, f) for f in FailedTask.FIELDS if f.column is not None), key=lambda c: c[0].place)


def table_rows(records: Sequence[FailedTask]) -> list[tuple[str, ...]]:
    """Rows of ``mutitask failed list``, the header first: the fields with a :class:`Column`."""
    rows = [tuple(column.header for column, _ in _COLUMNS)]
    for record in records:
        exported = record.as_dict()
        rows.append(tuple(f.cell(exported[f.name]) for _, f in _COLUMNS))
    return rows


def _fields(raw: dict[bytes, bytes]) -> dict[str, str | bytes]:
    """A record's fields as Redis gave them to a raw client: text, but a task's data that is a
    frame stays ``bytes`` (see :func:`.codec.encode_binary`)."""
    return {k.decode(): v if k in _FRAMES and codec.is_frame(v) else v.decode(errors="replace") for k, v in raw.items()}


def decode_record(raw: Mapping[str, str | bytes]) -> FailedTask | None:
    """A record from its Redis hash, or None (with a warning) when it cannot be read: written
    by a newer version, or a field unreadable. Its fields are text, but a task's data may be
    a frame (see :func:`_fields`)."""
    name = text(raw.get("id", "?"))
    try:
        version = int(text(raw.get("v", "0")))
        if version > RECORD_VERSION:
            log.warning("skipping dead-letter record %s: written by a newer version (v%s)", name, version)
            return None
        return FailedTask.from_hash(raw)
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("skipping unreadable dead-letter record %s: %s", name, exc)
        return None


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
                record = decode_record(_fields(raw))
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
        record = decode_record(_fields(cast("dict[bytes, bytes]", raw))) if raw else None
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
