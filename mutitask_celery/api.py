"""Module-level functions over the dead-letter store and the result lists.

These read the settings of this process (``MUTITASK_REDIS_URL``,
``celeryconfig.py``, ...), so a script or a shell can inspect a run that
other processes did.

The dead-letter functions take the same keyword filters (:class:`.DeadFilter`): ``reason=``
(a substring of the reason, or a glob of the whole of it when it holds ``*``, ``?`` or
``[``), ``device=`` (``"device2"``, ``"device2@host"`` or ``2``), ``since=`` and ``until=``
(``"10m"``, ``"2026-12-04T10:00"``, a ``datetime``, a ``timedelta`` ago, or Unix seconds)
and ``text=`` (in the task's text); every one given must hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mutitask_celery import codec, runtime
from mutitask_celery.books.cancels import Cancelled
from mutitask_celery.books.dead_filter import DeadFilter, Moment
from mutitask_celery.books.dead_letters import FoundRecords
from mutitask_celery.books.records import FailedTask
from mutitask_celery.channels import check_channel
from mutitask_celery.connection import redis_now
from mutitask_celery.control import Device
from mutitask_celery.device import cancelled as device_cancelled

DeviceSelector = str | int | Iterable[str | int]


def _channel(channel: int | None) -> int | None:
    return None if channel is None else check_channel(channel)


PAGE = 1000  # what results() and failed() return unless told: never a million at once by surprise


def results(channel: int, limit: int | None = PAGE, offset: int = 0) -> list[Any]:
    """Results the default save function stored for ``channel``, decoded, oldest first: a page
    of ``limit`` from ``offset`` (``limit=None``: all of them)."""
    stop = -1 if limit is None else offset + limit - 1
    if limit is not None and limit <= 0:
        return []
    ledger = runtime.ledger()
    raw = ledger.client.lrange(ledger.keys.results(check_channel(channel)), offset, stop)
    return [codec.decode(r) for r in raw]


def results_count(channel: int) -> int:
    ledger = runtime.ledger()
    return int(ledger.client.llen(ledger.keys.results(check_channel(channel))))


def clear_results(channel: int) -> int:
    """Delete the channel's stored results; returns how many there were."""
    client, key = runtime.ledger().client, runtime.ledger().keys.results(check_channel(channel))
    pipe = client.pipeline(transaction=True)
    pipe.llen(key)
    pipe.delete(key)
    return int(pipe.execute()[0])


def dead_filter(
    channel: int | None = None,
    reason: str | None = None,
    device: str | int | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
    text: str | None = None,
) -> DeadFilter:
    """The filter the keywords say (a duration counted back from Redis's clock, now); raises
    ``ConfigurationError`` naming what is wrong, before anything is read or moved."""
    client = runtime.store().client
    return DeadFilter.of(_channel(channel), reason, device, since, until, text, now=lambda: redis_now(client))


def failed(
    channel: int | None = None,
    limit: int | None = PAGE,
    offset: int = 0,
    *,
    reason: str | None = None,
    device: str | int | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
    text: str | None = None,
) -> list[FailedTask]:
    """Dead-letter records (one channel, or all; those the filters name), oldest failure first:
    a page of ``limit`` from ``offset`` (``limit=None``: all of them)."""
    return runtime.store().failed(
        limit=limit, offset=offset, where=dead_filter(channel, reason, device, since, until, text)
    )


def find_failed(
    text: str,
    channel: int | None = None,
    limit: int | None = PAGE,
    offset: int = 0,
    *,
    cursor: str | None = None,
    reason: str | None = None,
    device: str | int | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
) -> FoundRecords:
    """Dead-letter records whose task's text (its data as ``mutitask failed show`` prints it)
    contains ``text``, oldest failure first: ``limit`` of them from ``offset``, after ``cursor``
    (the ``cursor`` of the page before; None when there are no more). It reads every record the
    other filters leave: no index knows a task's text."""
    where = dead_filter(channel, reason, device, since, until, text)
    return runtime.store().find(where, limit, offset, cursor)


def failed_count(
    channel: int | None = None,
    *,
    reason: str | None = None,
    device: str | int | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
    text: str | None = None,
) -> int:
    """How many records (one channel, or all; those the filters name): O(1) for a channel, and
    for a time window; else what the filters find."""
    return runtime.store().count(where=dead_filter(channel, reason, device, since, until, text))


def failed_dropped(channel: int | None = None) -> int:
    """How many records the retention limits (``dead_letter_max``/``_max_age``) dropped."""
    return runtime.store().dropped(_channel(channel))


def get_failed(task_id: str) -> FailedTask:
    return runtime.store().get(task_id)


def reload_failed(
    channel: int | None = None,
    ids: Iterable[str] | None = None,
    *,
    reason: str | None = None,
    device: str | int | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
    text: str | None = None,
    dry_run: bool = False,
) -> int:
    """Put failed tasks back on their channels (those of ``ids`` when given; the filters narrow
    it); returns how many. The records that matched when the call began, at most: one that
    fails again meanwhile is not reloaded twice. ``dry_run``: how many would move; none does."""
    return _act("reload", channel, ids, dead_filter(channel, reason, device, since, until, text), dry_run)


def delete_failed(
    channel: int | None = None,
    ids: Iterable[str] | None = None,
    *,
    reason: str | None = None,
    device: str | int | None = None,
    since: Moment | None = None,
    until: Moment | None = None,
    text: str | None = None,
    dry_run: bool = False,
) -> int:
    """Delete failed tasks for good (as :func:`reload_failed` chooses them); returns how many."""
    return _act("delete", channel, ids, dead_filter(channel, reason, device, since, until, text), dry_run)


def _act(action: str, channel: int | None, ids: Iterable[str] | None, where: DeadFilter, dry_run: bool) -> int:
    """Reload or delete what ``where`` (and ``ids``) name, or count it for a dry run."""
    store = runtime.store()
    chosen = None if ids is None else list(ids)
    if dry_run:
        return store.count(where=where, ids=chosen)
    act = store.reload if action == "reload" else store.delete
    return act(ids=chosen, where=where)


def _selectors(devices: DeviceSelector) -> list[str | int] | None:
    if devices == "all" or devices is None:
        return None
    if isinstance(devices, (str, int)):
        return [devices]
    return list(devices)


def devices() -> list[Device]:
    """Every device: name, channels, state (running/paused/offline), tasks in hand and done, last heard."""
    return runtime.devices().devices()


def pause(devices: DeviceSelector = "all") -> list[str]:
    """Pause devices (``"all"``, a name, a number, or a list); the task in hand finishes.

    No task starts on a paused device after this returns; the pause survives a
    restart of the device. Returns the devices that confirmed.
    """
    return runtime.devices().pause(_selectors(devices))


def start(devices: DeviceSelector = "all") -> list[str]:
    """Let paused devices take tasks again; returns the devices that confirmed."""
    return runtime.devices().start(_selectors(devices))


def stop(devices: DeviceSelector = "all") -> list[str]:
    """Warm shutdown of devices (their processes end); returns those that went away."""
    return runtime.devices().stop(_selectors(devices))


def set_rate_limit(channel: int, per_second: float | None) -> float | None:
    """At most ``per_second`` tasks of ``channel`` start each second, all its devices together
    (``None`` removes the limit); running devices keep to it within a second. Returns it."""
    return runtime.rate_limits().set(check_channel(channel), per_second)


def rate_limits() -> dict[int, float]:
    """Every channel's rate limit, in tasks a second (channels without one are absent)."""
    return runtime.rate_limits().all()


def cancel(channel: int | None = None) -> list[Cancelled]:
    """Cancel a channel's run (``None``: every channel with tasks outstanding): its server takes
    no more tasks, waiting ones leave the books as cancelled, devices start none of them, and
    running ones end as they will (see :mod:`.books.cancels`). Raises
    :class:`.NothingToCancel` for a channel the books do not know or whose run has ended."""
    cancels = runtime.cancels()
    return cancels.cancel_all() if channel is None else [cancels.cancel(check_channel(channel))]


def cancelled() -> bool:
    """For a task function: True once the channel of the task it runs was cancelled; a long
    task may poll it and return early (its return value is recorded as usual)."""
    return device_cancelled.cancelled()
