"""The process-wide objects built from the settings: Redis client, books, store.

Built lazily (a device forks or starts threads after import) and rebuilt by
:func:`reset` when the legacy ``BaseConfig`` supplies other connection details.
"""

from __future__ import annotations

from mutitask_celery import celery_app, settings
from mutitask_celery.books.dead_letters import RedisDeadLetterStore
from mutitask_celery.books.ledger import Ledger
from mutitask_celery.books.publisher import BrokerPublisher
from mutitask_celery.books.recovery import Reaper, Redeliveries
from mutitask_celery.connection import redis_client, same_redis
from mutitask_celery.control import Devices

_ledger: Ledger | None = None
_store: RedisDeadLetterStore | None = None
_devices: Devices | None = None
_reaper: Reaper | None = None
_publisher: BrokerPublisher | None = None
_redeliveries: Redeliveries | None = None
_built_for: settings.Settings | None = None


def reset(conf: settings.Settings | None = None) -> settings.Settings:
    """Drop cached objects; point the Celery app at ``conf`` (default: current settings)."""
    global _ledger, _store, _devices, _reaper, _publisher, _redeliveries, _built_for
    conf = conf or settings.current()
    if _publisher is not None:
        _publisher.close()
    celery_app.apply_settings(conf)
    _ledger = _store = _devices = _reaper = _publisher = _redeliveries = None
    _built_for = conf
    return conf


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


def ledger() -> Ledger:
    global _ledger
    conf = _fresh()
    if _ledger is None:
        _ledger = Ledger(redis_client(conf.redis_url), celery_app.app, broker_is_store(conf), publisher())
    return _ledger


def store() -> RedisDeadLetterStore:
    global _store
    conf = _fresh()
    if _store is None:
        _store = RedisDeadLetterStore(
            redis_client(conf.redis_url),
            celery_app.app,
            broker_is_store(conf),
            max_records=conf.dead_letter_max,
            max_age=conf.dead_letter_max_age,
            publisher=publisher(),
            feed=ledger().feed_backlog,
        )
    return _store


def devices() -> Devices:
    global _devices
    conf = _fresh()
    if _devices is None:
        _devices = Devices(redis_client(conf.redis_url), celery_app.app, flower_url=conf.flower_url)
    return _devices


def publisher() -> BrokerPublisher | None:
    """The one publisher (one broker connection) of this process for a broker other
    than the books' Redis; None on that Redis, where the books push messages themselves."""
    global _publisher
    conf = _fresh()
    if broker_is_store(conf):
        return None
    if _publisher is None:
        _publisher = BrokerPublisher(celery_app.app)
    return _publisher


def redeliveries() -> Redeliveries | None:
    """Poison-task counting on a broker that redelivers by itself; None on the Redis broker,
    where the reaper counts deaths."""
    global _redeliveries
    conf = _fresh()
    if broker_is_store(conf):
        return None
    if _redeliveries is None:
        _redeliveries = Redeliveries(redis_client(conf.redis_url), ledger(), max_attempts=conf.max_attempts)
    return _redeliveries


def reaper() -> Reaper | None:
    """The dead-device reaper, or None when the broker is not this Redis (RabbitMQ
    redelivers a dead consumer's messages by itself)."""
    global _reaper
    conf = _fresh()
    if not broker_is_store(conf):
        return None
    if _reaper is None:
        _reaper = Reaper(
            redis_client(conf.redis_url),
            ledger(),
            dead_after=conf.dead_after,
            max_attempts=conf.max_attempts,
            forget_after=conf.forget_after,
        )
    return _reaper
