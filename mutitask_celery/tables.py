"""Plain-text tables and times as the console, the ``mutitask`` command and the demo print them.

One formatter, so the three read alike. Hand-written rather than ``rich``: a table here
is a few columns of short cells, and the console's prompt and the progress line share
the terminal with it (``rich`` would want to own the terminal and adds a dependency).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first is the header) in left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def local_time(ts: float) -> str:
    """A Unix time as this machine's local date and time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


class _State(Protocol):
    @property
    def code(self) -> int: ...

    @property
    def value(self) -> str: ...


class DeviceRow(Protocol):
    """What :func:`format_devices` shows of a device (``control.Device`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> _State: ...

    @property
    def channels(self) -> Sequence[int]: ...

    @property
    def in_hand(self) -> int: ...

    @property
    def done(self) -> int: ...

    @property
    def last_heard(self) -> float | None: ...


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(0.0, time.time() - ts)
    return f"{seconds:.1f}s ago" if seconds < 120 else local_time(ts)


def format_devices(devices: Sequence[DeviceRow]) -> str:
    """A table of devices with the original's codes beside the words."""
    rows = [("DEVICE", "CODE", "STATE", "CHANNELS", "IN HAND", "DONE", "LAST HEARD")]
    for d in devices:
        rows.append(
            (
                d.name,
                str(d.state.code),
                d.state.value,
                ",".join(map(str, d.channels)) or "-",
                str(d.in_hand),
                str(d.done),
                _ago(d.last_heard),
            )
        )
    return format_table(rows)
