"""What an autoscaler reads: the work there is, counted in tasks, and the devices at it.

A queue's length says little here: a message carries up to ``ChannelSize`` tasks, and what
devices hold or run is on no queue. The books know the work exactly: a task is
*outstanding* (``pending:<ch>``) from its publishing until a device finishes it, whether it
waits in the queue, sits in a device's hands, runs, or was reloaded from the dead-letter
store and waits in ``backlog:<ch>`` for room (reloaded tasks are in ``pending:<ch>`` too,
so they count once). Here that figure is called the **backlog**: the tasks still to do.

The devices are counted from what they write in the books themselves (their heartbeats and
what they said of their end, :meth:`.Devices.presence`), never by asking them over Celery's
remote control: a poll of this costs three or four Redis round trips, whatever the number
of devices and however many of them are gone.

:func:`figures` computes them once for every reader: ``GET /api/scaler`` (KEDA's
``metrics-api`` scaler), ``/metrics`` (``mutitask_backlog_tasks``), the overview's JSON and
``mutitask status --json``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mutitask_celery import runtime
from mutitask_celery.books.ledger import ChannelBooks
from mutitask_celery.connection import text
from mutitask_celery.control import DeviceState, Presence


@dataclass(frozen=True)
class ChannelLoad:
    """One channel's figures."""

    backlog: int  # tasks published (or reloaded) and not finished: queued, held, running
    devices: int  # devices of the channel that are not offline

    def as_dict(self) -> dict[str, int]:
        return {"backlog": self.backlog, "devices": self.devices}


@dataclass(frozen=True)
class ScalerFigures:
    """The backlog in tasks and the devices at work, per channel and in all."""

    channels: dict[int, ChannelLoad]
    devices: int  # devices not offline (running, paused or stopping), each counted once

    @property
    def backlog(self) -> int:
        """Tasks still to do on every channel."""
        return sum(load.backlog for load in self.channels.values())

    def as_dict(self) -> dict[str, Any]:
        """The JSON an autoscaler reads, e.g. with KEDA's ``valueLocation`` ``backlog`` or
        ``channels.1.backlog``: channel keys are the channel numbers as strings."""
        return {
            "backlog": self.backlog,
            "devices": self.devices,
            "channels": {str(ch): load.as_dict() for ch, load in sorted(self.channels.items())},
        }


def known_channels(served: Iterable[int] = ()) -> list[int]:
    """Every channel the books know: a server ran it, it has dead letters, or a device serves it
    (``served``: the channels of the devices at hand)."""
    sizes = {text(c) for c in runtime.books_client().hkeys(runtime.keys().channel_sizes)}
    channels = {int(c) for c in sizes if c.isdigit() and int(c) > 0}
    channels.update(c for c in runtime.store().channels() if c > 0)
    channels.update(c for c in served if c > 0)
    return sorted(channels)


def figures(
    channels: Sequence[int] | None = None,
    books: Mapping[int, ChannelBooks] | None = None,
    present: Sequence[Presence] | None = None,
) -> ScalerFigures:
    """The figures, read now. Every channel the books know appears (one with nothing to do as
    0); ``channels``, ``books`` and ``present``, when a caller has just read them (the
    overview), are used instead of reading them again, so its rows and these agree.

    Each channel's backlog is its outstanding count (``HLEN pending:<ch>``), all channels in one
    round trip: exact at the instant it is read. While a run goes on, tasks are published and
    finished meanwhile, so by the time a reader acts on it the work has moved by about a
    message's tasks; once devices are paused nothing moves, and it is exact.
    """
    present = runtime.devices().presence() if present is None else present
    at_work = [p for p in present if p.state is not DeviceState.OFFLINE]
    if channels is None:
        channels = known_channels(c for p in present for c in p.channels)
    if books is None or any(ch not in books for ch in channels):
        books = runtime.ledger().books(list(channels))
    return ScalerFigures(
        channels={
            ch: ChannelLoad(books[ch].outstanding, sum(1 for p in at_work if ch in p.channels)) for ch in channels
        },
        devices=len(at_work),
    )
