"""I/O-bound tasks (50 ms sleeps): how close to the ideal time devices get.

    python bench/io_bound.py [--tasks 2000] [--runs 3]

Two set-ups, each against its ideal (tasks x 50 ms / slots): five devices with
one slot each (ideal 20 s for 2,000 tasks), and one device with
``BaseConfig(..., concurrency=20)`` (ideal 5 s). Prints min / median / max of
elapsed / ideal.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import time

from common import HERE, devices_up, parse_args, private_redis, processes, spread

TASK_SECONDS = 0.05


def one_run(count: int, devices: int, slots: int) -> float:
    from mutitask_celery import runtime
    from mutitask_celery.serving import serve

    runtime.ledger().client.flushdb()
    host = socket.gethostname()
    cmds = [[sys.executable, str(HERE / "noop_device.py"), str(n), "sleep", str(slots)] for n in range(1, devices + 1)]
    with processes(cmds):
        devices_up([f"device{n}@{host}" for n in range(1, devices + 1)])
        start = time.perf_counter()
        summary = serve.serve(
            (str(n) for n in range(count)),
            channel_size=max(50, 2 * devices * slots),
            stdin=io.StringIO(""),
            out=io.StringIO(),
        )
        elapsed = time.perf_counter() - start
    assert summary.succeeded == count, summary
    return elapsed / (count * TASK_SECONDS / (devices * slots))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["5x1", "1x20"], help="run one set-up only")
    args = parse_args(parser, tasks=60, runs=1)
    setups = [(5, 1), (1, 20)]
    if args.only:
        setups = [tuple(int(n) for n in args.only.split("x"))]  # type: ignore[misc]
    with private_redis():
        for devices, slots in setups:
            ratios = spread([one_run(args.tasks, devices, slots) for _ in range(args.runs)])
            ideal = args.tasks * TASK_SECONDS / (devices * slots)
            print(
                f"{devices} device(s) x {slots} slot(s), ideal {ideal:.1f}s: elapsed/ideal "
                f"min {ratios[0]:.3f} median {ratios[1]:.3f} max {ratios[2]:.3f}"
            )


if __name__ == "__main__":
    main()
