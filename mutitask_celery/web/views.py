"""What the operator's page shows, read from the books, as JSON-ready dicts.

Everything here is read-only but :func:`act_on_devices` and :func:`act_on_dead`, which
the app calls only for a POST that passed its CSRF check. Task data, results, reasons
and tracebacks leave here as text with their size, cut to :data:`LIST_CUT` characters
in lists and :data:`RECORD_CUT` in a record's own view, so a 1 MB task cannot freeze a
browser; the page puts them in the document as text, never as markup.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from mutitask_celery import api, runtime
from mutitask_celery.books.cancels import NothingToCancel
from mutitask_celery.books.dead_filter import DeadFilter
from mutitask_celery.books.ledger import DEFAULT_CHANNEL_SIZE, ChannelBooks
from mutitask_celery.books.records import FailedTask
from mutitask_celery.channels import check_channel
from mutitask_celery.connection import text
from mutitask_celery.control import VERBS, Device
from mutitask_celery.errors import ConfigurationError
from mutitask_celery.web import scaler
from mutitask_celery.web.scaler import known_channels

LIST_CUT = 300  # characters of a task (or reason) shown in a list
RECORD_CUT = 65_536  # ... in one record's view, and of its traceback
RECENT = 10  # dead letters on the overview
PAGE_MAX = 200  # records a page of the dead-letter list, at most
HISTORY_SPAN = 600.0  # seconds of rate history the plots show
RATE_WINDOW = 10.0  # seconds the "rate" column averages over

# Where a record's fields show on the pages, which lay them out from these (each header or
# row carries its field's name and kind, and the page's script fills it from the JSON).
LISTED = tuple(f for f in FailedTask.FIELDS if f.listed)  # a column each in the lists of records
RECORD_ROWS = tuple(f for f in FailedTask.FIELDS if f.label and not f.block)  # a row each in a record's view
RECORD_BLOCKS = tuple(f for f in FailedTask.FIELDS if f.label and f.block)  # ... and a block each below


def shown(value: str, limit: int) -> dict[str, Any]:
    """``value`` cut to ``limit`` characters, with its whole size, for the page to say so."""
    return {"text": value[:limit], "size": len(value.encode("utf-8", "replace")), "cut": len(value) > limit}


def record_view(record: FailedTask, limit: int = LIST_CUT) -> dict[str, Any]:
    """A dead-letter record for the page, its fields as :attr:`.FailedTask.FIELDS` declares
    them: every text cut to ``limit`` (a result that is absent stays None)."""
    view = record.as_dict()
    for f in FailedTask.FIELDS:
        if f.kind.long and view[f.name] is not None:
            view[f.name] = shown(view[f.name], limit)
    return view


class RateHistory:
    """Tasks finished per channel, sampled by the app every couple of seconds, for the
    plots: the books keep totals, not their history, so the page's process keeps the last
    :data:`HISTORY_SPAN` seconds of samples itself (a fresh page still gets the minutes)."""

    def __init__(self, span: float = HISTORY_SPAN) -> None:
        self.span = span
        self._samples: deque[tuple[float, dict[int, int]]] = deque()

    def add(self, when: float, finished: dict[int, int]) -> None:
        self._samples.append((when, dict(finished)))
        while self._samples and self._samples[0][0] < when - self.span:
            self._samples.popleft()

    def series(self, channel: int) -> list[tuple[float, float]]:
        """(time, tasks/s since the sample before) for each sample after the first."""
        points = []
        samples = list(self._samples)
        for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False):
            if channel in b and t1 > t0:
                points.append((t1, max(0, b[channel] - a.get(channel, b[channel])) / (t1 - t0)))
        return points

    def rate(self, channel: int, window: float = RATE_WINDOW) -> float | None:
        """Tasks/s over the last ``window`` seconds; None before two samples."""
        if len(self._samples) < 2:
            return None
        last_t, last = self._samples[-1]
        first_t, first = next(((t, s) for t, s in self._samples if t >= last_t - window), self._samples[0])
        if last_t <= first_t or channel not in last:
            return None
        return max(0, last[channel] - first.get(channel, last[channel])) / (last_t - first_t)


def finished(channels: Iterable[int]) -> dict[int, int]:
    """Tasks each channel has finished (succeeded or failed), as the books count them."""
    books = runtime.ledger().books(list(channels))
    return {ch: b.stats.succeeded + b.stats.failed for ch, b in books.items()}


@dataclass
class Overview:
    """The overview page's data: built in a worker thread, sent as JSON."""

    history: RateHistory

    def channels(self, channels: list[int], books: dict[int, ChannelBooks]) -> list[dict[str, Any]]:
        client = runtime.books_client()
        sizes = {text(k): int(v) for k, v in client.hgetall(runtime.keys().channel_sizes).items()}
        store = runtime.store()
        limits = runtime.rate_limits().all()
        rows = []
        for ch in channels:
            b = books[ch]
            rate = self.history.rate(ch)
            rows.append(
                {
                    "channel": ch,
                    "published": b.stats.published,
                    "succeeded": b.stats.succeeded,
                    "failed": b.stats.failed,
                    "run_twice": b.stats.duplicates,
                    "revived": b.stats.revived,
                    "cancelled": b.stats.cancelled,
                    "outstanding": b.outstanding,
                    "waiting": b.waiting,
                    "held": max(0, b.held),
                    "channel_size": sizes.get(str(ch), DEFAULT_CHANNEL_SIZE),
                    "dead_letters": store.count(ch),
                    "rate": rate,
                    "seconds_left": b.outstanding / rate if rate else None,
                    "rate_limit": limits.get(ch),
                    "history": self.history.series(ch),
                }
            )
        return rows

    def build(self) -> dict[str, Any]:
        """The page's data; its ``scaler`` (what ``/api/scaler`` says) from the same books read."""
        devices = runtime.devices().devices()
        channels = known_channels(c for d in devices for c in d.channels)
        books = runtime.ledger().books(channels)
        return {
            "now": time.time(),
            "channels": self.channels(channels, books),
            "devices": device_rows(devices),
            "dead_letters": recent_dead_letters(),
            "scaler": scaler.figures(channels, books).as_dict(),
        }


def device_rows(devices: list[Device] | None = None) -> list[dict[str, Any]]:
    """Every device as the page and the API show it (read now when not given)."""
    return [d.as_dict() for d in (runtime.devices().devices() if devices is None else devices)]


def recent_dead_letters(count: int = RECENT) -> dict[str, Any]:
    """The ``count`` most recent dead letters, newest first, and how many there are."""
    store = runtime.store()
    total = store.count()
    records = store.failed(None, count, max(0, total - count))
    return {"total": total, "records": [record_view(r) for r in reversed(records)]}


FILTER_TEXTS = ("reason", "device", "since", "until", "text")  # the filter's clauses given as text


def dead_filter(given: dict[str, Any]) -> DeadFilter:
    """The filter a page's query or an action's body names (``channel``, and the texts of
    :data:`FILTER_TEXTS`; ``since``/``until`` may also be Unix seconds); an empty text is no
    clause. Raises ``ConfigurationError`` naming the problem."""
    channel = given.get("channel")
    if channel is not None and (not isinstance(channel, int) or isinstance(channel, bool)):
        raise ConfigurationError('"channel" must be a channel number')
    clauses: dict[str, Any] = {}
    for name in FILTER_TEXTS:
        value = given.get(name)
        numeric = name in ("since", "until") and isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and not isinstance(value, str) and not numeric:
            raise ConfigurationError(f'"{name}" must be a text')
        if value != "":
            clauses[name] = value
    return api.dead_filter(None if channel is None else check_channel(channel), **clauses)


def dead_page(channel: int | None, offset: int, limit: int, where: DeadFilter | None = None) -> dict[str, Any]:
    """A page of the dead-letter store (one channel or all; those ``where`` names), oldest
    failure first, and how many there are."""
    where = where or DeadFilter()
    if channel is not None:
        where = dead_filter({**where.as_dict(), "channel": channel})
    if offset < 0 or not 0 < limit <= PAGE_MAX:
        raise ConfigurationError(f"offset must be 0 or more and limit 1 to {PAGE_MAX}, got {offset} and {limit}")
    store = runtime.store()
    return {
        "channel": where.channel,
        "filter": where.as_dict(),
        "offset": offset,
        "limit": limit,
        "total": store.count(where=where),
        "channels": known_channels(),
        "records": [record_view(r) for r in store.failed(limit=limit, offset=offset, where=where)],
    }


def dead_record(task_id: str) -> dict[str, Any]:
    """One record, its texts cut only at :data:`RECORD_CUT`; raises ``RecordNotFound``."""
    return record_view(runtime.store().get(task_id), RECORD_CUT)


def act_on_dead(action: str, body: dict[str, Any]) -> dict[str, Any]:
    """Reload or delete records: ``{"ids": [...]}``, ``{"channel": N}``, a filter
    (:func:`dead_filter`'s clauses; with ids or a channel, it narrows them), or ``{"all": true}``;
    says how many moved. ``"dry_run": true``: how many would (``matching``), none moving."""
    if action not in ("reload", "delete"):
        raise ConfigurationError(f"no such action {action!r}: reload or delete")
    ids, everything, dry_run = body.get("ids"), body.get("all", False), body.get("dry_run", False)
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise ConfigurationError('"ids" must be a list of record ids')
    if not isinstance(dry_run, bool) or not isinstance(everything, bool):
        raise ConfigurationError('"dry_run" and "all" must be true or false')
    where = dead_filter(body)
    if ids is None and not everything and where.channel is None and not where.narrows:
        raise ConfigurationError(
            'say which: {"ids": [...]}, {"channel": N}, a filter (reason, device, since, until, text) or {"all": true}'
        )
    chosen = cast("list[str] | None", ids)
    store = runtime.store()
    if dry_run:
        return {"action": action, "dry_run": True, "matching": store.count(where=where, ids=chosen)}
    act = store.reload if action == "reload" else store.delete
    return {"action": action, "moved": act(ids=chosen, where=where)}


def cancel_channel(action: str, body: dict[str, Any]) -> dict[str, Any]:
    """Cancel a channel's run: ``{"channel": N}`` (see :mod:`.books.cancels`); a channel with
    nothing to cancel is a 400 that says so."""
    channel = body.get("channel")
    if isinstance(channel, bool) or not isinstance(channel, int) or channel < 1:
        raise ConfigurationError('"channel" must be a channel number (1, 2, ...)')
    try:
        done = runtime.cancels().cancel(channel)
    except NothingToCancel as exc:
        raise ConfigurationError(str(exc)) from None
    return {"action": action, "channel": channel, "dropped": done.dropped, "running": done.running}


def act_on_devices(action: str, body: dict[str, Any]) -> dict[str, Any]:
    """Pause, start or stop devices: ``{"devices": "all"}`` or ``{"devices": [names]}``;
    returns those that confirmed (a stop: those that ended, and under ``stopping`` those still
    finishing a task, with what they run)."""
    if action not in VERBS:
        raise ConfigurationError(f"no such action {action!r}: pause, start or stop")
    chosen = body.get("devices", "all")
    if chosen != "all" and not (isinstance(chosen, list) and chosen and all(isinstance(d, str) for d in chosen)):
        raise ConfigurationError('"devices" must be "all" or a list of device names')
    devices = runtime.devices()
    selectors = None if chosen == "all" else list(chosen)
    if action == "stop":
        report = devices.stop_report(selectors)
        stopping = {name: [r.describe() for r in running] for name, running in report.stopping.items()}
        return {"action": action, "confirmed": report.stopped, "stopping": stopping}
    return {"action": action, "confirmed": devices.apply(action, selectors)}
