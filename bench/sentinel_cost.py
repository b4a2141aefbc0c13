"""What Redis Sentinel and replica confirmation cost: no-op tasks on one Redis and behind Sentinel, same run.

    python bench/sentinel_cost.py [--tasks 100000] [--runs 3]

Each run measures, at ``ChannelSize`` 50 (the seed's default) and 1000, the legacy server and
two legacy devices (``bench/throughput.py``'s ``ours``: no-op tasks, the default save
function) on a private redis-server, then on a private Sentinel group on this machine
(``mutitask_celery.tools.localsentinel``: a master, two replicas, three sentinels), where
every step of the books waits until both replicas have it (``WAIT``, sent with the step;
see ``mutitask_celery/replication.py``). The two alternate, so that the machine's drift
touches both alike. Prints min / median / max tasks/s of each and the ratio of the medians
(Sentinel over one Redis).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from common import parse_args, private_redis, spread
from throughput import ours

from mutitask_celery import runtime, settings
from mutitask_celery.tools.localsentinel import LocalSentinelGroup


@contextmanager
def behind_sentinel(group: LocalSentinelGroup) -> Iterator[None]:
    """This process and its children on ``group``, then back on the Redis they had."""
    before = os.environ.get("MUTITASK_REDIS_URL")
    os.environ.update({"MUTITASK_REDIS_URL": group.url, "MUTITASK_SENTINEL_MASTER": group.master_name})
    settings.forget()
    runtime.reset()
    try:
        yield
    finally:
        if before is not None:
            os.environ["MUTITASK_REDIS_URL"] = before
        os.environ.pop("MUTITASK_SENTINEL_MASTER", None)
        settings.forget()
        runtime.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks a run")
    parser.add_argument("--runs", type=int, default=3)
    args = parse_args(parser, tasks=300, runs=1)
    figures: dict[tuple[str, int], list[float]] = {}

    def take(where: str, size: int, run: Callable[[], float]) -> None:
        figures.setdefault((where, size), []).append(run())

    with private_redis(), LocalSentinelGroup(die_with_parent=True) as group:
        for _ in range(args.runs):
            for size in (50, 1000):
                take("one Redis", size, lambda: ours(args.tasks, size))  # noqa: B023  # called at once
                with behind_sentinel(group):
                    take("Sentinel, 2 replicas confirm", size, lambda: ours(args.tasks, size))  # noqa: B023
    print(f"no-op tasks/s over {args.runs} run(s) (min / median / max), {args.tasks:,} tasks a run:")
    for size in (50, 1000):
        single = spread(figures[("one Redis", size)])
        confirmed = spread(figures[("Sentinel, 2 replicas confirm", size)])
        for where, (lo, med, hi) in (("one Redis", single), ("Sentinel, 2 replicas confirm", confirmed)):
            print(f"  ChannelSize {size:>4}, {where:<29} {lo:>8.0f} {med:>8.0f} {hi:>8.0f}")
        print(f"  ChannelSize {size:>4}: Sentinel / one Redis (medians) {confirmed[1] / single[1]:.2f}x")


if __name__ == "__main__":
    main()
