"""A full Redis, said plainly: its ``maxmemory-policy`` checked at start, its refusals named.

mutitask needs a Redis that never evicts. An evicting policy (``allkeys-*``,
``volatile-*``) drops keys when Redis reaches ``maxmemory``, whichever they are: a
queue, a task in the books, a device's note, a counter. Tasks then vanish without a
word, and the books come back lower than they were read (see :mod:`.books.integrity`).
With ``noeviction`` a full Redis refuses writes instead (``OOM command not allowed when
used memory > 'maxmemory'``): nothing is lost, and everything waits for room (the
server, the devices' consumers and their outcomes), saying why.

So the server and every device read the policy at start (:func:`check_policy`): an
evicting policy with a memory limit is refused, one with no limit (``maxmemory 0``,
nothing is evicted until someone sets one) is warned about. Reading it takes ``INFO``,
which the shipped ACL forbids (``-@dangerous``, see docs/deployment.md), as it does
``CONFIG``: then nothing is checked and nothing said; that deployment's Redis
configuration sets ``noeviction`` itself.

Whether Redis has room for writes now needs no ``INFO``: :func:`has_room` asks with a
write that changes nothing. A small write finding room does not mean a run can go on: at the
limit, Redis's use flaps by its clients' buffers, and a device's larger writes (a message kept
while it runs, a result) are refused while a probe squeezes through. So where ``INFO`` is
allowed, a Redis within :data:`NEARLY` of its limit counts as full too (:attr:`Memory.nearly_full`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from mutitask_celery import keys
from mutitask_celery.errors import ConfigurationError

log = logging.getLogger(__name__)

EVICTING = ("allkeys-", "volatile-")  # the maxmemory-policy values that drop keys
NEARLY = 0.05  # within this share of maxmemory, Redis counts as full (see the module docstring)
CLEAR = 0.10  # and it has room again only below this share under the limit (no flapping messages)
FIX = "set maxmemory-policy noeviction in redis.conf (and at once: redis-cli CONFIG SET maxmemory-policy noeviction)"


@dataclass(frozen=True)
class Memory:
    """Redis's memory as ``INFO memory`` reports it."""

    used: int  # bytes
    limit: int  # maxmemory in bytes; 0: no limit
    policy: str  # maxmemory-policy

    @property
    def evicting(self) -> bool:
        return self.policy.startswith(EVICTING)

    @property
    def full(self) -> bool:
        return 0 < self.limit <= self.used

    @property
    def nearly_full(self) -> bool:
        """Within :data:`NEARLY` of the limit: a device's next message or result may not fit."""
        return 0 < self.limit and self.used >= self.limit * (1 - NEARLY)

    @property
    def clear(self) -> bool:
        """Well under the limit (or no limit): room for the run to go on."""
        return self.limit == 0 or self.used < self.limit * (1 - CLEAR)


def memory(client: redis.Redis) -> Memory | None:
    """Redis's memory, or None when it cannot say (an ACL that forbids ``INFO``, Redis away)."""
    try:
        info = client.info("memory")
        return Memory(int(info["used_memory"]), int(info.get("maxmemory", 0)), str(info.get("maxmemory_policy", "")))
    except (redis.RedisError, KeyError, ValueError, TypeError):
        return None


def size(n: int) -> str:
    """Bytes as people read them: ``'8.0 MB'``."""
    value, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def describe_full(client: redis.Redis, found: Memory | None = None) -> str:
    """``'Redis is out of memory: maxmemory 8.0 MB reached (policy noeviction)'``, without the
    figures when ``INFO`` is refused. ``found``: Redis's memory, when just read."""
    found = found or memory(client)
    if found is None or found.limit == 0:
        return "Redis is out of memory (maxmemory reached)"
    if found.full:
        return f"Redis is out of memory: maxmemory {size(found.limit)} reached (policy {found.policy})"
    return (
        f"Redis is out of memory: maxmemory {size(found.limit)} all but reached "
        f"({size(found.used)} used, policy {found.policy})"
    )


def has_room(client: redis.Redis, probe: str = keys.DEFAULT.room_probe()) -> bool:
    """False while Redis refuses writes for memory: ``SET`` with ``XX`` on a key never written
    (``probe``: it changes nothing) is refused by a full Redis as any write is. Other errors
    propagate. (On a Redis Cluster the probe must be a name of the books' slot.)"""
    try:
        client.set(probe, "", xx=True)
    except redis.OutOfMemoryError:
        return False
    return True


def check_policy(client: redis.Redis, where: str) -> None:
    """Refuse (:class:`ConfigurationError`) a Redis that evicts keys when full; warn about an
    evicting policy while no limit is set. ``where``: the Redis, as the message names it."""
    found = memory(client)
    if found is None or not found.evicting:
        return
    if found.limit > 0:
        raise ConfigurationError(
            f"Redis at {where} evicts keys when full (maxmemory-policy {found.policy}, maxmemory "
            f"{size(found.limit)}): an evicted queue or book loses tasks without a word. Mutitask needs "
            f"noeviction, with which a full Redis makes everything wait instead: {FIX}"
        )
    log.warning(
        "Redis at %s has maxmemory-policy %s: harmless while maxmemory is 0 (no limit), but once a limit is "
        "set it evicts keys, and an evicted queue or book loses tasks: %s",
        where,
        found.policy,
        FIX,
    )
