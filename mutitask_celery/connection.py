"""Redis clients, one pool per URL and process, and a start-up check that fails
fast with the URL (password masked) instead of hanging or printing a traceback wall.

Our clients never retry a command by themselves. redis-py would resend a command
whose reply timed out, and a resent ``EVALSHA`` or ``MULTI`` of a step that did
apply applies twice (a second publish, a false "run twice"). Every caller here
already rides out a lost connection on its own terms; the steps it repeats are
written to apply once (their ids in ``steps:<writer>``, see ``keys``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool
from redis.utils import HIREDIS_AVAILABLE

from mutitask_celery import sentinel, settings
from mutitask_celery.errors import (
    BooksLost,
    BrokerUnavailable,
    ConfigurationError,
    ExitCode,
    LeaseHeld,
    RedisOutOfMemory,
    RunCancelled,
)
from mutitask_celery.replication import ConfirmingRedis, ReplicaCount, WritesRefused, as_outage
from mutitask_celery.settings import mask_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 5.0  # seconds a reply may take before the connection counts as lost
_clients: dict[tuple[object, ...], redis.Redis] = {}

BIG_ARGUMENT = 64 * 1024  # bytes: an argument this long is sent as it is, not copied into the command


class _Packer:
    """Packs commands for the socket as redis-py does, but sends a big ``bytes`` argument (a
    task's data as a frame, see :func:`.codec.encode_binary`) as it is: redis-py's hiredis
    packer copies every argument into one new buffer, and for task data that copy (into fresh
    memory, about 3 ms a MiB here) took a third of a server publishing 1 MiB arrays. Commands
    without one (nearly all) go through hiredis, the fastest for them."""

    def __init__(self) -> None:
        # redis-py 8.2 dropped the annotations of this one (unused-ignore: earlier versions have them)
        self._small = HiredisRespSerializer() if HIREDIS_AVAILABLE else None  # type: ignore[no-untyped-call, unused-ignore]
        encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]  # redis-py's, untyped
        self._big = PythonRespSerializer(BIG_ARGUMENT, encoder.encode)

    def pack(self, *args: object) -> list[bytes]:
        if self._small is not None and not any(type(a) is bytes and len(a) >= BIG_ARGUMENT for a in args):
            return self._small.pack(*args)  # type: ignore[arg-type,no-any-return]  # redis-py's, untyped
        return self._big.pack(*args)  # type: ignore[no-untyped-call,no-any-return]


_PACKER = _Packer()


def text(value: bytes | str) -> str:
    """A reply as ``str``: our clients decode replies (``decode_responses=True``), which
    redis-py's types cannot express, so they say ``bytes | str``."""
    return value.decode() if isinstance(value, bytes) else value


def redis_now(client: redis.Redis) -> float:
    """Redis's clock, in which every host's heartbeats and failure times are written and
    judged: the hosts' own clocks may disagree by more than ``dead_after``."""
    seconds, micros = client.time()
    return float(seconds + micros / 1e6)


def redis_client(url: str, raw: bool = False) -> redis.Redis:
    """A client for ``url`` returning ``str`` values (shared within this process); ``raw``:
    one returning ``bytes``, for big values read as they are (a task's data).

    ``url`` may name Redis Sentinels (:mod:`.sentinel`): the client then follows the master
    they name. Its scripts and pipelines wait for the replicas the settings ask for
    (:mod:`.replication`; by default one behind Sentinel, none otherwise)."""
    conf = settings.current()
    replicas = conf.confirm_replicas
    if replicas is None:
        replicas = 1 if settings.is_sentinel_url(url) else 0
    key = (os.getpid(), url, raw, conf.sentinel_master, conf.sentinel_password, replicas)
    client = _clients.get(key)
    if client is None:
        options: dict[str, Any] = {
            "decode_responses": not raw,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            # A host cut off from Redis must notice within seconds, whatever redis-py's own
            # default (none before redis-py 8): every call here is short (BLPOP waits 0.5 s).
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_keepalive": True,  # a master frozen with its sockets open is found by the timeout
            "health_check_interval": 30,
            "retry_on_timeout": False,
            "retry": Retry(NoBackoff(), 0),  # see the module docstring
            "command_packer": _PACKER,
        }
        made: ConfirmingRedis
        if settings.is_sentinel_url(url):
            made = sentinel.master_client(url, conf.sentinel_master, conf.sentinel_password, ConfirmingRedis, **options)  # type: ignore[assignment]  # of the class given
        else:
            made = ConfirmingRedis.from_url(url, **options)  # type: ignore[assignment]  # of this class
        pool = made.connection_pool
        if isinstance(pool, SentinelConnectionPool):  # every replica the sentinels may promote, at least
            made.confirm(ReplicaCount(replicas, pool.sentinel_manager, pool.service_name))
        else:
            made.confirm(ReplicaCount(replicas))
        client = _clients[key] = made
    return client


def raw_twin(client: redis.Redis) -> redis.Redis:
    """A client to the same Redis as ``client`` (same address, TLS, password, the same master
    behind Sentinel, the same replicas to wait for) that returns ``bytes``: for replies that
    may hold task data kept as a binary frame (:func:`.codec.encode_binary`), which a
    decoding client would refuse. Made once per connection pool (kept on it), with a pool
    of its own."""
    pool = client.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return client
    twin: redis.Redis | None = getattr(pool, "_mutitask_raw_twin", None)
    if twin is None:
        kwargs = {**pool.connection_kwargs, "decode_responses": False}
        if isinstance(pool, SentinelConnectionPool):
            kwargs.pop("connection_pool", None)  # the pool's own proxy: the twin's pool makes its own
            twin_pool: redis.ConnectionPool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
                pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class, **kwargs
            )
        else:
            twin_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        twin = ConfirmingRedis(connection_pool=twin_pool)
        if isinstance(client, ConfirmingRedis):
            twin.confirm(client.count)
        pool._mutitask_raw_twin = twin  # type: ignore[attr-defined]  # our own mark on redis-py's pool
    return twin


def unconfirmed(client: redis.Redis) -> redis.Redis:
    """A client on ``client``'s connections whose steps no replica confirms (see
    :mod:`.steps`: a heartbeat, a lease renewed); ``client`` itself when none does. Made once
    per client (kept on it)."""
    if not isinstance(client, ConfirmingRedis) or not client.count.least:
        return client
    plain: redis.Redis | None = getattr(client, "_mutitask_unconfirmed", None)
    if plain is None:
        plain = ConfirmingRedis(connection_pool=client.connection_pool)  # its count: none
        client._mutitask_unconfirmed = plain  # type: ignore[attr-defined]  # our own mark
    return plain


class Deferred:
    """Commands written to Redis now whose replies are read later, on a connection of the
    calling thread's own.

    Why: a device marks each message started before it runs the message's tasks, and a
    poison task may kill the process the next instant, so the mark must have left the
    process before the task runs; but waiting for each reply costs a round trip per message.
    A command written to the socket reaches Redis even if the process dies right after
    (the kernel sends what the socket holds before it closes it). The reply is read before
    the next command on that connection, or by :meth:`settle`.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._local = threading.local()
        self._loaded: set[str] = set()  # scripts this process made sure Redis knows

    def send(
        self, script: Script, keys: Sequence[str | bytes | int | float], args: Sequence[str | bytes | int | float]
    ) -> None:
        """Write one call of ``script``; raises a ``redis.RedisError`` when it cannot be written."""
        self.settle()
        if script.sha not in self._loaded:  # else its first call would only come back NOSCRIPT
            self._client.script_load(script.script)
            self._loaded.add(script.sha)
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._client.connection_pool.get_connection()
        try:
            connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.RedisError:
            self._drop()
            raise
        self._local.pending = (script, keys, args)

    def settle(self) -> object:
        """Read the reply of the call written last, if not read yet; raises its error. A
        Redis that forgot the script (it restarted) gets the call again, now, in full."""
        pending = getattr(self._local, "pending", None)
        if pending is None:
            return None
        self._local.pending = None
        try:
            reply = self._local.connection.read_response()
        except redis.exceptions.NoScriptError:  # Redis restarted, forgetting its scripts: now, in full
            script, keys, args = pending
            return script(keys=keys, args=args)
        except redis.ResponseError as refused:
            reply = refused
        except redis.RedisError:  # lost, or no reply in time (a frozen master): this connection is done
            self._drop()
            raise
        if isinstance(reply, redis.ResponseError):
            error = as_outage(reply)
            if isinstance(error, WritesRefused):  # its next connection asks the sentinels for the master again
                self._drop()
            raise error
        return reply

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection, self._local.pending = None, None
        if connection is not None:
            connection.disconnect()
            self._client.connection_pool.release(connection)


def cluster_enabled(client: redis.Redis) -> bool | None:
    """Whether ``client``'s Redis is a Redis Cluster node; None when it cannot say now (not
    reachable: the question is asked again next time). ``CLUSTER INFO``, not ``INFO``: the
    shipped ACL forbids ``INFO`` (``-@dangerous``) but not it; a server without cluster
    support answers it with an error."""
    try:
        client.cluster("INFO")
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    except redis.ResponseError:  # "cluster support disabled" (or a stricter ACL: no cluster then)
        return False
    return True


def check_cluster_slot(client: redis.Redis, tag: str) -> None:
    """Raise :class:`ConfigurationError` unless ``client``'s cluster node serves the slot
    of hash tag ``tag``, which holds all the books: our client talks to one node (it
    follows no ``MOVED`` redirection), so it must be the one that owns them."""
    slot = key_slot(tag.strip("{}").encode())
    mine = text(client.cluster("MYID"))
    for first, last, primary, *_ in client.cluster("SLOTS"):
        if int(first) <= slot <= int(last):
            host, port, node = text(primary[0]), int(primary[1]), text(primary[2])
            if node != mine:
                raise ConfigurationError(
                    f"this Redis Cluster keeps the books (hash tag {tag}, slot {slot}) on the node at "
                    f"{host or 'the same host'}:{port}, not on the one MUTITASK_REDIS_URL names: point it there"
                )
            return
    raise ConfigurationError(f"no node of this Redis Cluster serves slot {slot} (hash tag {tag}) of the books")


def check_redis(url: str) -> None:
    """Raise :class:`BrokerUnavailable` naming the URL when Redis does not answer."""
    try:
        redis_client(url).ping()
    except redis.AuthenticationError as exc:
        raise BrokerUnavailable(f"Redis at {mask_url(url)} refused the password: {exc}") from None
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot reach Redis at {mask_url(url)}: {exc}") from None


# The errors a legacy script ends on with one line, and its exit code for each (see below).
_EXITS: tuple[tuple[type[Exception], ExitCode], ...] = (
    (BrokerUnavailable, ExitCode.UNREACHABLE),
    (BooksLost, ExitCode.BOOKS_LOST),
    (LeaseHeld, ExitCode.IN_USE),
    (RedisOutOfMemory, ExitCode.OUT_OF_MEMORY),
    (RunCancelled, ExitCode.CANCELLED),
    (ConfigurationError, ExitCode.USAGE),  # e.g. a celeryconfig.py that breaks our promises
)


@contextmanager
def exit_on_unreachable() -> Iterator[None]:
    """For the legacy scripts: an unreachable Redis (exit code 3), one that came back
    without its data (exit code 4, see :mod:`.integrity`), a channel or run another live
    server holds (exit code 5, see :mod:`.books.leases`), one that stayed full (exit code 7,
    see :mod:`.memory`) or an unusable configuration (exit code 2) ends the script with one
    clear line on stderr instead of a traceback."""
    try:
        yield
    except redis.OutOfMemoryError as exc:  # a write the run does not wait on (e.g. before its first task)
        log.critical("mutitask: Redis is out of memory (maxmemory reached): %s", exc)
        raise SystemExit(ExitCode.OUT_OF_MEMORY) from None
    except tuple(error for error, _ in _EXITS) as exc:
        # A script that set up no logging gets exactly this line on stderr (logging's last resort).
        log.critical("mutitask: %s", exc)
        raise SystemExit(next(code for error, code in _EXITS if isinstance(exc, error))) from None


def _addresses(host: str, port: int) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)}
    except OSError:
        return {host}


def _where(url: str) -> tuple[str, int, str] | None:
    parts = urlsplit(url)
    if not parts.scheme.startswith("redis"):
        return None
    return (parts.hostname or "localhost", parts.port or 6379, parts.path.lstrip("/") or "0")


_same: dict[tuple[str, str], bool] = {}
PROBE_PREFIX = "mutitask:probe:"


def same_redis(broker_url: str, books_url: str) -> bool:
    """True when the broker is the very Redis database that holds the books, however each
    URL names it (``localhost`` and ``127.0.0.1``, a DNS alias, a proxy in front).

    Same host name, port and database: yes. Otherwise, when both are Redis, a probe
    key written through one connection and read through the other decides; when the
    probe cannot run (one of them unreachable), shared addresses with the same port
    and database do. The answer is kept for the process.
    """
    key = (broker_url, books_url)
    if key in _same:
        return _same[key]
    a, b = _where(broker_url), _where(books_url)
    if broker_url == books_url:
        answer = True
    elif a is None or b is None:  # a Sentinel URL has no one address: only a probe can tell
        both = (
            settings.is_sentinel_url(broker_url) or a is not None,
            settings.is_sentinel_url(books_url) or b is not None,
        )
        answer = all(both) and bool(_probe(broker_url, books_url))
    elif a == b:
        answer = True
    else:
        probed = _probe(broker_url, books_url)
        if probed is None:
            probed = a[1:] == b[1:] and bool(_addresses(a[0], a[1]) & _addresses(b[0], b[1]))
        answer = probed
    _same[key] = answer
    return answer


def _probe(broker_url: str, books_url: str) -> bool | None:
    token = uuid.uuid4().hex
    probe = f"{PROBE_PREFIX}{token}"
    try:
        books = redis_client(books_url)
        books.set(probe, token, ex=60)
        try:
            return text(redis_client(broker_url).get(probe) or "") == token
        finally:
            books.delete(probe)
    except redis.RedisError:
        return None
