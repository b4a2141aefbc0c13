"""Guards around kombu 5.7 / Celery 5.7 that would kill a worker when Redis goes away or is full.

**Redis goes away.** When a worker loses its Redis connection, Celery first ``collect()``\\ s
the connection (which closes its channels and then detaches the transport from the
connection) and then ``close()``\\ s it. If the first close of the consuming channel was cut
short by the dead Redis (its pending ``BRPOP`` read raised), the second close runs kombu's
restore of the messages it still holds with no connection details left, and fails with
``AttributeError: 'NoneType' object has no attribute 'hostname'``. Celery takes that for an
unrecoverable error and the worker exits: a device lost to a mere Redis restart. The guard
makes the missing connection details the connection error they are, which both kombu and
Celery already handle: the close is given up, the worker reconnects, and the messages it
held stay in kombu's ``unacked`` hash, noted in the device's hands, for the device itself or
a reaper (see :mod:`.recovery`).

**Redis is full** (``maxmemory`` reached, ``noeviction``: see :mod:`mutitask_celery.memory`).
kombu records each message it takes in a ``MULTI`` and acknowledges in another, and a full
Redis refuses every command inside ``MULTI``, even deletes. kombu reports that as a channel
error, which Celery takes for unrecoverable: every device exited on its next message. Here:

- the error is a connection error: the consumer reconnects, and connecting waits, with
  Celery's growing delays, until Redis has room (:func:`.memory.has_room`, asked at every
  connection: consuming starts with writes too, kombu's queue bindings), so a device takes
  no task it could not record, and says so once;
- an acknowledgement refused for memory is made of its two deletes without ``MULTI``
  (outside it a full Redis takes deletes), so a task already recorded is not handed out
  again;
- a message kombu took off the queue (``BRPOP``) and could not record as unacked is in
  nobody's hands: :data:`stranded` tells the device to have the server sweep for it;
- the channel closed for a full Redis does not put back what it delivered: those messages
  are in the pool already, which runs and acknowledges them (put back, they would run
  twice), as when Redis went away and the restore could not reach it.

**Redis has too few replicas to write** (``NOREPLICAS``: a master with
``min-replicas-to-write``, just after a failover, before a replica follows it). kombu
reports that as a channel error too. It applied nothing and passes within seconds, so it is
made the connection error it is (:class:`.replication.WritesRefused`): the consumer reconnects
(through the sentinels, to the master they name now); a message taken but not recorded is
:data:`stranded`, and an acknowledgement refused leaves its message for the books to settle.
A master that woke from a freeze after its replacement refuses even ``BRPOP`` (a write):
that too is a lost connection, where Celery would have stopped the worker. So is
``READONLY``: behind a managed Redis's one address, a connection opened before a failover
reaches the old master, now a replica; the next connection reaches the new one.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from mutitask_celery import memory
from mutitask_celery.replication import WritesRefused, as_outage, refuses_writes

log = logging.getLogger(__name__)

_GUARDED = "_mutitask_guarded"
#: Set when kombu took a message off a queue and could not record it: in no one's hands, its
#: tasks are still in the books, and the server's sweep puts them back (the device asks for it).
stranded = threading.Event()
_full = threading.Event()  # this process has said that Redis is full


def install() -> None:
    """Wrap kombu's Redis transport once per process (idempotent)."""
    original = kombu_redis.Channel._connparams
    if getattr(original, _GUARDED, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:  # none: a late ack on a closed channel
            raise redis.ConnectionError("the broker connection was closed (Redis went away)")
        return original(self, asynchronous)  # type: ignore[no-untyped-call]  # kombu is untyped

    setattr(_connparams, _GUARDED, True)
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    _guard_full_redis()
    _guard_few_replicas()


def _met_full(channel: Any) -> None:
    """Say once per episode that Redis is full. (On a client of kombu's own pool: the channel's
    ``client`` shares the connection of its pending ``BRPOP``.)"""
    if not _full.is_set():
        _full.set()
        with channel.conn_or_acquire() as client:
            said = memory.describe_full(client)
        log.warning("%s: no task is taken until Redis has room (the tasks in hand finish and are recorded)", said)


def _room_again() -> None:
    if _full.is_set():
        _full.clear()
        log.warning("Redis has room again: taking tasks again")


def _guard_full_redis() -> None:
    transport, qos = kombu_redis.Transport, kombu_redis.QoS
    transport.connection_errors = (*transport.connection_errors, redis.OutOfMemoryError)
    append, ack, restore, establish = qos.append, qos.ack, qos.restore_unacked, transport.establish_connection

    def _append(self: Any, message: Any, delivery_tag: Any) -> None:
        try:
            append(self, message, delivery_tag)  # type: ignore[no-untyped-call]  # kombu is untyped
        except redis.OutOfMemoryError:
            stranded.set()
            _met_full(self.channel)
            raise
        _room_again()

    def _ack(self: Any, delivery_tag: Any) -> None:
        try:
            ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        except redis.OutOfMemoryError:
            with self.channel.conn_or_acquire() as client:
                self._remove_from_indices(delivery_tag, client.pipeline(transaction=False)).execute()
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            _met_full(self.channel)

    def _restore(self: Any, client: Any = None) -> Any:
        if _full.is_set():
            self._delivered.clear()
            return None
        return restore(self, client)  # type: ignore[no-untyped-call]

    def _establish(self: Any) -> Any:
        connection = establish(self)  # type: ignore[no-untyped-call]
        channel = self._avail_channels[-1]
        try:
            with channel.conn_or_acquire() as client:
                room = memory.has_room(client)
        except redis.ResponseError:  # an ACL refusing the probe: nothing to learn
            room = True
        if not room:
            _met_full(channel)
            self._avail_channels.pop()
            channel.close()
            raise redis.OutOfMemoryError("Redis is out of memory (maxmemory reached): waiting for room")
        _room_again()
        return connection

    qos.append, qos.ack, qos.restore_unacked = _append, _ack, _restore  # type: ignore[method-assign]
    transport.establish_connection = _establish  # type: ignore[method-assign]


def _guard_few_replicas() -> None:
    """``NOREPLICAS`` (or ``READONLY``) from kombu's record of a message taken, or of its acknowledgement: a
    connection error (see the module's docstring). Wraps what :func:`_guard_full_redis` made."""
    transport, qos = kombu_redis.Transport, kombu_redis.QoS
    transport.connection_errors = (*transport.connection_errors, WritesRefused)
    append, ack = qos.append, qos.ack

    def _append(self: Any, message: Any, delivery_tag: Any) -> None:
        try:
            append(self, message, delivery_tag)  # type: ignore[no-untyped-call]  # kombu is untyped
        except redis.ResponseError as error:
            if refuses_writes(error):
                stranded.set()  # taken off the queue, recorded nowhere: the server's sweep puts it back
                _leave_master(self.channel)
            raise as_outage(error) from None

    def _ack(self: Any, delivery_tag: Any) -> None:
        try:
            ack(self, delivery_tag)  # type: ignore[no-untyped-call]
        except redis.ResponseError as error:
            if refuses_writes(error):
                _leave_master(self.channel)
            raise as_outage(error) from None

    qos.append, qos.ack = _append, _ack  # type: ignore[method-assign]

    brpop_read = kombu_redis.Channel._brpop_read

    def _brpop_read(self: Any, **options: Any) -> Any:  # BRPOP takes a message: a write, refused alike
        try:
            return brpop_read(self, **options)  # type: ignore[no-untyped-call]
        except redis.ResponseError as error:
            if not refuses_writes(error):
                raise
            self.client.connection.disconnect()
            _leave_master(self)
            raise as_outage(error) from None

    kombu_redis.Channel._brpop_read = _brpop_read  # type: ignore[method-assign]

    get_client = kombu_redis.Channel._get_client

    def _get_client(self: Any) -> Any:  # every other write kombu makes (bindings, at connecting): alike
        make = get_client(self)  # type: ignore[no-untyped-call]

        def client(*args: Any, **kwargs: Any) -> Any:
            made = make(*args, **kwargs)
            made.parse_response = _outage_on_refused_writes(made.parse_response)
            return made

        return client

    kombu_redis.Channel._get_client = _get_client  # type: ignore[method-assign]


def _outage_on_refused_writes(parse: Any) -> Any:
    """``parse`` (a redis-py client's ``parse_response``), with a write refused (see
    :func:`.replication.refuses_writes`) turned into :class:`.replication.WritesRefused` and the connection dropped: a
    device connecting to a master being demoted would otherwise stop (Celery takes a
    ``ResponseError`` while connecting for unrecoverable)."""

    def parse_response(connection: Any, command_name: Any, **options: Any) -> Any:
        try:
            return parse(connection, command_name, **options)
        except redis.ResponseError as error:
            if not refuses_writes(error):
                raise
            connection.disconnect()
            raise as_outage(error) from None

    return parse_response


def _leave_master(channel: Any) -> None:
    """Close the channel's connections to a master that cannot write: most often an old
    master, thawed, that the sentinels have not demoted yet. The consumer's pending ``BRPOP``
    then fails, Celery reconnects, and through the sentinels reaches the master they name now
    (else it would read on from the old one until its demotion, ten seconds or more)."""
    try:
        channel.pool.disconnect()
    except Exception:  # noqa: BLE001  # closing what is failing already: nothing more to do
        log.debug("closing the connections to a master that cannot write failed", exc_info=True)


def leave_old_master(connection: Any, master: tuple[str, int]) -> int:
    """Close the consuming connections of a worker's broker ``connection`` that are not to
    ``master`` (the address the sentinels name now); returns how many.

    Why: kombu waits for its ``BRPOP`` replies in the worker's event loop, not in a read with
    a timeout, so a master frozen with its sockets open holds the consumer until it wakes,
    long after a replica took over; and its acknowledgements, on the channel's pooled
    connections, each wait out their socket timeout in that loop. Shut down from here, the
    sockets read as closed, and Celery reconnects through the sentinels. A device calls this when the books
    came back after an outage (see :meth:`.DeviceLife.beat`)."""
    cycle = getattr(getattr(connection, "transport", None), "cycle", None)
    closed = 0
    for channel in list(getattr(cycle, "_channels", ())):
        client = getattr(channel, "__dict__", {}).get("client")  # kombu's cached client: none yet, nothing to close
        conn: Any = getattr(client, "connection", None)
        sock = getattr(conn, "_sock", None)
        if sock is None or (str(conn.host), int(conn.port)) == (str(master[0]), int(master[1])):
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
            closed += 1
        except OSError:
            pass  # closed already
        _leave_master(channel)  # its pooled connections too: an acknowledgement would wait on the old one
    return closed
