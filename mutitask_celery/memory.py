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
write that changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from mutitask_celery import keys
from mutitask_celery.errors import ConfigurationError

log = logging.getLogger(__name__)

EVICTING = ("allkeys-", "volatile-")  # the maxmemory-policy values that drop keys
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


def describe_full(client: redis.Redis) -> str:
    """``'Redis is out of memory: maxmemory 8.0 MB reached (policy noeviction)'``, without the
    figures when ``INFO`` is refused."""
    found = memory(client)
    if found is None or found.limit == 0:
        return "Redis is out of memory (maxmemory reached)"
    return f"Redis is out of memory: maxmemory {size(found.limit)} reached (policy {found.policy})"


def has_room(client: redis.Redis) -> bool:
    """False while Redis refuses writes for memory: ``SET`` with ``XX`` on a key never written
    (it changes nothing) is refused by a full Redis as any write is. Other errors propagate."""
    try:
        client.set(keys.room_probe(), "", xx=True)
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
