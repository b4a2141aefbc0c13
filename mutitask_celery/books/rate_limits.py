"""Rate limits per channel, one budget for all of its devices (``lua/take_tokens.lua``).

Celery's ``rate_limit`` is per worker: ten devices at 5/s make 50/s. Here a channel's
limit (tasks a second, started) lives in Redis, and every device takes from the same
budget in one Lua step before it starts tasks; a message of several tasks takes several.
Setting or removing a limit is one ``HSET``/``HDEL``: devices read it at their next
take, and their copy (:mod:`.device.pacing`) is at most :data:`REFRESH` seconds old.
"""

from __future__ import annotations

import math
from typing import Any

import redis

from mutitask_celery.books import steps
from mutitask_celery.connection import text
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.keys import DEFAULT, Keys

REFRESH = 0.5  # seconds a device trusts its copy of the limits


def check_rate(value: object) -> float | None:
    """Tasks a second: a positive number, or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigurationError(f"a rate limit must be a positive number of tasks a second, got {value!r}")
    return float(value)


def parse_rate(text: str) -> float | None:
    """A rate as typed: a positive number of tasks a second, or ``off`` (no limit)."""
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(
            f"a rate limit must be a positive number of tasks a second or off, got {text!r}"
        ) from None
    return check_rate(value)


def describe(limits: dict[int, float]) -> str:
    """``rate limits: channel 1 20/s, channel 3 0.5/s`` (or that there are none)."""
    if not limits:
        return "rate limits: none"
    return "rate limits: " + ", ".join(f"channel {c} {rate:g}/s" for c, rate in sorted(limits.items()))


def check_rate_map(limits: object) -> dict[Any, Any]:
    """``rate_limits`` as given to a server: a dict (its channels and rates are checked by
    :func:`check_rates` once the run's channels are known)."""
    if not isinstance(limits, dict):
        raise ConfigurationError(
            f"rate_limits must be a dict of channel -> tasks a second, got {type(limits).__name__}"
        )
    return dict(limits)


def check_rates(limits: object, channels: int) -> dict[int, float]:
    """A run's ``rate_limits={channel: per_second}``, each channel one of the run's 1..``channels``."""
    checked = {}
    for channel, rate in check_rate_map(limits).items():
        if isinstance(channel, bool) or not isinstance(channel, int) or not 1 <= channel <= channels:
            raise ConfigurationError(
                f"rate_limits names channel {channel!r}, but this run has channel(s) 1 to {channels}"
            )
        value = check_rate(rate)
        if value is None:
            raise ConfigurationError(f"rate_limits[{channel}] must be a positive number of tasks a second, got None")
        checked[channel] = value
    return checked


class RateLimits:
    """The channels' limits in the books' Redis."""

    def __init__(self, client: redis.Redis, keys: Keys = DEFAULT) -> None:
        self.client, self.keys = client, keys
        self._take = steps.TAKE_TOKENS.on(client)

    def set(self, channel: int, per_second: float | None) -> float | None:
        """Limit ``channel`` to ``per_second`` tasks a second (None: no limit); returns it."""
        rate = check_rate(per_second)
        if rate is None:
            self.client.hdel(self.keys.rate_limits, str(channel))
        else:
            self.client.hset(self.keys.rate_limits, str(channel), repr(rate))
        return rate

    def all(self) -> dict[int, float]:
        """Every channel's limit (channels without one are absent)."""
        found = {}
        for channel, rate in self.client.hgetall(self.keys.rate_limits).items():
            try:
                found[int(text(channel))] = float(text(rate))
            except ValueError:
                continue
        return found

    def take(self, channel: int, tasks: int) -> tuple[float, float | None]:
        """Take ``tasks`` starts from the channel's budget: (seconds to wait before asking
        again, 0 when taken; the limit, None when the channel has none)."""
        wait, limit = self._take(
            rate_limits=self.keys.rate_limits, rate_tat=self.keys.rate_tat, tasks=tasks, channel=channel
        )
        return int(wait) / 1e6, (int(limit) / 1000 or None)
