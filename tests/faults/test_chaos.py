"""A short chaos soak (bench/chaos.py) in the default test command: eight devices, one of them
on the prefork pool, random SIGKILLs and freezes, two Redis restarts mid-run, 1 % poison tasks,
2 % tasks that fail until the soak reloads them, a user's save function on one channel.
Nothing may be lost, nothing healthy buried, nothing saved twice (by either save function),
nothing left behind. ``python bench/chaos.py`` is the long one. The same behind Redis Sentinel
(``--sentinel``: a killed, a handed-over and a frozen master) runs with ``-m slow``."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from helpers.paths import ROOT

pytestmark = pytest.mark.services  # the soak starts its own redis-server (or Sentinel group) and devices


def soak(*options: str, timeout: float) -> dict[str, Any]:
    """Run bench/chaos.py with ``options`` and ``--json``; its figures."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *options, "--timeout", str(timeout - 80), "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def assert_each_task_ended_once(figures: dict[str, Any], tasks: int) -> None:
    assert figures["lost"] == 0 and figures["wrongly_buried"] == 0 and figures["saved_twice"] == 0, figures
    assert figures["saved_twice_by_save_function"] == 0 and figures["failed_after_reloads"] == 0, figures
    assert figures["dead_lettered_poison"] == figures["poison_fed"] == tasks // 100, figures
    # Each healthy task saved once, or buried while saving (a device killed between its claim and
    # its record: saved or not, never twice).
    unsaved = figures["buried_while_saving"] - figures["of_those_saved"]
    assert figures["saved"] + unsaved == tasks - tasks // 100 and figures["outstanding"] == 0, figures
    assert figures["leftovers"] == {"held": 0, "claims": 0, "notes": 0, "stale_unacked": 0}, figures


@pytest.mark.timeout(600)
def test_a_short_chaos_soak_ends_every_task_exactly_once() -> None:
    figures = soak("--tasks", "2000", "--kill-every", "1.5", "--freeze-every", "3", timeout=560)
    assert_each_task_ended_once(figures, 2000)
    assert figures["redis_restarts"] == 2 and figures["reloads"] == 2 and figures["kills"] >= 1, figures


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_short_chaos_soak_behind_sentinel_ends_every_task_exactly_once() -> None:
    figures = soak("--sentinel", "--tasks", "3000", "--redis-restarts", "3", timeout=380)
    assert_each_task_ended_once(figures, 3000)
    assert figures["failovers"] == {"kill": 1, "handover": 1, "freeze": 1} and figures["reloads"] == 2, figures
    went_on = figures["went_on_after"]  # the last fault may come too near the end to see the run go on
    assert len(went_on["each"]) + len(went_on["not_seen"]) == 3 and len(went_on["each"]) >= 2, figures
