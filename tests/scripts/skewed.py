"""Run a script with this process's wall clock off: ``skewed.py SECONDS SCRIPT [ARGS...]``.

A host whose clock is SECONDS ahead (or behind, when negative) of the others:
``time.time()`` and ``time.time_ns()`` are shifted, monotonic clocks are not.
"""

from __future__ import annotations

import runpy
import sys
import time

if __name__ == "__main__":
    offset = float(sys.argv[1])
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + offset  # type: ignore[assignment]
    time.time_ns = lambda: _time_ns() + int(offset * 1e9)  # type: ignore[assignment]
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
