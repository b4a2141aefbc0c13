"""A long run from a generator: the server's memory stays flat, Redis holds only ChannelSize tasks.

    python bench/memory.py [--tasks 10000000] [--channel-size 1000]

Runs a legacy server script over a generator of ``--tasks`` no-op tasks with two
devices, sampling every second: the server's RSS (VmRSS), and in Redis the tasks
outstanding (books), the messages on the queue and the memory Redis uses.
Prints the peak and the first/last-quarter medians (flat means they match).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from common import HERE, devices_up, parse_args, private_redis, processes

SERVER = """
import sys
from Mutitask.server import BaseConfig, Terminal
def tasks(n):
    for i in range(n):
        yield str(i)
Terminal(baseConfig=BaseConfig(deviceNumb=2, ChannelSize=int(sys.argv[2]))).run(tasks(int(sys.argv[1])))
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000_000)
    parser.add_argument("--channel-size", type=int, default=1000)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    args = parse_args(parser, tasks=5000, every=0.05)
    with private_redis():
        from mutitask_celery import keys, runtime

        client = runtime.ledger().client
        host = socket.gethostname()
        cmds = [[sys.executable, str(HERE / "noop_device.py"), str(n)] for n in (1, 2)]
        with processes(cmds):
            devices_up([f"device1@{host}", f"device2@{host}"])
            server = subprocess.Popen(
                [sys.executable, "-c", SERVER, str(args.tasks), str(args.channel_size)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=os.environ.copy(),
            )
            samples: list[tuple[float, int, int, float]] = []
            start = time.perf_counter()
            while server.poll() is None:
                try:
                    samples.append(
                        (
                            rss_mb(server.pid),
                            client.hlen(keys.pending(1)),
                            client.llen(keys.queue(1)),
                            int(client.info("memory")["used_memory"]) / 2**20,
                        )
                    )
                except FileNotFoundError:
                    break
                time.sleep(args.every)  # the sampling period of this benchmark
            elapsed = time.perf_counter() - start
    if server.returncode != 0 or len(samples) < 4:
        raise SystemExit(f"server exited with {server.returncode} after {len(samples)} samples")
    quarter = max(1, len(samples) // 4)
    rss = [s[0] for s in samples]
    print(f"{args.tasks} tasks in {elapsed:.0f}s ({args.tasks / elapsed:.0f}/s), ChannelSize {args.channel_size}")
    print(
        f"server RSS MB: peak {max(rss):.1f}, first-quarter median {statistics.median(rss[:quarter]):.1f}, "
        f"last-quarter median {statistics.median(rss[-quarter:]):.1f}"
    )
    print(
        f"Redis: most tasks outstanding {max(s[1] for s in samples)}, most messages queued "
        f"{max(s[2] for s in samples)}, peak used_memory {max(s[3] for s in samples):.1f} MB"
    )


if __name__ == "__main__":
    main()
