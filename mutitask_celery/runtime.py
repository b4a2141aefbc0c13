"""The process-wide objects built from the settings: Redis client, books, store.

Built lazily (a device forks or starts threads after import) and rebuilt by
:func:`reset` when the legacy ``BaseConfig`` supplies other connection details.
"""

from __future__ import annotations

import redis

from mutitask_celery import celery_app, settings
from mutitask_celery.books.cancels import Cancels
from mutitask_celery.books.dead_letters import RedisDeadLetterStore
from mutitask_celery.books.ledger import Ledger
from mutitask_celery.books.rate_limits import RateLimits
from mutitask_celery.books.recovery.base import Recovery
from mutitask_celery.books.recovery.reaper import Reaper
from mutitask_celery.books.recovery.redeliveries import Redeliveries
from mutitask_celery.books.transports.base import Transport
from mutitask_celery.books.transports.kombu_broker import KombuBroker
from mutitask_celery.books.transports.redis_broker import RedisBroker
from mutitask_celery.connection import check_cluster_slot, cluster_enabled, redis_client, same_redis
from mutitask_celery.control import Devices
from mutitask_celery.keys import CLUSTER_TAG, Keys

_transport: Transport | None = None
_ledger: Ledger | None = None
_recovery: Recovery | None = None
_store: RedisDeadLetterStore | None = None
_devices: Devices | None = None
_rate_limits: RateLimits | None = None
_cancels: Cancels | None = None
_built_for: settings.Settings | None = None
_keys: Keys | None = None  # the names, once the Redis said whether it is a cluster


def reset(conf: settings.Settings | None = None) -> settings.Settings:
    """Drop cached objects; point the Celery app at ``conf`` (default: current settings)."""
    global _transport, _ledger, _recovery, _store, _devices, _rate_limits, _cancels, _built_for, _keys
    conf = conf or settings.current()
    if _transport is not None:
        _transport.close()
    celery_app.apply_settings(conf)
    _transport = _ledger = _recovery = _store = _devices = _rate_limits = _cancels = None
    _built_for = conf
    _keys = None
    return conf


def books_client(conf: settings.Settings | None = None) -> redis.Redis:
    """The client of the books' Redis. A Redis Cluster must be the node that holds the
    books (else a :class:`ConfigurationError` says which): checked when it first answers."""
    conf = conf or _fresh()
    client = redis_client(conf.redis_url)
    keys(conf, client)
    return client


def keys(conf: settings.Settings | None = None, client: redis.Redis | None = None) -> Keys:
    """The key names of the books on this Redis, built once: with the run's key prefix, and
    the hash-tagged layout on a Redis Cluster (asked once it answers). While the Redis does
    not answer yet, the names of one server, not kept: what is built with them meanwhile is
    built again (:func:`reset`) if the Redis turns out to be a cluster."""
    global _keys
    conf = conf or _fresh()
    if _keys is not None:
        return _keys
    client = client or redis_client(conf.redis_url)
    cluster = cluster_enabled(client)
    if cluster is None:
        return Keys(conf.key_prefix)
    if cluster:
        check_cluster_slot(client, CLUSTER_TAG)
        if any(x is not None for x in (_transport, _store, _devices, _rate_limits)):
            reset(conf)  # built with a server's names before the cluster answered
    _keys = Keys(conf.key_prefix, cluster)
    return _keys


def _fresh() -> settings.Settings:
    """The current settings, after dropping objects built for older ones."""
    conf = settings.current()
    if conf is not _built_for:
        reset(conf)
    return conf


def broker_is_store(conf: settings.Settings | None = None) -> bool:
    """True when tasks travel through the Redis database that holds the books (however the
    two URLs name it), which lets one script publish, recover or reload atomically."""
    conf = conf or _fresh()
    return same_redis(conf.broker, conf.redis_url)


def _books() -> tuple[Transport, Ledger, Recovery]:
    """The transport, the ledger over it and the recovery beside them, chosen together (see
    :mod:`.books.transports` and :mod:`.books.recovery`): the books' own Redis as the broker,
    or another broker with a journal and one confirmed publisher."""
    global _transport, _ledger, _recovery
    conf = _fresh()
    if _transport is None or _ledger is None or _recovery is None:
        client = books_client(conf)
        names = keys(conf, client)
        if broker_is_store(conf):
            _transport = RedisBroker(celery_app.app, client, names)
            _ledger = Ledger(client, celery_app.app, _transport)
            _recovery = Reaper(
                _ledger, dead_after=conf.dead_after, max_attempts=conf.max_attempts, forget_after=conf.forget_after
            )
        else:
            journal = KombuBroker(celery_app.app, client, names)
            _transport, _ledger = journal, Ledger(client, celery_app.app, journal)
            _recovery = Redeliveries(_ledger, journal, max_attempts=conf.max_attempts)
    return _transport, _ledger, _recovery


def transport() -> Transport:
    """How tasks reach the devices, decided here and nowhere else."""
    return _books()[0]


def ledger() -> Ledger:
    return _books()[1]


def recovery() -> Recovery:
    """How a dead device's tasks go back, decided with the transport."""
    return _books()[2]


def store() -> RedisDeadLetterStore:
    global _store
    conf = _fresh()
    if _store is None:
        client = books_client(conf)
        _store = RedisDeadLetterStore(
            client,
            max_records=conf.dead_letter_max,
            max_age=conf.dead_letter_max_age,
            feed=ledger().feed_backlog,
            keys=keys(conf, client),
        )
    return _store


def devices() -> Devices:
    global _devices
    conf = _fresh()
    if _devices is None:
        client = books_client(conf)
        _devices = Devices(
            client, celery_app.app, flower_url=conf.flower_url, dead_after=conf.dead_after, keys=keys(conf, client)
        )
    return _devices


def rate_limits() -> RateLimits:
    """The channels' rate limits, one budget per channel for all its devices."""
    global _rate_limits
    conf = _fresh()
    if _rate_limits is None:
        client = books_client(conf)
        _rate_limits = RateLimits(client, keys(conf, client))
    return _rate_limits


def cancels() -> Cancels:
    """The channels' cancels (see :mod:`.books.cancels`)."""
    global _cancels
    built = ledger()  # first: it refreshes the settings and the books
    if _cancels is None or _cancels.ledger is not built:
        _cancels = Cancels(built)
    return _cancels
