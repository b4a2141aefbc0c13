"""Books that go backwards: Redis came back without some of its data.

Every counter in the books only ever grows: per channel the tasks published,
succeeded, failed, run twice, reloaded; per device the tasks it finished. A Redis
that restarts without its append-only file, or replays only part of it (Redis
7.0 refusing every ``MULTI`` of a file written under an ACL whose default user is
off, redis/redis#14541), comes back with some of them lower than a process last
read them, and with tasks the books held gone. Reporting on from there would
print a negative "succeeded" and exit as if all was well; so the server and the
devices compare what they read with the highest values they have seen, and stop
with :class:`BooksLost`, naming the last time the books were seen whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import redis

from mutitask_celery.errors import BooksLost
from mutitask_celery.tables import local_time

ADVICE = (
    "The run cannot be counted from these books: see 'When Redis loses data' in the README "
    "(reload what the dead-letter store still holds, rerun the channels, or resume)."
)


def _when(ts: float | None) -> str:
    return "this process started" if ts is None else local_time(ts)


_STARTED = time.monotonic()  # books not seen whole yet: they are as old as this process


def redis_run(client: redis.Redis) -> str:
    """Redis's ``run_id``, new at every start of it; ``''`` when ``INFO`` is refused (an ACL)."""
    try:
        return str(client.info("server").get("run_id", ""))
    except redis.RedisError:
        return ""


def redis_note(client: redis.Redis, run: str, whole_for: float) -> str:
    """What Redis says of the loss, for the message (``INFO``; an ACL may refuse it: then ``''``).

    ``' (Redis restarted N s ago)'`` only when it did since the books were seen whole: its
    ``run_id`` is not ``run`` (the one it had then), or, that unknown, its uptime (whole
    seconds) is surely shorter than ``whole_for``, the seconds since; and ``' (Redis evicted N
    keys (maxmemory-policy P))'`` when it evicted keys (a policy other than ``noeviction``
    with a ``maxmemory`` it reached). The two causes call for different mends.
    """
    try:
        info = client.info()
        uptime, evicted = int(info.get("uptime_in_seconds", -1)), int(info.get("evicted_keys", 0))
    except (redis.RedisError, ValueError, TypeError):
        return ""
    notes = []
    restarted = info.get("run_id") != run if run else 0 <= uptime and uptime + 1 <= whole_for
    if restarted:
        notes.append(f"Redis restarted {uptime} s ago")
    if evicted > 0:
        notes.append(f"Redis evicted {evicted} keys (maxmemory-policy {info.get('maxmemory_policy', '?')})")
    return f" ({'; '.join(notes)})" if notes else ""


class Watermarks:
    """The highest value seen of each counter, and when every one was last seen whole.

    Thread-safe: several task threads of a device report at once. A caller that
    adds to a counter takes :meth:`mark` before its call and checks the reply
    against the mark plus what it added, so replies arriving out of order never
    look like a loss.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._high: dict[str, int] = {}
        self.whole_at: float | None = None
        self._whole_since = _STARTED  # the same moment on the monotonic clock
        self._redis_run: str | None = None  # Redis's run_id when the books were first seen whole

    def mark(self) -> dict[str, int]:
        """The highest values so far (taken before a call that reads or adds to the counters)."""
        with self._lock:
            return dict(self._high)

    def forget(self, name: str) -> None:
        """The books dropped this counter on purpose (a device the roster forgot): start afresh."""
        with self._lock:
            self._high.pop(name, None)

    def check(self, values: Mapping[str, int], at_least: Mapping[str, int], client: redis.Redis | None = None) -> None:
        """Raise :class:`BooksLost` when a value is below its ``at_least``; else keep the new highs.

        ``client``: the Redis to ask, for the message only, whether it restarted or evicted keys.
        """
        lower = [
            f"{name} was {at_least[name]}, now {value}"
            for name, value in values.items()
            if value < at_least.get(name, 0)
        ]
        if lower:
            since = time.monotonic() - self._whole_since
            note = "" if client is None else redis_note(client, self._redis_run or "", since)
            raise BooksLost(f"Redis lost data since {_when(self.whole_at)}{note}: {'; '.join(lower)}. {ADVICE}")
        with self._lock:
            for name, value in values.items():
                self._high[name] = max(self._high.get(name, 0), value)
            self.whole_at, self._whole_since = time.time(), time.monotonic()
        if client is not None and self._redis_run is None:  # asked once: a restart gives another
            self._redis_run = redis_run(client)
