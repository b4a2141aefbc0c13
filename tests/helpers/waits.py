"""Waiting for something to become true: a deadline on ``time.monotonic()`` and growing delays."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` with growing delays until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def device_is_up(name: str) -> Callable[[], bool]:
    """A predicate: the Celery worker ``name`` answers a ping."""
    from mutitask_celery import app

    def ping() -> bool:
        replies = app.control.ping(destination=[name], timeout=0.5)
        return any(name in reply for reply in replies)

    return ping
