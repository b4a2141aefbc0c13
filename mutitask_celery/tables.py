"""Plain-text tables and times as the console, the ``mutitask`` command and the demo print them.

One formatter, so the three read alike. Hand-written rather than ``rich``: a table here
is a few columns of short cells, and the console's prompt and the progress line share
the terminal with it (``rich`` would want to own the terminal and adds a dependency).
"""

from __future__ import annotations

import time
from collections.abc import Sequence


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first is the header) in left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def local_time(ts: float) -> str:
    """A Unix time as this machine's local date and time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
