"""Latency with idle devices: publish to start, and how long a pause takes to hold.

    python bench/latency.py [--tasks 200] [--pauses 20]

A task is published while one device idles; the device stamps the moment the
task function starts (same machine, same clock). A pause holds from the moment
``pause()`` returns: each device re-reads its wanted state before every task,
so the figure is the duration of the ``pause()`` call. Prints min / median / max.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from common import HERE, devices_up, parse_args, private_redis, processes, spread, wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--pauses", type=int, default=20)
    args = parse_args(parser, tasks=20, pauses=3)
    with private_redis():
        import mutitask_celery as mt
        from mutitask_celery import codec, runtime
        from mutitask_celery.books import messages

        name = f"device1@{socket.gethostname()}"
        with processes([[sys.executable, str(HERE / "noop_device.py"), "1", "stamp"]]):
            devices_up([name])
            ledger = runtime.ledger()
            delays = []
            for n in range(args.tasks):
                sent = time.time()
                ledger.publish(1, [(messages.new_task_id(), codec.encode(str(n)))])
                wait_for(lambda n=n: mt.results_count(1) > n, 10, "the task")
                delays.append((mt.results(1)[-1] - sent) * 1000)
            pauses = []
            for _ in range(args.pauses):
                start = time.perf_counter()
                assert mt.pause(1) == [name]
                pauses.append((time.perf_counter() - start) * 1000)
                mt.start(1)
        d, p = spread(delays), spread(pauses)
        print(
            f"publish -> start, idle device, {args.tasks} tasks (ms): min {d[0]:.2f} median {d[1]:.2f} max {d[2]:.2f}"
        )
        print(f"pause() until it holds, {args.pauses} pauses (ms): min {p[0]:.1f} median {p[1]:.1f} max {p[2]:.1f}")


if __name__ == "__main__":
    main()
