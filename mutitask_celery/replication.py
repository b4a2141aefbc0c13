"""Books steps that a replica confirms before they count as done.

Redis replicates asynchronously: the master answers a write before any replica has it. If
the master dies then and a replica is promoted (Sentinel, or a managed Redis's one address
moving to a replica), the write is gone although its writer was told it was done — a result
saved, then lost; a task published twice. Redis's ``WAIT n timeout`` blocks the connection
that sent it until ``n`` replicas have everything that connection wrote, and since Redis 7
it does not block inside a script, so it is sent *after* each step, on the same connection,
in the same round trip (the two commands written together, both replies read).

How many replicas: at least the setting (:attr:`.Settings.replicas_to_confirm`), and behind
Sentinel every replica the sentinels might promote (see :meth:`ReplicaCount._in_sync`). One is not enough when
there are two: Sentinel promotes the replica with the highest offset *as it last heard*
(up to 10 s old when a failover is asked for), so either may be chosen, and a step only the
other one had would be gone. The sentinels' view is read again every
:data:`COUNT_EVERY` seconds (:class:`ReplicaCount`); a replica that dies is waited for until
they notice (seconds), one that joins is counted from then on.

A step is done only once ``WAIT`` says enough replicas have it. When fewer answered in time,
this waits on (``WAIT`` again on that connection: the write stands on the master, only its
copy is late), logging why every :data:`REPORT_EVERY` seconds; it never assumes. If the
master dies meanwhile, the caller gets a ``ConnectionError`` and repeats the step on the new
master, as after any outage: the books' steps are written to apply once (their ids in
``steps:<writer>``), and the fence travels in the same atomic write as the step, so the new
master has both or neither.

A master that has too few replicas to take a write (``min-replicas-to-write``, as the shipped
Sentinel configuration sets: just after a failover, before a replica has synced with the new
master) refuses it with ``NOREPLICAS``, having applied nothing. That is an outage, not a bad
command: :class:`WritesRefused` is a ``ConnectionError``, so the caller waits and repeats as
after any lost connection, and the connection is dropped (its next one asks the sentinels
for the master again). So is ``READONLY``: behind a managed Redis's one address, a connection
opened before a failover still reaches the old master, now a replica; its next one reaches
the new master.

Which calls: every script (``EVALSHA``, ``EVAL``) and every pipeline of a
:class:`ConfirmingRedis`. The connection's last-write offset decides what ``WAIT`` waits for,
so a pipeline that only reads returns at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.connection import AbstractConnection
from redis.sentinel import Sentinel

log = logging.getLogger(__name__)

WAIT_SLICE_MS = 1000  # one WAIT's timeout: well under the socket timeout (5 s), so a wait is not a lost connection
REPORT_EVERY = 10.0  # seconds between the log lines of a step still waiting for its replicas
CONFIRMED = frozenset({"EVALSHA", "EVAL"})  # the single commands that are books steps
COUNT_EVERY = 1.0  # seconds between two readings of the sentinels' view of the replicas


class ReplicaCount:
    """The replicas a step must reach now: ``least``, or behind Sentinel (``manager`` and the
    master's name ``service``) every replica the sentinels might promote, if more. Shared by a
    client and its raw twin; thread-safe (one thread asks the sentinels at a time)."""

    def __init__(self, least: int, manager: Sentinel | None = None, service: str = "") -> None:
        self.least, self._manager, self._service = least, manager, service
        self._seen, self._at = 0, float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> int:
        if self._manager is None or not self.least:
            return self.least
        if time.monotonic() - self._at >= COUNT_EVERY and self._lock.acquire(blocking=False):
            try:
                self._seen = self._in_sync(self._seen)
                self._at = time.monotonic()
            finally:
                self._lock.release()
        return max(self.least, self._seen)

    def _in_sync(self, before: int) -> int:
        """The replicas the first sentinel that answers might promote: every one it sees up,
        *whatever its link or the role it reports* (``before`` when none answers). Not only
        those whose link it saw "ok": its view of a link is up to 10 s old, and it promotes a
        replica whose link is down for less than ten times ``down-after-milliseconds``, so a
        replica catching up (a full sync after a restart) is waited for until it has. Nor only
        those that say they are replicas: during a failover the replica being promoted
        already says "master" while the old master still takes writes, and a write only the
        other replicas had would be gone once they follow the new one; waiting for it too
        makes such a write wait until the old master steps down, and then it is repeated on
        the new one. (A killed master restarted from its own file also says "master" until
        the sentinels make it a replica: writes wait those seconds for it to catch up.)"""
        assert self._manager is not None
        for sentinel in self._manager.sentinels:
            try:
                replicas = sentinel.sentinel_slaves(self._service)
            except redis.RedisError:
                continue
            return sum(1 for r in replicas if not (r.get("is_sdown") or r.get("is_odown") or r.get("is_disconnected")))
        return before


class WritesRefused(redis.ConnectionError):
    """The node refused a write because it cannot take writes now: a master with too few
    replicas (``NOREPLICAS``), or a master demoted to a replica while this connection stayed
    open (``READONLY``; ``WAIT`` refused likewise; a blocked ``BRPOP`` let go with
    ``UNBLOCKED``). Nothing was applied; the step is repeated on a new connection, which
    reaches the master now."""


# The words of the refusals, as Redis begins them: too few replicas; a replica now; a blocked
# read (kombu's BRPOP) let go because the node became a replica (``-UNBLOCKED``).
REFUSALS = ("NOREPLICAS", "READONLY", "WAIT cannot be used with replica", "UNBLOCKED")


def refuses_writes(error: BaseException) -> bool:
    """Whether Redis refused a write because it cannot take writes now (see
    :class:`WritesRefused`), itself or as the first error of a pipeline or script.

    ``READONLY`` is how a managed Redis's one address moving to a promoted replica shows on a
    connection opened before the move: it still reaches the old master, now a replica."""
    if isinstance(error, redis.ReadOnlyError):  # redis-py takes the word READONLY off its text
        return True
    return isinstance(error, redis.ResponseError) and any(word in str(error) for word in REFUSALS)


def as_outage(error: redis.ResponseError) -> redis.RedisError:
    """``error``, or a :class:`WritesRefused` when Redis cannot take writes now."""
    return WritesRefused(f"Redis cannot take writes now: {error}") if refuses_writes(error) else error


def _wait(connection: AbstractConnection, count: Callable[[], int], wanted: int, acked: object, what: str) -> None:
    """Block until enough replicas have what ``connection`` wrote: ``wanted`` at first, then
    what ``count`` says (the sentinels may have seen a replica go); ``acked``: the reply of
    the ``WAIT`` already sent with the step."""
    started = reported = time.monotonic()
    while int(acked) < wanted:  # type: ignore[call-overload]  # WAIT replies with an integer
        now = time.monotonic()
        if now - reported >= REPORT_EVERY:
            log.warning(
                "a books step (%s) has waited %.0f s for %d replica(s) to confirm it (%s so far): "
                "is a replica down or far behind? It waits on; nothing is assumed done",
                what,
                now - started,
                wanted,
                acked,
            )
            reported = now
        wanted = count()
        connection.send_command("WAIT", wanted, WAIT_SLICE_MS)  # type: ignore[no-untyped-call]
        acked = connection.read_response()
    if reported != started:
        log.warning("the books step (%s) was confirmed after %.0f s", what, time.monotonic() - started)


def confirms(client: object) -> bool:
    """Whether replicas confirm ``client``'s steps (a :class:`ConfirmingRedis` told to)."""
    count = getattr(client, "count", None)
    return isinstance(count, ReplicaCount) and count.least > 0


class ConfirmingRedis(redis.Redis):
    """A client whose scripts and pipelines each end with ``WAIT`` for the replicas that
    :attr:`count` says (none: a plain client). Give it its count once, right after making it
    (:meth:`confirm`)."""

    count: ReplicaCount = ReplicaCount(0)

    def confirm(self, count: ReplicaCount) -> None:
        """Wait for ``count`` replicas after each step from now on."""
        self.count = count

    def _send_command_parse_response(self, conn: Any, command_name: str, *args: Any, **options: Any) -> Any:
        try:
            wanted = self.count() if str(command_name).upper() in CONFIRMED else 0
            if not wanted:
                return super()._send_command_parse_response(conn, command_name, *args, **options)  # type: ignore[no-untyped-call]
            conn.send_packed_command(conn.pack_commands([args, ("WAIT", wanted, WAIT_SLICE_MS)]))
            try:
                reply = self.parse_response(conn, command_name, **options)  # type: ignore[no-untyped-call]
            except redis.ResponseError:  # e.g. NOSCRIPT: nothing was written; read WAIT's reply to stay in step
                conn.read_response()
                raise
            _wait(conn, self.count, wanted, conn.read_response(), str(command_name))
            return reply
        except redis.ResponseError as error:
            raise as_outage(error) from None

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        if not self.count.least:
            return super().pipeline(transaction, shard_hint)
        pipe = ConfirmingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.count = self.count
        return pipe


class ConfirmingPipeline(Pipeline):
    """A pipeline that ends with ``WAIT``: written with the commands when it is no
    transaction (one round trip), right after ``EXEC`` when it is."""

    count: ReplicaCount = ReplicaCount(0)

    def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        wanted = self.count()
        wait: tuple[tuple[object, ...], dict[str, Any]] = (("WAIT", wanted, WAIT_SLICE_MS), {})
        try:
            replies = super()._execute_pipeline(connection, [*commands, wait], raise_on_error)  # type: ignore[no-untyped-call]
        except redis.ResponseError as error:
            raise as_outage(error) from None
        acked = replies.pop()
        if isinstance(acked, Exception):
            raise acked
        _wait(connection, self.count, wanted, acked, "a pipeline")
        return list(replies)

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        try:
            replies = super()._execute_transaction(connection, commands, raise_on_error)
        except redis.ResponseError as error:  # a refused MULTI is discarded whole: nothing applied
            raise as_outage(error) from None
        wanted = self.count()
        connection.send_command("WAIT", wanted, WAIT_SLICE_MS)
        _wait(connection, self.count, wanted, connection.read_response(), "a transaction")
        return list(replies)
