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


def redis_restart(client: redis.Redis) -> str:
    """``' (Redis restarted N s ago)'`` when Redis says so (``INFO``; an ACL may refuse it), else ``''``."""
    try:
        uptime = int(client.info("server").get("uptime_in_seconds", -1))
    except (redis.RedisError, ValueError, TypeError):
        return ""
    return f" (Redis restarted {uptime} s ago)" if uptime >= 0 else ""


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

        ``client``: the Redis to ask, for the message only, when it restarted.
        """
        lower = [
            f"{name} was {at_least[name]}, now {value}"
            for name, value in values.items()
            if value < at_least.get(name, 0)
        ]
        if lower:
            note = "" if client is None else redis_restart(client)
            raise BooksLost(f"Redis lost data since {_when(self.whole_at)}{note}: {'; '.join(lower)}. {ADVICE}")
        with self._lock:
            for name, value in values.items():
                self._high[name] = max(self._high.get(name, 0), value)
            self.whole_at = time.time()
