"""What recovery costs the server while nothing dies: 50 channels of 1,000 outstanding tasks.

    python bench/recovery_cost.py [--channels 50] [--outstanding 1000] [--seconds 20] [--runs 3]

The server's recovery thread gives dead devices' tasks to live ones every 2 s and sweeps
for tasks a dying device stranded. Here the books of ``--channels`` channels hold
``--outstanding`` tasks each, on their queues, and no device dies; the recovery duties run
every 2 s for ``--seconds``. Prints the share of that time they took (wall, min / median /
max over the runs: the producer's feeding runs in another thread and never waits for
them), and, for comparison, what one full sweep costs (it runs when a device dies, and
once every five minutes).
"""

from __future__ import annotations

import argparse
import time

from common import parse_args, private_redis, spread

from mutitask_celery import codec, runtime
from mutitask_celery.books import messages
from mutitask_celery.books.recovery.reaper import Reaper
from mutitask_celery.settings import HEARTBEAT


def fill(channels: int, outstanding: int) -> None:
    ledger = runtime.ledger()
    ledger.client.flushdb()
    for channel in range(1, channels + 1):
        items = [(messages.new_task_id(), codec.encode(n)) for n in range(outstanding)]
        ledger.publish(channel, items, batch=50)


def share(channels: int, seconds: float) -> float:
    """Wall time the recovery duties took, as a share of the time they ran over."""
    reaper = runtime.recovery()
    assert isinstance(reaper, Reaper)
    names = list(range(1, channels + 1))
    reaper.sweep_if_due(names)  # the first round sweeps (nothing seen yet); then steady state
    reaper.sweep_if_due(names)
    busy = 0.0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        t = time.perf_counter()
        reaper.server_duties(names)  # what the server's recovery thread does each round
        busy += time.perf_counter() - t
        time.sleep(HEARTBEAT)  # the recovery thread's own period
    return busy / (time.monotonic() - start)


def full_sweep(channels: int) -> float:
    reaper = runtime.recovery()
    assert isinstance(reaper, Reaper)
    t = time.perf_counter()
    reaper.sweep(list(range(1, channels + 1)))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=50)
    parser.add_argument("--outstanding", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parse_args(parser, channels=3, outstanding=20, seconds=2.0, runs=1)
    with private_redis():
        fill(args.channels, args.outstanding)
        shares = [share(args.channels, args.seconds) for _ in range(args.runs)]
        sweeps = [full_sweep(args.channels) for _ in range(args.runs)]
    lo, med, hi = spread(shares)
    print(f"{args.channels} channels x {args.outstanding} outstanding, no device dying, over {args.seconds:.0f} s:")
    print(f"  recovery's share of the time (min / median / max): {100 * lo:.2f}% / {100 * med:.2f}% / {100 * hi:.2f}%")
    lo, med, hi = spread(sweeps)
    print(
        f"  one full sweep (after a death; every 300 s otherwise): {1000 * lo:.0f} / {1000 * med:.0f} / "
        f"{1000 * hi:.0f} ms"
    )


if __name__ == "__main__":
    main()
