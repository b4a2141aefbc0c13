"""How much memory and time a dead-letter reload takes, by store size, and a filtered reload
against the unfiltered one.

    python bench/dead_letter_reload.py [--counts 10000 100000] [--runs 3] [--matches 10000]

Starts a private redis-server, fills the store with N failed tasks, then reloads them all in a
fresh process and prints that process's peak RSS and the time taken (min / median / max over
the runs). Bounded memory means the peak RSS does not grow with N.

Then, for each N larger than ``--matches``, the filtered case: N records of which ``--matches``
failed with a ConnectionError on device2 (spread through the store's failure times), the rest
"returned None" on device1; a fresh process reloads only the matches, by reason
(``reason='ConnectionError*'``), by device (``device='device2'``) and by both, and the rate is
set against the unfiltered reload of N in the same run (a filter that reads what it matches
moves at about the same rate; one that read the whole store would be N / matches times
slower). Each run refills the matches it moved.
"""

from __future__ import annotations

import argparse
import json
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
import json, re, sys, time
import mutitask_celery as mt
t = time.perf_counter()
n = mt.reload_failed(**json.loads(sys.argv[1]))
seconds = time.perf_counter() - t
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(n, seconds, hwm)
"""
MATCHING = {"reason": "ConnectionError: site down", "device": "device2@bench"}  # what the filters look for
FILTERS = {  # the filtered reloads timed, by name
    "reason": {"reason": "ConnectionError*"},
    "device": {"device": "device2"},
    "reason+device": {"reason": "ConnectionError*", "device": "device2"},
}
ROUNDS = 100  # the matches are written in this many slices between the others


def reload(url: str, filters: dict[str, str]) -> tuple[int, float, float]:
    """A fresh process reloads what ``filters`` name: (how many moved, seconds, peak RSS MB)."""
    out = subprocess.run(
        [sys.executable, "-c", RELOADER, json.dumps(filters)],
        env={**os.environ, "MUTITASK_REDIS_URL": url},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), float(out[1]), int(out[2]) / 1024


def one_run(url: str, count: int) -> tuple[float, float]:
    runtime.ledger().client.flushdb()
    fill_dead_letters(count)
    moved, seconds, rss = reload(url, {})
    assert moved == count, (moved, count)
    return seconds, rss


def fill_mixed(count: int, matches: int) -> None:
    """``count`` records, ``matches`` of them the filters' (spread through the failure times)."""
    runtime.ledger().client.flushdb()
    rounds = min(ROUNDS, matches)
    for n in range(rounds):
        fill_dead_letters((count - matches) * (n + 1) // rounds - (count - matches) * n // rounds)
        fill_dead_letters(matches * (n + 1) // rounds - matches * n // rounds, **MATCHING)


def filtered_runs(url: str, count: int, matches: int, runs: int) -> dict[str, list[float]]:
    """Seconds each filtered reload took, by filter, ``runs`` times each (the matches refilled)."""
    fill_mixed(count, matches)
    seconds: dict[str, list[float]] = {name: [] for name in FILTERS}
    for _ in range(runs):
        for name, filters in FILTERS.items():
            moved, took, _ = reload(url, filters)
            assert moved == matches, (name, moved, matches)
            seconds[name].append(took)
            fill_dead_letters(matches, **MATCHING)  # the next run finds as many, newest now
    return seconds


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{ordered[0]:>7.2f} {statistics.median(ordered):>7.2f} {ordered[-1]:>7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--matches", type=int, default=10_000, help="records a filtered reload moves (default 10000)")
    args = parse_args(parser, counts=[200], runs=1, matches=20)
    with LocalRedis() as server:
        os.environ["MUTITASK_REDIS_URL"] = server.url
        settings._current = None
        runtime.reset()
        print(f"{'records':>9} {'seconds (min/med/max)':>24} {'records/s':>10} {'peak RSS MB (min/med/max)':>27}")
        rates = {}
        for count in args.counts:
            runs = [one_run(server.url, count) for _ in range(args.runs)]
            secs = sorted(s for s, _ in runs)
            rss = sorted(m for _, m in runs)
            rates[count] = count / statistics.median(secs)
            print(
                f"{count:>9} {secs[0]:>7.2f} {statistics.median(secs):>7.2f} {secs[-1]:>7.2f}   "
                f"{rates[count]:>10.0f} {rss[0]:>8.1f} {statistics.median(rss):>8.1f} {rss[-1]:>8.1f}"
            )
        for count in (c for c in args.counts if c > args.matches):
            print(
                f"\nfiltered: {args.matches} of {count} records match "
                f"(the unfiltered reload of {count}: {rates[count]:.0f} records/s)"
            )
            print(f"{'filter':>14} {'seconds (min/med/max)':>24} {'records/s':>10} {'vs unfiltered':>14}")
            for name, secs in filtered_runs(server.url, count, args.matches, args.runs).items():
                rate = args.matches / statistics.median(secs)
                print(f"{name:>14} {spread(secs)}   {rate:>10.0f} {rate / rates[count]:>13.2f}x")


if __name__ == "__main__":
    main()
