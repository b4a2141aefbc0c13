"""The seed's scripts, as shipped in examples/, run as real processes: every task accounted for."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import redis
from helpers.paths import ROOT
from helpers.processes import Processes

import mutitask_celery as mt
from mutitask_celery import runtime

EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

import local_site  # noqa: E402
from make_images import make_images  # noqa: E402


def run_example(procs: Processes, name: str, env: dict[str, str]) -> str:
    devices = [procs.python(EXAMPLES / f"{name}_device{n}.py", env=env) for n in (1, 2)]
    server = procs.python(EXAMPLES / f"{name}_server.py", env=env)
    assert server.wait(180) == 0, procs.output(server)
    for dev in devices:
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(20) == 0
    return "".join(procs.output(d) for d in devices)


def test_spider_example(procs: Processes, r: redis.Redis) -> None:
    site = local_site.start()
    try:
        env = {"MUTITASK_DEMO_SITE": f"http://127.0.0.1:{site.server_port}"}
        printed = run_example(procs, "spider", env)
    finally:
        site.shutdown()
        site.server_close()
    pages = set(range(1, 201))
    failing = {n for n in pages if local_site.page_fails(n)}
    # The save function print()s each page: every good page exactly once, across both devices.
    seen = [int(n) for n in re.findall(r"<title>page (\d+)</title>", printed)]
    assert sorted(seen) == sorted(pages - failing)
    # Every failing page is in the dead-letter store, once, with the reason.
    records = mt.failed(1)
    assert sorted(int(f.data.rstrip("/").rsplit("/", 1)[1]) for f in records) == sorted(failing)
    assert {f.reason for f in records} == {"returned None"}
    stats = runtime.ledger().stats(1)
    assert (stats.published, stats.succeeded, stats.failed, stats.duplicates) == (
        200,
        200 - len(failing),
        len(failing),
        0,
    )
    assert runtime.ledger().outstanding(1) == 0


def test_convolve_example(procs: Processes, r: redis.Redis, tmp_path: Path) -> None:
    from PIL import Image
    from scipy.signal import convolve2d

    images = tmp_path / "images"
    make_images(images)
    run_example(procs, "convolve", {"MUTITASK_DEMO_IMAGES": str(images)})
    kernel = np.array([[-1, 1, -1], [1, -1, 1], [-1, 1, -1]])

    def digest(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()

    expected = sorted(
        digest(convolve2d(np.array(Image.open(images / f"{i}.jpg").convert("L")), kernel, mode="same"))
        for i in range(1, 201)
    )
    results = mt.results(1)
    assert all(isinstance(a, np.ndarray) and a.shape == (32, 32) for a in results)
    assert sorted(digest(a) for a in results) == expected  # each image's result saved exactly once
    assert mt.failed_count() == 0 and runtime.ledger().outstanding(1) == 0


def test_demo_script_runs_and_leaves_no_process(redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "run_demo.py")], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "channel 1: published 200, succeeded 189, failed 11" in out.stdout
    assert "channel 1: published 200, succeeded 200, failed 0" in out.stdout
    leftover = subprocess.run(["pgrep", "-f", str(EXAMPLES / "spider_device")], capture_output=True, text=True)
    assert leftover.stdout == ""
