"""An elastic fleet: devices told to leave (SIGTERM) and started all through a run.

    python bench/churn.py [--tasks 6000] [--devices 4] [--every 3] [--runs 1] [--pool threads]

Each run serves TASKS tasks (each sleeps 50 ms; ChannelSize 10) to DEVICES devices
(``celery worker -I churn_job``, two threads each) on a private redis-server twice: first with a
fixed fleet, then with churn, as an autoscaler and spot instances make it: every EVERY seconds on
average (at random) one device, chosen at random, gets SIGTERM and a new one (a new name) starts in
its place. Prints, per run and as min / median / max over runs: each run's seconds, their ratio
(churn over fixed), the average number of devices (started and not yet told to leave, sampled
every 0.2 s) and of those ready (in the roster: a new device's start-up, two seconds or so, is not
work), the ratio of ready-device-seconds a task (the time ratio at the same average fleet), and
what must be nothing: tasks lost,
dead-lettered, run twice, deaths charged (``lost:<ch>``); and the devices that left with exit code
other than 0 (a task past its grace: 8).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import HERE, ROOT, devices_up, parse_args, private_redis, spread

from mutitask_celery import runtime
from mutitask_celery.serving import serve
from mutitask_celery.tools.processes import stop_process_groups, worker_command

SAMPLE_EVERY = 0.2


class Fleet:
    """The devices of one run: started, told to leave, and counted while they work."""

    def __init__(self, pool: str, logdir: Path) -> None:
        self.pool, self.logdir = pool, logdir
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
        self.working: dict[str, subprocess.Popen[bytes]] = {}  # started, not told to leave, by name
        self.leaving: list[subprocess.Popen[bytes]] = []
        self.started = 0
        self.samples: list[tuple[int, int]] = []  # (started, ready) devices not told to leave
        self.lock = threading.Lock()

    def start(self) -> str:
        self.started += 1
        name = f"device{self.started}@churn"
        args = worker_command(name, include="churn_job", pool=self.pool, concurrency=2, extra=["--loglevel", "WARNING"])
        with open(self.logdir / f"device{self.started}.log", "wb") as log:
            proc = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE), start_new_session=True
            )
        with self.lock:
            self.working[name] = proc
        return name

    def replace_one(self) -> None:
        """SIGTERM a working device (to its process only, as Kubernetes does), start another."""
        with self.lock:
            if not self.working:
                return
            proc = self.working.pop(random.choice(list(self.working)))
            self.leaving.append(proc)
        os.kill(proc.pid, signal.SIGTERM)
        self.start()

    def sample(self) -> None:
        """How many devices work now: started, and ready (in the roster: its first heartbeat)."""
        seen = {str(n) for n in runtime.books_client().hkeys(runtime.keys().devices_seen)}
        with self.lock:
            self.samples.append((len(self.working), len(seen & set(self.working))))

    def average(self, ready: bool) -> float:
        values = [s[1] if ready else s[0] for s in self.samples]
        return round(sum(values) / max(1, len(values)), 2)

    def exit_codes(self) -> Counter[int]:
        codes: Counter[int] = Counter()
        for proc in self.leaving:
            try:
                codes[proc.wait(60)] += 1
            except subprocess.TimeoutExpired:
                codes[-1] += 1  # still there a minute after its SIGTERM
        return codes

    def stop(self) -> None:
        stop_process_groups([*self.working.values(), *self.leaving], grace=30)


def one_run(tasks: list[str], devices: int, every: float, pool: str, workdir: Path) -> dict[str, Any]:
    """Serve ``tasks`` to a fleet of ``devices``, churning one every ``every`` seconds (0: none)."""
    with private_redis():
        fleet = Fleet(pool, workdir)
        names = [fleet.start() for _ in range(devices)]
        done = threading.Event()
        try:
            devices_up(names, timeout=120)

            def churn() -> None:
                next_change = time.monotonic() + random.expovariate(1 / every) if every else float("inf")
                while not done.wait(SAMPLE_EVERY):
                    fleet.sample()
                    if time.monotonic() >= next_change:
                        fleet.replace_one()
                        next_change = time.monotonic() + random.expovariate(1 / every)

            watcher = threading.Thread(target=churn, daemon=True)
            began = time.monotonic()
            watcher.start()
            summary = serve.serve(iter(tasks), channel_size=10, stdin=io.StringIO(""), out=io.StringIO())
            seconds = time.monotonic() - began
            done.set()
            watcher.join()
            codes = fleet.exit_codes()
            ledger, client = runtime.ledger(), runtime.books_client()
            saved = Counter(json.loads(v) for v in client.lrange(runtime.keys().results(1), 0, -1))
            return {
                "seconds": round(seconds, 2),
                "average_devices": fleet.average(ready=False),
                "average_ready": fleet.average(ready=True),
                "device_lives": fleet.started,
                "lost": sum(1 for t in tasks if t not in saved),
                "saved_twice": sum(1 for n in saved.values() if n > 1),
                "dead_lettered": summary.failed,
                "run_twice": ledger.stats(1).duplicates,
                "deaths_charged": int(client.hlen(runtime.keys().lost(1))),
                "left_with": {str(code): n for code, n in sorted(codes.items())},
            }
        finally:
            done.set()
            fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--every", type=float, default=3.0, help="mean seconds between two devices replaced")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--pool", choices=["threads", "prefork"], default="threads")
    parser.add_argument("--seed", type=int, default=1)
    args = parse_args(parser, tasks=200, devices=2, runs=1)
    random.seed(args.seed)
    tasks = [f"t{i}" for i in range(args.tasks)]
    ratios, fair = [], []
    with tempfile.TemporaryDirectory(prefix="mutitask-churn-") as tmp:
        for n in range(1, args.runs + 1):
            fixed = one_run(tasks, args.devices, 0, args.pool, Path(tmp))
            churned = one_run(tasks, args.devices, args.every, args.pool, Path(tmp))
            ratio = churned["seconds"] / fixed["seconds"]
            per_device = ratio * churned["average_ready"] / fixed["average_ready"]
            ratios.append(ratio)
            fair.append(per_device)
            print(f"run {n}: fixed {json.dumps(fixed)}")
            print(f"run {n}: churn {json.dumps(churned)}")
            print(f"run {n}: time ratio {ratio:.2f}, at the same average fleet {per_device:.2f}", flush=True)
    low, mid, high = spread(ratios)
    print(f"time ratio, churn / fixed: min {low:.2f} / median {mid:.2f} / max {high:.2f}")
    low, mid, high = spread(fair)
    print(f"device-seconds a task, churn / fixed: min {low:.2f} / median {mid:.2f} / max {high:.2f}")


if __name__ == "__main__":
    sys.exit(main())
