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

Behind replicas that confirm each step (:mod:`.replication`), a counter may read lower for a
while without any loss: a process read a step another had applied on the master but not yet
seen confirmed, and the master died. That writer was never told its step was done, so it
repeats it on the new master (or, if it died too, its tasks run again on another device), and
the counter climbs back. So there a lower counter must stay lower for :func:`grace` seconds
before the run stops: a failover that lost nothing passes, books that really went backwards
still stop it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import redis

from mutitask_celery import settings
from mutitask_celery.errors import BooksLost
from mutitask_celery.replication import confirms
from mutitask_celery.tables import local_time

log = logging.getLogger(__name__)

ADVICE = (
    "The run cannot be counted from these books: see 'When Redis loses data' in the README "
    "(reload what the dead-letter store still holds, rerun the channels, or resume)."
)


def _when(ts: float | None) -> str:
    return "this process started" if ts is None else local_time(ts)


def grace() -> float:
    """Seconds a lower counter may read lower behind confirming replicas: a writer repeats an
    unconfirmed step within seconds; a dead one's tasks run again once it is taken for dead."""
    return 30.0 + 3 * (settings.current().dead_after or 10.0)


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

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # the monotonic clock (a test's own)
        self._lock = threading.Lock()
        self._high: dict[str, int] = {}
        self.whole_at: float | None = None
        self._whole_since = _STARTED  # the same moment on the monotonic clock
        self._redis_run: str | None = None  # Redis's run_id when the books were first seen whole
        self._lower_since: float | None = None  # behind confirming replicas: when counters first read lower

    def mark(self) -> dict[str, int]:
        """The highest values so far (taken before a call that reads or adds to the counters)."""
        with self._lock:
            return dict(self._high)

    def forget(self, name: str) -> None:
        """The books dropped this counter on purpose (a device the roster forgot): start afresh."""
        with self._lock:
            self._high.pop(name, None)

    def check(
        self,
        values: Mapping[str, int],
        at_least: Mapping[str, int],
        client: redis.Redis | None = None,
        confirmed: bool = False,
    ) -> None:
        """Raise :class:`BooksLost` when a value is below its ``at_least``; else keep the new highs.

        ``client``: the Redis to ask, for the message only, whether it restarted or evicted keys;
        when replicas confirm its steps, a lower value stops the run only once it stayed lower
        for :func:`grace` seconds (see the module's docstring), unless ``confirmed``: the values
        are the reply of a step the replicas confirmed, which no failover may take back.
        """
        lower = [
            f"{name} was {at_least[name]}, now {value}"
            for name, value in values.items()
            if value < at_least.get(name, 0)
        ]
        if lower and not confirmed and confirms(client) and not self._lower_for_long(lower):
            return  # maybe a failover's unconfirmed steps, being repeated: the marks stay
        self._lower_since = None
        if lower:
            since = self._clock() - self._whole_since
            note = "" if client is None else redis_note(client, self._redis_run or "", since)
            raise BooksLost(f"Redis lost data since {_when(self.whole_at)}{note}: {'; '.join(lower)}. {ADVICE}")
        with self._lock:
            for name, value in values.items():
                self._high[name] = max(self._high.get(name, 0), value)
            self.whole_at, self._whole_since = time.time(), self._clock()
        if client is not None and self._redis_run is None:  # asked once: a restart gives another
            self._redis_run = redis_run(client)

    def _lower_for_long(self, lower: list[str]) -> bool:
        """Whether counters have read lower for longer than :func:`grace` (said once when
        they first do)."""
        now = self._clock()
        with self._lock:
            first = self._lower_since is None
            if first:
                self._lower_since = now
            since = self._lower_since
        if first:
            log.warning(
                "the books read lower than seen before (%s): after a failover, the steps a replica had not yet "
                "confirmed are repeated by their writers; waiting up to %.0f s for them before calling it a loss",
                "; ".join(lower),
                grace(),
            )
        return since is not None and now - since > grace()
