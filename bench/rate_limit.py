"""A channel's rate limit across 1, 4 and 8 devices: the rate they achieve together.

    python bench/rate_limit.py [--limit 20] [--seconds 30] [--runs 1]

Each device runs no-op tasks that return when they started (``noop_device.py ... stamp``);
the channel is limited to ``--limit`` tasks a second with ``mutitask_celery.set_rate_limit``
and gets ``limit x seconds`` tasks. The achieved rate is (starts - 1) / (last start - first
start). Prints, per set-up, min / median / max of achieved / limit over the runs.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys

from common import HERE, devices_up, parse_args, private_redis, processes, spread


def one_run(devices: int, limit: float, seconds: float) -> float:
    import mutitask_celery as mt
    from mutitask_celery import runtime
    from mutitask_celery.serving import serve

    runtime.ledger().client.flushdb()
    host = socket.gethostname()
    count = int(limit * seconds)
    cmds = [[sys.executable, str(HERE / "noop_device.py"), str(n), "stamp"] for n in range(1, devices + 1)]
    mt.set_rate_limit(1, limit)  # before the devices start: each knows it from its first message
    with processes(cmds):
        devices_up([f"device{n}@{host}" for n in range(1, devices + 1)])
        summary = serve.serve((str(n) for n in range(count)), channel_size=50, stdin=io.StringIO(""), out=io.StringIO())
    assert summary.succeeded == count, summary
    starts = sorted(float(t) for t in mt.results(1, limit=None))
    return (len(starts) - 1) / (starts[-1] - starts[0]) / limit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=20.0, help="tasks a second (default 20)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each run at the limit (default 30)")
    parser.add_argument("--runs", type=int, default=1)
    args = parse_args(parser, seconds=2.0, runs=1)
    with private_redis():
        for devices in (1, 4, 8):
            ratios = spread([one_run(devices, args.limit, args.seconds) for _ in range(args.runs)])
            print(
                f"{devices} device(s), limit {args.limit:g}/s over {args.seconds:g} s: achieved/limit "
                f"min {ratios[0]:.3f} median {ratios[1]:.3f} max {ratios[2]:.3f} "
                f"(median {ratios[1] * args.limit:.2f} tasks/s)"
            )


if __name__ == "__main__":
    main()
