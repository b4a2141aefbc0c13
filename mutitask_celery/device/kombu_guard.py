"""A guard around one kombu 5.7 / Celery 5.7 race that kills a worker when Redis goes away.

When a worker loses its Redis connection, Celery first ``collect()``s the connection (which
closes its channels and then detaches the transport from the connection) and then
``close()``s it. If the first close of the consuming channel was cut short by the dead
Redis (its pending ``BRPOP`` read raised), the second close runs kombu's restore of the
messages it still holds with no connection details left, and fails with
``AttributeError: 'NoneType' object has no attribute 'hostname'``. Celery takes that for an
unrecoverable error and the worker exits: a device lost to a mere Redis restart.

The guard makes the missing connection details the connection error they are, which both
kombu and Celery already handle: the close is given up, the worker reconnects, and the
messages it held stay in kombu's ``unacked`` hash, noted in the device's hands, for the
device itself or a reaper (see :mod:`.recovery`).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_GUARDED = "_mutitask_guarded"


def install() -> None:
    """Wrap kombu's Redis channel once per process (idempotent)."""
    original = kombu_redis.Channel._connparams
    if getattr(original, _GUARDED, False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection was closed (Redis went away)")
        return original(self, asynchronous)  # type: ignore[no-untyped-call]  # kombu is untyped

    setattr(_connparams, _GUARDED, True)
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
