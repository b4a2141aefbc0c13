"""Books steps that a replica confirms before they count as done.

Redis replicates asynchronously: the master answers a write before any replica has it. If
the master dies then and a replica is promoted (Sentinel, or a managed Redis's one address
moving to a replica), the write is gone although its writer was told it was done — a result
saved, then lost; a task published twice. Redis's ``WAIT n timeout`` blocks the connection
that sent it until ``n`` replicas have everything that connection wrote, and since Redis 7
it does not block inside a script, so it is sent *after* each step, on the same connection,
in the same round trip (the two commands written together, both replies read).

A step is done only once ``WAIT`` says enough replicas have it. When fewer answered in time,
this waits on (``WAIT`` again on that connection: the write stands on the master, only its
copy is late), logging why every :data:`REPORT_EVERY` seconds; it never assumes. If the
master dies meanwhile, the caller gets a ``ConnectionError`` and repeats the step on the new
master, as after any outage: the books' steps are written to apply once (their ids in
``steps:<writer>``), and the fence travels in the same atomic write as the step, so the new
master has both or neither.

Which calls: every script (``EVALSHA``, ``EVAL``) and every pipeline of a
:class:`ConfirmingRedis`. The connection's last-write offset decides what ``WAIT`` waits for,
so a pipeline that only reads returns at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.client import Pipeline
from redis.connection import AbstractConnection

log = logging.getLogger(__name__)

WAIT_SLICE_MS = 1000  # one WAIT's timeout: well under the socket timeout (5 s), so a wait is not a lost connection
REPORT_EVERY = 10.0  # seconds between the log lines of a step still waiting for its replicas
CONFIRMED = frozenset({"EVALSHA", "EVAL"})  # the single commands that are books steps


def _wait(connection: AbstractConnection, replicas: int, acked: object, what: str) -> None:
    """Block until ``replicas`` replicas have what ``connection`` wrote; ``acked``: the reply
    of the ``WAIT`` already sent with the step."""
    started = reported = time.monotonic()
    while int(acked) < replicas:  # type: ignore[call-overload]  # WAIT replies with an integer
        now = time.monotonic()
        if now - reported >= REPORT_EVERY:
            log.warning(
                "a books step (%s) has waited %.0f s for %d replica(s) to confirm it (%s so far): "
                "is a replica down or far behind? It waits on; nothing is assumed done",
                what,
                now - started,
                replicas,
                acked,
            )
            reported = now
        connection.send_command("WAIT", replicas, WAIT_SLICE_MS)  # type: ignore[no-untyped-call]
        acked = connection.read_response()
    if reported != started:
        log.warning("the books step (%s) was confirmed after %.0f s", what, time.monotonic() - started)


class ConfirmingRedis(redis.Redis):
    """A client whose scripts and pipelines each end with ``WAIT`` for :attr:`replicas`
    replicas (0: a plain client). Set ``replicas`` once, right after making it."""

    replicas: int = 0

    def _send_command_parse_response(self, conn: Any, command_name: str, *args: Any, **options: Any) -> Any:
        if not self.replicas or str(command_name).upper() not in CONFIRMED:
            return super()._send_command_parse_response(conn, command_name, *args, **options)  # type: ignore[no-untyped-call]
        conn.send_packed_command(conn.pack_commands([args, ("WAIT", self.replicas, WAIT_SLICE_MS)]))
        try:
            reply = self.parse_response(conn, command_name, **options)  # type: ignore[no-untyped-call]
        except redis.ResponseError:  # e.g. NOSCRIPT: nothing was written; read WAIT's reply to stay in step
            conn.read_response()
            raise
        _wait(conn, self.replicas, conn.read_response(), str(command_name))
        return reply

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        if not self.replicas:
            return super().pipeline(transaction, shard_hint)
        pipe = ConfirmingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.replicas = self.replicas
        return pipe


class ConfirmingPipeline(Pipeline):
    """A pipeline that ends with ``WAIT``: written with the commands when it is no
    transaction (one round trip), right after ``EXEC`` when it is."""

    replicas: int = 0

    def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        wait: tuple[tuple[object, ...], dict[str, Any]] = (("WAIT", self.replicas, WAIT_SLICE_MS), {})
        replies = super()._execute_pipeline(connection, [*commands, wait], raise_on_error)  # type: ignore[no-untyped-call]
        acked = replies.pop()
        if isinstance(acked, Exception):
            raise acked
        _wait(connection, self.replicas, acked, "a pipeline")
        return list(replies)

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        replies = super()._execute_transaction(connection, commands, raise_on_error)
        connection.send_command("WAIT", self.replicas, WAIT_SLICE_MS)
        _wait(connection, self.replicas, connection.read_response(), "a transaction")
        return list(replies)
