"""Which dead-letter records a call acts on: :class:`DeadFilter`, one object for the API, the
CLI, the web page and the store.

A filter narrows by channel, by reason (the record's reason as stored, the exception type and
its text: a plain, case-sensitive substring, or a glob as ``fnmatch.fnmatchcase`` reads it
when it holds ``*``, ``?`` or ``[``), by device (a full name, or a short one: ``device2``
matches ``device2@host``, as the CLI's device commands do), by a window of last failure times
(Redis's clock, as failure times are written) and by the task's text (what ``mutitask failed
show`` prints of its data). Every clause given must hold.

This module knows no Redis: it parses what people type (:func:`parse_moment`) and judges a
record's fields (:meth:`DeadFilter.holds_for`); the store (:mod:`.dead_search`) finds the
candidates and acts on those that hold. Bad input is a :class:`.ConfigurationError` naming the
problem, raised before anything is read or moved.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from mutitask_celery.channels import check_channel
from mutitask_celery.errors import ConfigurationError

GLOB = frozenset("*?[")  # a reason holding one of these is a glob, else a substring
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
MOMENT_HELP = "how long ago (30s, 10m, 2h, 1d, 1h30m) or when (2026-12-04T10:00, local time unless it names its zone)"

Moment = str | float | int | datetime | timedelta  # what since= and until= take


def parse_moment(text: str) -> float | timedelta:
    """What a person typed for ``--since``/``--until``: a duration (``10m``: that long before
    the call) as a ``timedelta``, or a date and time as Unix seconds. A time without a zone is
    this machine's local time, as ``mutitask failed list`` shows times."""
    spoken = text.strip()
    if _DURATION.fullmatch(spoken):
        return timedelta(seconds=sum(float(n) * UNITS[unit] for n, unit in _PART.findall(spoken)))
    try:
        when = datetime.fromisoformat(spoken[:-1] + "+00:00" if spoken.endswith(("Z", "z")) else spoken)
    except ValueError:
        hint = " (a number needs a unit: 600s, 10m)" if spoken.replace(".", "", 1).isdigit() else ""
        raise ConfigurationError(f"cannot read {text!r} as a time{hint}: say {MOMENT_HELP}") from None
    return when.timestamp()


def resolve_moment(value: Moment, now: Callable[[], float]) -> float:
    """``value`` as Unix seconds in Redis's clock: a duration counts back from ``now()`` (read
    only for one); a ``datetime`` without a zone is local time; a number is Unix seconds."""
    if isinstance(value, str):
        value = parse_moment(value)
    if isinstance(value, timedelta):
        return now() - value.total_seconds()
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"a time must be a text, a number, a datetime or a timedelta, got {value!r}")
    return float(value)


def short_device(name: str) -> str:
    """``device1`` of ``device1@host``."""
    return name.split("@", 1)[0]


def _text(name: str, value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or value == ""):
        raise ConfigurationError(f"{name} must be a non-empty text, got {value!r} (leave it out to match every record)")
    return value


@dataclass(frozen=True)
class DeadFilter:
    """What records a list, count, reload or delete acts on; every clause given must hold.

    ``since``/``until`` are Unix seconds in Redis's clock (inclusive); build a filter from what
    people type with :meth:`of`. The empty filter matches every record.
    """

    channel: int | None = None
    reason: str | None = None  # a substring of the reason, or a glob of the whole reason
    device: str | None = None  # a device's full name, or its short name (device2: device2@any host)
    since: float | None = None
    until: float | None = None
    text: str | None = None  # a substring of the task's text (its data as ``failed show`` prints it)

    def __post_init__(self) -> None:
        if self.channel is not None:
            check_channel(self.channel)
        _text("reason", self.reason)
        _text("device", self.device)
        _text("text", self.text)

    @classmethod
    def of(
        cls,
        channel: int | None = None,
        reason: str | None = None,
        device: str | int | None = None,
        since: Moment | None = None,
        until: Moment | None = None,
        text: str | None = None,
        now: Callable[[], float] = lambda: 0.0,
    ) -> DeadFilter:
        """A filter from what a caller gave: a device by number (``2``: ``device2``), times as
        :func:`resolve_moment` reads them (``now``: Redis's clock, read only for a duration)."""
        name = None if device is None else str(device)
        if name is not None and name.isdigit():
            name = f"device{name}"
        moments = {}
        for which, value in (("since", since), ("until", until)):
            try:
                moments[which] = None if value is None else resolve_moment(value, now)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{which}: {exc}") from None
        if moments["since"] is not None and moments["until"] is not None and moments["since"] > moments["until"]:
            raise ConfigurationError("since is after until: the window holds no time")
        return cls(channel, reason, name, moments["since"], moments["until"], text)

    @property
    def reason_is_glob(self) -> bool:
        return self.reason is not None and not GLOB.isdisjoint(self.reason)

    @property
    def reason_prefix(self) -> str:
        """What every matching reason starts with: a glob's text before its first wildcard ('' for
        a substring, which may be anywhere)."""
        if not self.reason_is_glob or self.reason is None:
            return ""
        cut = min(self.reason.index(c) for c in GLOB if c in self.reason)
        return self.reason[:cut]

    @property
    def reason_kind(self) -> str:
        """How a reason clause reads: '' (none), 'sub' (a substring), 'prefix' (a glob ``text*``,
        all its wildcards one ``*`` at the end: the reason starts with ``text``) or 'glob'."""
        if self.reason is None:
            return ""
        if not self.reason_is_glob:
            return "sub"
        return "prefix" if self.reason.endswith("*") and GLOB.isdisjoint(self.reason[:-1]) else "glob"

    @property
    def judged_by_redis(self) -> bool:
        """Whether the step acting on a record can judge every clause itself
        (``lua/dead_match.lua``: a window, a device, a reason's substring or start); a glob
        beyond ``text*`` and a task's text are judged before, in Python."""
        return self.text is None and self.reason_kind != "glob"

    def lua_clauses(self) -> dict[str, str]:
        """The clauses ``lua/dead_match.lua`` judges, as a step's arguments ('' for none; a glob's
        reason is left to the caller's judgement)."""
        kind = self.reason_kind
        return {
            "since": "" if self.since is None else repr(self.since),
            "up_to": "" if self.until is None else repr(self.until),
            "device": self.device or "",
            "reason_kind": kind if kind != "glob" else "",
            "reason": {"sub": self.reason or "", "prefix": (self.reason or "")[:-1]}.get(kind, ""),
        }

    @property
    def narrows(self) -> bool:
        """Whether it asks more of a record than its channel: the records it names are then read."""
        return any(v is not None for v in (self.reason, self.device, self.since, self.until, self.text))

    @property
    def by_content(self) -> bool:
        """Whether a record's fields must be read to judge it (the failure-time index cannot)."""
        return any(v is not None for v in (self.reason, self.device, self.text))

    def holds_for(self, channel: int, device: str, reason: str, last_failed: float) -> bool:
        """Whether a record with these fields matches, its task's text aside (:meth:`shows`)."""
        if self.channel is not None and channel != self.channel:
            return False
        if self.since is not None and last_failed < self.since:
            return False
        if self.until is not None and last_failed > self.until:
            return False
        if self.device is not None and not self.device_matches(device):
            return False
        return self.reason is None or self.reason_matches(reason)

    def device_matches(self, device: str) -> bool:
        wanted = self.device
        return wanted is None or device == wanted or ("@" not in wanted and short_device(device) == wanted)

    def reason_matches(self, reason: str) -> bool:
        if self.reason is None:
            return True
        return fnmatchcase(reason, self.reason) if self.reason_is_glob else self.reason in reason

    def shows(self, task_text: str) -> bool:
        """Whether the task's text (its data as ``failed show`` prints it) holds :attr:`text`."""
        return self.text is None or self.text in task_text

    def until_at_most(self, moment: float) -> DeadFilter:
        """This filter, its window ending at ``moment`` at the latest (when the call began: a
        record written after that is the next call's)."""
        until = moment if self.until is None else min(self.until, moment)
        return DeadFilter(self.channel, self.reason, self.device, self.since, until, self.text)

    def as_dict(self) -> dict[str, Any]:
        """The clauses given, for JSON (``since``/``until`` as Unix seconds)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def describe(self) -> str:
        """The clauses given, in words, for a message."""
        words = []
        if self.channel is not None:
            words.append(f"channel {self.channel}")
        if self.reason is not None:
            words.append(f"reason {'like' if self.reason_is_glob else 'containing'} {self.reason!r}")
        if self.device is not None:
            words.append(f"device {self.device}")
        if self.text is not None:
            words.append(f"task text containing {self.text!r}")
        return ", ".join(words) or "every record"


EVERYTHING = DeadFilter()
