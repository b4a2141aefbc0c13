"""Redis Sentinel: a URL that names the sentinels, and clients that follow the master they name.

With Sentinel, no one address is Redis: three (or more) sentinels watch a master and its
replicas, and when the master dies or hangs they promote a replica and tell whoever asks
where the master is now. So the URL names the sentinels, in kombu's form, several joined by
``;``: ``sentinel://[user:password@]host:26379;sentinel://host2:26379;sentinel://host3:26379/0``
(``sentinels://`` for TLS; query options as in a ``redis://`` URL). The credentials given in
the URL are the master's (kombu reads them the same way, from the first part that has
them); the sentinels' own password is a setting of its own
(:attr:`.Settings.sentinel_password`), as is the master's name
(:attr:`.Settings.sentinel_master`). A client made here asks the sentinels for the master
at each new connection, and drops a connection to a master that was demoted (redis-py's
``READONLY`` and ``UNBLOCKED`` handling), so the next call reaches the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

from mutitask_celery.errors import ConfigurationError
from mutitask_celery.settings import SENTINEL_SCHEMES, is_sentinel_url, mask_url

DEFAULT_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """A Sentinel URL, read: where the sentinels listen, and how to talk to the master."""

    sentinels: tuple[tuple[str, int], ...]
    tls: bool
    master_options: dict[str, Any] = field(default_factory=dict)  # db, username, password, ssl_*: the master's


def parse(url: str) -> SentinelURL:
    """Read a Sentinel URL; raise :class:`ConfigurationError` naming what is wrong (the URL
    masked)."""
    if not is_sentinel_url(url):
        raise ConfigurationError(f"not a Sentinel URL: {mask_url(url)!r}")
    sentinels: list[tuple[str, int]] = []
    options: dict[str, Any] = {}
    schemes = set()
    for number, part in enumerate((p.strip() for p in url.split(";")), start=1):
        if not part:
            continue
        scheme, sep, rest = part.partition("://")
        if not sep or scheme.lower() not in SENTINEL_SCHEMES:
            raise ConfigurationError(
                f"part {number} of the Sentinel URL {mask_url(url)!r} is not sentinel://host:port "
                "(every part names one sentinel, joined by ';')"
            )
        schemes.add(scheme.lower())
        try:
            as_redis = f"{'rediss' if scheme.lower() == 'sentinels' else 'redis'}://{rest}"
            parsed: dict[str, Any] = parse_url(as_redis)  # type: ignore[no-untyped-call]  # redis-py's, untyped
        except ValueError as exc:
            raise ConfigurationError(f"part {number} of the Sentinel URL {mask_url(url)!r}: {exc}") from None
        host = parsed.pop("host", None)
        if not host:
            raise ConfigurationError(f"part {number} of the Sentinel URL {mask_url(url)!r} names no host")
        sentinels.append((str(host), int(parsed.pop("port", None) or DEFAULT_PORT)))
        parsed.pop("connection_class", None)
        db = parsed.pop("db", None)  # None: this part names none
        if number == 1:
            options["db"] = int(db or 0)
        elif db is not None and int(db) != options["db"]:
            raise ConfigurationError(
                f"the Sentinel URL {mask_url(url)!r} names database {db} in part {number} but "
                f"{options['db']} in its first: kombu reads the first part's, so name it there "
                f"(sentinel://host:26379/{db};sentinel://...)"
            )
        for name, value in parsed.items():  # the first part that gives an option gives it (kombu's way)
            options.setdefault(name, value)
    if not sentinels:
        raise ConfigurationError(f"the Sentinel URL {mask_url(url)!r} names no sentinel")
    if len(schemes) > 1:
        raise ConfigurationError(f"the Sentinel URL {mask_url(url)!r} mixes sentinel:// and sentinels://")
    return SentinelURL(tuple(sentinels), "sentinels" in schemes, options)


def master_client(
    url: str, master: str, sentinel_password: str | None, redis_class: type[redis.Redis], **options: Any
) -> redis.Redis:
    """A client of ``redis_class`` to the master named ``master``, found through the
    sentinels of ``url`` at each new connection; ``options`` as for ``redis.Redis``
    (timeouts, decoding...). The sentinels are asked with the same timeouts, over TLS when
    the URL says ``sentinels://``, with ``sentinel_password`` when they have one."""
    target = parse(url)
    tls: dict[str, Any] = {"ssl": True} if target.tls else {}
    asking = {k: v for k, v in options.items() if k.startswith("socket_")}
    if sentinel_password:
        asking["password"] = sentinel_password
    manager = Sentinel(target.sentinels, sentinel_kwargs={**asking, **tls})
    client: redis.Redis = manager.master_for(master, redis_class=redis_class, **target.master_options, **tls, **options)
    return client


BROKER_SOCKET_TIMEOUT = 5.0  # seconds: kombu's BRPOP answers within 1 s, so a silent master is a frozen one


def broker_options(master: str, sentinel_password: str | None) -> dict[str, Any]:
    """kombu's ``broker_transport_options`` for its ``sentinel://`` transport: the master's
    name and, when the sentinels have one, their password; and a socket timeout, which kombu
    leaves unset: a master frozen with its sockets open (a paused VM) would hold a device's
    ``BRPOP`` until it woke, long after the sentinels had promoted a replica."""
    options: dict[str, Any] = {
        "master_name": master,
        "socket_timeout": BROKER_SOCKET_TIMEOUT,
        "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
        "socket_keepalive": True,
    }
    if sentinel_password:
        options["sentinel_kwargs"] = {"password": sentinel_password}
    return options
