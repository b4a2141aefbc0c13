"""The chaos soak: many devices, random SIGKILLs, a Redis restart, poison tasks; every task
must still end exactly once.

    python bench/chaos.py [--tasks 100000] [--devices 8] [--kill-every 3] [--poison-every 100]

A private redis-server with its append-only file on; devices are
``celery -A mutitask_celery worker -I chaos_job`` (one on Celery's default prefork pool, the
others on threads), each restarted under its own name whenever it dies, as systemd would;
the server is a legacy server script (bench/chaos_job.py). Every ``--kill-every`` seconds
(on average) a random device is SIGKILLed; once, when 40 % of the results are in, Redis is
stopped and started again. Then the books are read back and checked against the tasks that
were fed. Prints published, saved, dead-lettered (poison / other), run twice, lost (no
outcome at all: must be 0), wrongly buried (a healthy task dead-lettered: must be 0), the
kills, and how long the books took to balance after the last kill. ``--json`` prints the
figures as one JSON line (the test suite runs a short soak and reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import HERE, ROOT

from mutitask_celery.tools.localredis import LocalRedis, free_port
from mutitask_celery.tools.processes import stop_process_groups, worker_command

sys.path.insert(0, str(HERE))
from chaos_job import name  # noqa: E402

DEAD_AFTER = "3"


class Device:
    """One device, restarted under its own name whenever it dies (as systemd would)."""

    def __init__(self, n: int, pool: str, env: dict[str, str], logdir: Path) -> None:
        self.n, self.pool, self.env, self.logdir = n, pool, env, logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0

    def start(self) -> None:
        pool = None if self.pool == "prefork" else self.pool  # prefork: Celery's default, as a user runs it
        args = worker_command(
            f"device{self.n}@chaos", include="chaos_job", pool=pool, concurrency=2, extra=["--loglevel", "WARNING"]
        )
        self.lives += 1
        log = open(self.logdir / f"device{self.n}.log", "ab")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE), start_new_session=True
        )
        log.close()

    def dead(self) -> bool:
        return self.proc is None or self.proc.poll() is not None


def _supervise(
    server: subprocess.Popen[bytes],
    devices: list[Device],
    client: Any,
    redis_server: LocalRedis,
    args: argparse.Namespace,
    rng: random.Random,
) -> tuple[float, float, int, float, int]:
    """The soak itself, until the server exits: restart dead devices, SIGKILL one now and then,
    restart Redis once. Returns when it started and ended, the kills, the last kill's time and
    the Redis restarts."""
    import redis

    kills = redis_restarts = 0
    started = last_kill = time.monotonic()
    next_kill = started + rng.expovariate(1 / args.kill_every)
    while server.poll() is None:
        if time.monotonic() - started > args.timeout:
            raise SystemExit(f"the soak did not end within {args.timeout:.0f}s")
        for device in devices:
            if device.dead():
                device.start()
        now = time.monotonic()
        if now >= next_kill:
            victim = rng.choice(devices)
            if not victim.dead() and victim.proc is not None:
                victim.proc.kill()
                kills += 1
                last_kill = now
            next_kill = now + rng.expovariate(1 / args.kill_every)
        if not redis_restarts:
            try:
                if client.llen("ResultChannel1") >= 0.4 * args.tasks:
                    redis_server.stop()  # SIGTERM: Redis's own shutdown, its file flushed
                    redis_server.start()
                    redis_restarts += 1
            except redis.RedisError:
                pass
        time.sleep(0.1)  # the supervisor's poll: nothing to block on across many children
    return started, time.monotonic(), kills, last_kill, redis_restarts


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mutitask-chaos-"))
    port = free_port()
    redis_server = LocalRedis(workdir=workdir, appendonly=True, port=port).start()
    env = {
        **os.environ,
        "MUTITASK_REDIS_URL": redis_server.url,
        "MUTITASK_BROKER_URL": "",
        "MUTITASK_DEAD_AFTER": DEAD_AFTER,
        "MUTITASK_PROGRESS": "off",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }
    devices = [Device(n, "prefork" if n == 1 else "threads", env, workdir) for n in range(1, args.devices + 1)]
    server: subprocess.Popen[bytes] | None = None
    rng = random.Random(args.seed)
    try:
        for device in devices:
            device.start()
        with open(workdir / "server.log", "wb") as log:
            server = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "chaos_job.py"),
                    str(args.tasks),
                    str(args.poison_every),
                    str(args.channel_size),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        books = redis_server.url
        import redis

        client = redis.Redis.from_url(books, decode_responses=True, socket_timeout=5)
        started, ended, kills, last_kill, redis_restarts = _supervise(server, devices, client, redis_server, args, rng)
        out = (workdir / "server.log").read_text(errors="replace")
        if server.returncode != 0:
            raise SystemExit(f"the server exited {server.returncode}:\n{out[-3000:]}")
        summary = json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
        figures = check(client, args, summary)
        figures.update(
            kills=kills,
            redis_restarts=redis_restarts,
            device_lives=sum(d.lives for d in devices),
            seconds=round(ended - started, 1),
            balanced_after_last_kill=round(ended - last_kill, 1),
        )
        return figures
    finally:
        stop_process_groups([p for p in [server, *(d.proc for d in devices)] if p is not None], grace=10)
        redis_server.close()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def check(client: Any, args: argparse.Namespace, summary: dict[str, int]) -> dict[str, Any]:
    """Read the books back and compare them with the tasks that were fed."""
    fed = [name(i, args.poison_every) for i in range(args.tasks)]
    poison = {t for t in fed if t.startswith("p")}
    saved: list[str] = []
    for start in range(0, client.llen("ResultChannel1"), 10000):
        saved += [json.loads(v) for v in client.lrange("ResultChannel1", start, start + 9999)]
    buried: dict[str, str] = {}
    for record_id in client.zrange("mutitask:dead:index:1", 0, -1):
        record = client.hgetall(f"mutitask:dead:rec:{record_id}")
        buried[json.loads(record["data"])] = record["reason"]
    saved_set = set(saved)
    return {
        "published": summary["published"],
        "saved": len(saved),
        "saved_twice": len(saved) - len(saved_set),
        "dead_lettered_poison": len(poison & set(buried)),
        "dead_lettered_other": len(set(buried) - poison),
        "poison_fed": len(poison),
        "run_twice": summary["duplicates"],
        "lost": sum(1 for t in fed if t not in saved_set and t not in buried),
        "wrongly_buried": len(set(buried) - poison),
        "wrongly_buried_reasons": sorted({buried[t].splitlines()[0][:200] for t in set(buried) - poison}),
        "poison_saved": len(poison & saved_set),
        "outstanding": int(client.hlen("mutitask:pending:1")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between SIGKILLs")
    parser.add_argument("--poison-every", type=int, default=100, help="one task in N is poison (0: none)")
    parser.add_argument("--channel-size", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON line of figures")
    parser.add_argument("--keep", action="store_true", help="keep the logs and Redis's files")
    parser.add_argument("--quick", action="store_true", help="a tiny soak, to check the script runs")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.kill_every = 300, 2.0
    figures = run(args)
    if args.json:
        print(json.dumps(figures))
        return
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key.replace('_', ' '):>{width}}: {value}")


if __name__ == "__main__":
    main()
