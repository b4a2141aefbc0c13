"""Redis clients, one pool per URL and process, and a start-up check that fails
fast with the URL (password masked) instead of hanging or printing a traceback wall."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from .errors import BrokerUnavailable
from .settings import mask_url

CONNECT_TIMEOUT = 5.0
EXIT_UNREACHABLE = 3
_clients: dict[tuple[int, str], redis.Redis] = {}


def redis_client(url: str) -> redis.Redis:
    """A client for ``url`` returning ``str`` values (shared within this process)."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
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
    """For the legacy scripts: an unreachable Redis ends the script with one clear
    line on stderr and exit code 3, instead of a traceback."""
    try:
        yield
    except BrokerUnavailable as exc:
        print(f"mutitask: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_UNREACHABLE) from None
