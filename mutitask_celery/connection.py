"""Redis clients, one pool per URL and process, and a start-up check that fails
fast with the URL (password masked) instead of hanging or printing a traceback wall."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from .errors import BooksLost, BrokerUnavailable
from .integrity import EXIT_BOOKS_LOST
from .settings import mask_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 5.0  # seconds a reply may take before the connection counts as lost
EXIT_UNREACHABLE = 3
_clients: dict[tuple[int, str], redis.Redis] = {}
# A Lua expression: Redis's clock as 'seconds.micros'. Heartbeats are written in it (by the
# device's note and by its finish script), judged in it, and compared as these strings.
LUA_NOW = ("(function() local t = redis.call('TIME') "
           "return t[1] .. '.' .. string.format('%06d', tonumber(t[2])) end)()")


def text(value: bytes | str) -> str:
    """A reply as ``str``: our clients decode replies (``decode_responses=True``), which
    redis-py's types cannot express, so they say ``bytes | str``."""
    return value.decode() if isinstance(value, bytes) else value


def redis_client(url: str) -> redis.Redis:
    """A client for ``url`` returning ``str`` values (shared within this process)."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            # A host cut off from Redis must notice within seconds, whatever redis-py's own
            # default (none before redis-py 8): every call here is short (BLPOP waits 0.5 s).
            socket_timeout=SOCKET_TIMEOUT,
            socket_keepalive=True,
            health_check_interval=30,
            retry_on_timeout=True,
        )
        _clients[key] = client
    return client


def check_redis(url: str) -> None:
    """Raise :class:`BrokerUnavailable` naming the URL when Redis does not answer."""
    try:
        redis_client(url).ping()
    except redis.AuthenticationError as exc:
        raise BrokerUnavailable(f"Redis at {mask_url(url)} refused the password: {exc}") from None
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"cannot reach Redis at {mask_url(url)}: {exc}") from None


@contextmanager
def exit_on_unreachable() -> Iterator[None]:
    """For the legacy scripts: an unreachable Redis (exit code 3), or one that came back
    without its data (exit code 4, see :mod:`.integrity`), ends the script with one clear
    line on stderr instead of a traceback."""
    try:
        yield
    except BrokerUnavailable as exc:
        # A script that set up no logging gets exactly this line on stderr (logging's last resort).
        log.critical("mutitask: %s", exc)
        raise SystemExit(EXIT_UNREACHABLE) from None
    except BooksLost as exc:
        log.critical("mutitask: %s", exc)
        raise SystemExit(EXIT_BOOKS_LOST) from None
