"""How much memory and time a dead-letter reload takes, by store size.

    python bench/dead_letter_reload.py [--counts 10000 100000] [--runs 3]

Starts a private redis-server, fills the store with N failed tasks, then
reloads them all in a fresh process and prints that process's peak RSS and
the time taken (min / median / max over the runs). Bounded memory means the
peak RSS does not grow with N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import parse_args  # noqa: E402
from fill import fill_dead_letters  # noqa: E402

from mutitask_celery import runtime, settings  # noqa: E402
from mutitask_celery.tools.localredis import LocalRedis  # noqa: E402

# Peak RSS is read from VmHWM, not getrusage: on Linux ru_maxrss survives exec,
# so a child would report its parent's (the filler's) peak.
RELOADER = """
import re, time
import mutitask_celery as mt
t = time.perf_counter()
n = mt.reload_failed()
seconds = time.perf_counter() - t
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(n, seconds, hwm)
"""


def one_run(url: str, count: int) -> tuple[float, float]:
    runtime.ledger().client.flushdb()
    fill_dead_letters(count)
    out = subprocess.run(
        [sys.executable, "-c", RELOADER],
        env={**os.environ, "MUTITASK_REDIS_URL": url},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    moved, seconds, rss_kb = int(out[0]), float(out[1]), int(out[2])
    assert moved == count, (moved, count)
    return seconds, rss_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    args = parse_args(parser, counts=[200], runs=1)
    with LocalRedis() as server:
        os.environ["MUTITASK_REDIS_URL"] = server.url
        settings._current = None
        runtime.reset()
        print(f"{'records':>9} {'seconds (min/med/max)':>24} {'records/s':>10} {'peak RSS MB (min/med/max)':>27}")
        for count in args.counts:
            runs = [one_run(server.url, count) for _ in range(args.runs)]
            secs = sorted(s for s, _ in runs)
            rss = sorted(m for _, m in runs)
            print(
                f"{count:>9} {secs[0]:>7.2f} {statistics.median(secs):>7.2f} {secs[-1]:>7.2f}   "
                f"{count / statistics.median(secs):>10.0f} {rss[0]:>8.1f} {statistics.median(rss):>8.1f} "
                f"{rss[-1]:>8.1f}"
            )


if __name__ == "__main__":
    main()
