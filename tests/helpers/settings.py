"""The package's settings, read afresh after a test changed the environment."""

from __future__ import annotations

FAST = {"MUTITASK_DEAD_AFTER": "3"}  # declare a silent device dead after 3 s (default 10)


def fresh_settings() -> None:
    """Settings read afresh (the environment or celeryconfig.py changed) and the process-wide
    objects rebuilt from them."""
    from mutitask_celery import runtime, settings

    settings.forget()
    runtime.reset()
