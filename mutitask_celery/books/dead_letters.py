"""The dead-letter store: every failed task with why, where and when.

:class:`DeadLetterStore` is the small interface the API, console and CLI use;
:class:`RedisDeadLetterStore` keeps each record in a hash
(``mutitask:dead:rec:<id>``) indexed by failure time in one sorted set per
channel and one for all channels, so counting is ``ZCARD`` and listing is
paged. Records are written by the device's finish script (``ledger.py``) in the
same atomic step that takes the task out of the books.

A reload moves records back in one Lua step per page: each record is
deleted and its task re-entered in the books, in the channel's *backlog*, all
at once, so a task is never in the store and the books together, nor in
neither. The backlog goes into the channel as devices make room
(:meth:`.Ledger.feed_backlog`), through whichever broker carries the tasks
(:mod:`.brokers`). A reloaded task keeps its id, so
failing again updates the same record (``failures`` + 1).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from mutitask_celery import codec, keys
from mutitask_celery.books import messages, scripts
from mutitask_celery.connection import redis_now, text
from mutitask_celery.errors import RecordNotFound

log = logging.getLogger(__name__)

RECORD_VERSION = 1
BATCH = 2000  # records a Lua step deletes: big enough to be quick, small enough not to stall Redis
RELOAD_PAGE = 8000  # records a reload step moves (about 50 ms of Redis's time)

# Deletes records. KEYS[1]: all-channels index, KEYS[2]: the dropped counters
# (touched only when ARGV[2] is 'count'). ARGV[1]: record prefix; then ids.
_DELETE_LUA = """
local function delete(id)
  local ch = redis.call('HGET', ARGV[1] .. id, 'channel')
  redis.call('ZREM', KEYS[1], id)
  if not ch then return 0 end
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1] .. ':' .. ch, id)
  if ARGV[2] == 'count' then redis.call('HINCRBY', KEYS[2], ch, 1) end
  return 1
end
"""

_DELETE = (
    _DELETE_LUA
    + """
local n = 0
for i = 3, #ARGV do n = n + delete(ARGV[i]) end
return n
"""
)

# Retention: drop records older than ARGV[3] (a time, '' for none), then the
# oldest beyond ARGV[4] records ('' for no cap), at most ARGV[5] per call.
_PRUNE = (
    _DELETE_LUA
    + """
local n, budget = 0, tonumber(ARGV[5])
if ARGV[3] ~= '' then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3], 'LIMIT', 0, budget)) do
    n = n + delete(id)
  end
end
if ARGV[4] ~= '' then
  local excess = math.min(redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4]), budget)
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do n = n + delete(id) end
  end
end
return n
"""
)
PRUNE_BUDGET = 1000


@dataclass(frozen=True)
class FailedTask:
    """One dead-letter record."""

    id: str
    channel: int
    data: Any  # the task exactly as the generator yielded it
    reason: str
    traceback: str
    device: str
    first_failed: float
    last_failed: float
    failures: int
    result: Any = None  # kept when the save function failed

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (task data and result as their JSON text values)."""
        return {
            "id": self.id,
            "channel": self.channel,
            "data": codec.to_text(self.data),
            "reason": self.reason,
            "traceback": self.traceback,
            "device": self.device,
            "first_failed": self.first_failed,
            "last_failed": self.last_failed,
            "failures": self.failures,
            "result": None if self.result is None else codec.to_text(self.result),
        }


def decode_record(raw: dict[str, str]) -> FailedTask | None:
    """A record from its Redis hash, or None (with a warning) when it cannot be read."""
    try:
        version = int(raw.get("v", "0"))
        if version > RECORD_VERSION:
            log.warning("skipping dead-letter record %s: written by a newer version (v%s)", raw.get("id"), version)
            return None
        result = raw.get("result") or ""
        return FailedTask(
            id=raw["id"],
            channel=int(raw["channel"]),
            data=codec.decode(raw["data"]),
            reason=raw.get("reason", ""),
            traceback=raw.get("traceback", ""),
            device=raw.get("device", ""),
            first_failed=float(raw.get("first_failed") or 0),
            last_failed=float(raw.get("last_failed") or 0),
            failures=int(raw.get("failures") or 1),
            result=codec.decode(result) if result else None,
        )
    except (KeyError, ValueError, TypeError) as exc:
        log.warning("skipping unreadable dead-letter record %s: %s", raw.get("id", "?"), exc)
        return None


class DeadLetterStore(ABC):
    """What the API, the console and the CLI need from a dead-letter store."""

    @abstractmethod
    def failed(self, channel: int | None = None, limit: int | None = None, offset: int = 0) -> list[FailedTask]:
        """Records ordered by last failure time, oldest first."""

    @abstractmethod
    def count(self, channel: int | None = None) -> int:
        """How many records (one channel, or all)."""

    @abstractmethod
    def get(self, task_id: str) -> FailedTask:
        """One record; raises :class:`RecordNotFound`."""

    @abstractmethod
    def reload(self, channel: int | None = None, ids: Iterable[str] | None = None) -> int:
        """Put records back on their channels; returns how many moved."""

    @abstractmethod
    def delete(self, channel: int | None = None, ids: Iterable[str] | None = None) -> int:
        """Remove records for good; returns how many."""

    @abstractmethod
    def prune(self) -> int:
        """Apply the retention limits; returns how many records were dropped."""

    @abstractmethod
    def dropped(self, channel: int | None = None) -> int:
        """How many records the retention limits have dropped so far."""

    def ids_at(self, channel: int, positions: Sequence[int]) -> list[str]:
        """Ids at 0-based positions in the channel's order (the legacy console's index): one
        record read each, never the channel's all (O(log N) on the Redis store)."""
        found: list[str] = []
        for i in positions:
            if i >= 0:
                found += [record.id for record in self.failed(channel, limit=1, offset=i)]
        return found


class RedisDeadLetterStore(DeadLetterStore):
    """The store in Redis, next to the books (see module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        max_records: int | None = None,
        max_age: float | None = None,
        feed: Callable[[int], object] | None = None,
    ) -> None:
        self.client = client
        self.max_records = max_records
        self.max_age = max_age
        self.feed = feed  # feeds a channel's backlog (Ledger.feed_backlog), after a reload
        self._reload = scripts.load(client, "reload")
        self._delete = client.register_script(_DELETE)
        self._prune = client.register_script(_PRUNE)

    def count(self, channel: int | None = None) -> int:
        return int(self.client.zcard(keys.dead_index(channel)))

    def _ids(self, channel: int | None, limit: int | None = None, offset: int = 0) -> list[str]:
        stop = -1 if limit is None else offset + limit - 1
        if limit is not None and limit <= 0:
            return []
        return cast("list[str]", self.client.zrange(keys.dead_index(channel), offset, stop))  # ids, no scores

    def _load(self, ids: Sequence[str]) -> list[FailedTask]:
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(keys.dead_record(task_id))
        records = []
        for raw in pipe.execute():
            if raw:
                record = decode_record(raw)
                if record is not None:
                    records.append(record)
        return records

    def failed(self, channel: int | None = None, limit: int | None = None, offset: int = 0) -> list[FailedTask]:
        return self._load(self._ids(channel, limit, offset))

    def get(self, task_id: str) -> FailedTask:
        raw = self.client.hgetall(keys.dead_record(task_id))
        record = decode_record({text(k): text(v) for k, v in raw.items()}) if raw else None
        if record is None:
            raise RecordNotFound(task_id)
        return record

    def _batches(self, channel: int | None, ids: Iterable[str] | None) -> Iterator[list[str]]:
        """Ids to act on, a bounded batch at a time (never the whole store in memory)."""
        if ids is not None:
            batch: list[str] = []
            for task_id in ids:
                batch.append(task_id)
                if len(batch) == BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        yield from self._index_pages(channel)

    def _index_pages(self, channel: int | None) -> Iterator[list[str]]:
        """The ids in the store when this is called, a page at a time, oldest first.

        The caller moves or deletes each page out of the index; a record it leaves (unreadable,
        or another channel's) stays at the head and is stepped over. A task that fails again
        meanwhile re-enters the index later than the call's start (failure times are Redis's
        clock), so it is not seen again, and the count at the start caps the pages anyway:
        reloading N records moves at most N, however fast they fail again.
        """
        index = keys.dead_index(channel)
        until = redis_now(self.client)
        budget = int(self.client.zcard(index))
        offset = 0
        while budget > 0:
            page = cast(
                "list[str]", self.client.zrangebyscore(index, "-inf", until, start=offset, num=min(BATCH, budget))
            )
            if not page:
                return
            yield page
            budget -= len(page)
            scores = self.client.zmscore(index, page)
            offset += sum(1 for score in scores if score is not None and score <= until)

    def reload(self, channel: int | None = None, ids: Iterable[str] | None = None) -> int:
        """Put records back (``lua/reload.lua``), a page at a time: each task enters its
        channel's backlog in the books, and goes out as devices make room in the channel
        (:meth:`Ledger.feed_backlog`, run here once per channel, then by the server and the
        devices). Returns how many moved."""
        moved: dict[int, int] = {}
        if ids is not None:
            for batch in self._batches(None, ids):
                for ch, chosen in self._by_channel(batch).items():
                    if channel is None or ch == channel:
                        moved[ch] = moved.get(ch, 0) + self._reload_page(ch, chosen)[0]
        else:
            for ch in [channel] if channel is not None else self._channels():
                moved[ch] = self._reload_channel(ch)
            if channel is None:
                self._reload_strays(moved)
        for ch, n in moved.items():
            if n and self.feed is not None:
                self.feed(ch)  # the first ones go out at once, if devices have room
        total = sum(moved.values())
        if total:
            log.info("reloaded %d failed task(s); they go out as devices make room", total)
        return total

    def _reload_strays(self, moved: dict[int, int]) -> None:
        """What the channels' indexes did not hold (only the global index names them), added
        to ``moved``; an index entry whose record is gone is dropped."""
        for page in self._index_pages(None):
            grouped = self._by_channel(page)
            strays = set(page) - {t for ids in grouped.values() for t in ids}
            if strays:
                self.client.zrem(keys.DEAD_INDEX, *strays)
            for ch, chosen in grouped.items():
                moved[ch] = moved.get(ch, 0) + self._reload_page(ch, chosen)[0]

    def _reload_channel(self, channel: int) -> int:
        """Every record of the channel when called (as :meth:`_index_pages` bounds it), a page
        a step; a record left alone stays at the head and is stepped over."""
        index = keys.dead_index(channel)
        until = redis_now(self.client)
        budget = int(self.client.zcard(index))
        moved = offset = 0
        while budget > 0:
            page = cast(
                "list[str]", self.client.zrangebyscore(index, "-inf", until, start=offset, num=min(RELOAD_PAGE, budget))
            )
            if not page:
                break
            budget -= len(page)
            n, left = self._reload_page(channel, page)
            moved, offset = moved + n, offset + len(left)
        return moved

    def _channels(self) -> list[int]:
        found = []
        for ch in self.client.smembers(keys.DEAD_CHANNELS):
            try:
                found.append(int(ch))
            except ValueError:
                continue
        return sorted(found)

    def _by_channel(self, ids: Sequence[str]) -> dict[int, list[str]]:
        """Chosen ids by the channel their record names (records gone or unreadable left out)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hget(keys.dead_record(task_id), "channel")
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
        prefix = keys.DEAD_RECORD_PREFIX  # keys.dead_record, without a call per record
        ks = [
            keys.DEAD_INDEX,
            keys.dead_index(channel),
            keys.pending(channel),
            keys.meta(channel),
            keys.stats(channel),
            keys.backlog(channel),
            *[prefix + t for t in ids],
        ]
        moved, *left = self._reload(keys=ks, args=[channel, repr(time.time()), RECORD_VERSION, *ids])
        for task_id in left:
            log.warning("not reloading dead-letter record %s: unreadable or written by a newer version", task_id)
        return int(moved), [text(t) for t in left]

    def delete(self, channel: int | None = None, ids: Iterable[str] | None = None) -> int:
        deleted = 0
        for batch in self._batches(channel, ids):
            if channel is not None and ids is not None:
                pipe = self.client.pipeline(transaction=False)
                for task_id in batch:
                    pipe.hget(keys.dead_record(task_id), "channel")
                owners = pipe.execute()
                batch = [t for t, ch in zip(batch, owners, strict=True) if ch is not None and int(ch) == channel]
            if batch:
                deleted += int(
                    self._delete(keys=[keys.DEAD_INDEX, keys.DEAD_DROPPED], args=[keys.DEAD_RECORD_PREFIX, "", *batch])
                )
        return deleted

    def prune(self) -> int:
        """Apply the retention limits (cap, age); returns how many records were dropped."""
        if self.max_records is None and self.max_age is None:
            return 0
        oldest = "" if self.max_age is None else repr(time.time() - self.max_age)
        cap = "" if self.max_records is None else str(self.max_records)
        dropped = 0
        while True:
            n = int(
                self._prune(
                    keys=[keys.DEAD_INDEX, keys.DEAD_DROPPED],
                    args=[keys.DEAD_RECORD_PREFIX, "count", oldest, cap, PRUNE_BUDGET],
                )
            )
            dropped += n
            if n < PRUNE_BUDGET:
                break
        if dropped:
            log.info("dead-letter retention dropped %d record(s)", dropped)
        return dropped

    def dropped(self, channel: int | None = None) -> int:
        """How many records the retention limits have dropped (one channel, or all)."""
        if channel is not None:
            return int(self.client.hget(keys.DEAD_DROPPED, str(channel)) or 0)
        return sum(int(v) for v in self.client.hvals(keys.DEAD_DROPPED))

    def add_unpublishable(self, channel: int, text: str, reason: str) -> str:
        """Record a yielded item that could not be published (e.g. not JSON-able)."""
        task_id = messages.new_task_id()
        now = repr(redis_now(self.client))  # failure times are Redis's clock (see _index_pages)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(
            keys.dead_record(task_id),
            mapping={
                "v": str(RECORD_VERSION),
                "id": task_id,
                "channel": str(channel),
                "data": codec.encode(text),
                "reason": reason,
                "traceback": "",
                "device": "server",
                "first_failed": now,
                "last_failed": now,
                "failures": "1",
                "result": "",
            },
        )
        pipe.zadd(keys.dead_index(), {task_id: float(now)})
        pipe.zadd(keys.dead_index(channel), {task_id: float(now)})
        pipe.sadd(keys.DEAD_CHANNELS, channel)
        pipe.hincrby(keys.stats(channel), "failed", 1)
        pipe.execute()
        self.prune()
        return task_id
