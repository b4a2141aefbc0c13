"""The guard around kombu's restore after Celery collected a broken connection
(mutitask_celery/kombu_guard.py): the missing connection details are a connection error,
which kombu and Celery handle by reconnecting, not an AttributeError that ends the worker."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection

import mutitask_celery  # noqa: F401  (installs the guard)


def test_a_detached_transport_fails_as_a_connection_error(redis_url: str) -> None:
    """The state of the crash: a channel whose close was cut short by the dead Redis, still
    open, after Celery's ``collect()`` detached its transport (``_do_close_transport``)."""
    connection = Connection(redis_url)
    channel = connection.default_channel
    transport = channel.connection
    transport.client = None
    with pytest.raises(redis.ConnectionError, match="Redis went away"):
        channel._connparams()  # what kombu's second close calls, to restore what it held
    assert isinstance(redis.ConnectionError(), connection.connection_errors)  # which Celery ignores
    connection.collect()
