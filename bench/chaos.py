"""The chaos soak: many devices, random SIGKILLs, frozen devices, Redis restarts, poison tasks,
a reload mid-run; every task must still end exactly once, and nothing be left behind.

    python bench/chaos.py [--tasks 100000] [--devices 8] [--kill-every 3] [--freeze-every 6]
                          [--redis-restarts 2] [--poison-every 100] [--fail-every 50]

A private redis-server with its append-only file on; devices are
``celery -A mutitask_celery worker -I chaos_job`` on channels 1 and 2 (one on Celery's default
prefork pool, the others on threads), each restarted under its own name whenever it dies, as
systemd would; the server is a legacy server script (bench/chaos_job.py). Channel 1 keeps its
results with the default save function, channel 2 with a user's save function that appends
them to a file. What happens, at random but from ``--seed``:

- every ``--kill-every`` seconds (on average) a random device is SIGKILLed;
- every ``--freeze-every`` seconds a random device is frozen (SIGSTOP) for 4 to 8 s, longer
  than it takes to be taken for dead (3 s here), then thawed: it finishes late what it held;
- ``--redis-restarts`` times, spread over the run, Redis is stopped and started again, with
  no kill or freeze in the 5 s around it (the faults a restart alone makes);
- one task in ``--fail-every`` fails until, half-way, the soak lets them succeed and reloads
  their records (twice: at 55 % and 80 %), as the README tells an operator: not the poison
  tasks, and not a task buried ``worker lost while saving`` (its result may have been saved).

Then the books are read back and checked against the tasks that were fed, and what must be
left behind once they balance (nothing held, no claim, no note, no stale unacked entry) is
waited for. Prints published, saved, saved twice (by the default save function and by the
user's), dead-lettered (poison / other), run twice, lost (no outcome at all: must be 0),
wrongly buried (a healthy task dead-lettered: must be 0), buried while saving (a device died
between its claim and its record: it may or may not have saved, and is never saved again; how
many of them the save function's file holds), failed after the reloads (must be 0),
the leftovers, the kills, freezes and restarts. ``--json`` prints the figures as one JSON line
(the test suite runs a short soak and reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import HERE, ROOT

from mutitask_celery import codec
from mutitask_celery.books import messages
from mutitask_celery.connection import raw_twin
from mutitask_celery.tools.localredis import LocalRedis, free_port
from mutitask_celery.tools.processes import stop_process_groups, worker_command

sys.path.insert(0, str(HERE))
from chaos_job import CHANNELS, channel_of, name  # noqa: E402

DEAD_AFTER = "3"
QUIET = 5.0  # seconds around a Redis restart with no kill and no freeze
RELOAD_AT = (0.55, 0.80)  # fractions of the outcomes in at which the dead-letter store is reloaded
LEFTOVERS_WITHIN = 60.0  # seconds the leftovers get to clear once the books balance


class Device:
    """One device, restarted under its own name whenever it dies (as systemd would)."""

    def __init__(self, n: int, pool: str, env: dict[str, str], logdir: Path) -> None:
        self.n, self.pool, self.env, self.logdir = n, pool, env, logdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0
        self.thaw_at: float | None = None  # frozen until then

    def start(self) -> None:
        pool = None if self.pool == "prefork" else self.pool  # prefork: Celery's default, as a user runs it
        args = worker_command(
            f"device{self.n}@chaos",
            queues=",".join(f"channel{c}" for c in CHANNELS),
            include="chaos_job",
            pool=pool,
            concurrency=2,
            extra=["--loglevel", "WARNING"],
        )
        self.lives += 1
        self.thaw_at = None
        log = open(self.logdir / f"device{self.n}.log", "ab")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen(
            args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(HERE), start_new_session=True
        )
        log.close()

    def dead(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def freeze(self, seconds: float) -> None:
        self.signal(signal.SIGSTOP)
        self.thaw_at = time.monotonic() + seconds

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)
        self.thaw_at = None


class Chaos:
    """The soak's supervisor: what it does to devices and Redis, and when."""

    def __init__(self, args: argparse.Namespace, devices: list[Device], redis_server: LocalRedis, env: dict[str, str]):
        import redis

        self.args, self.devices, self.redis_server, self.env = args, devices, redis_server, env
        self.rng = random.Random(args.seed)
        self.client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
        self.kills = self.freezes = self.redis_restarts = self.reloads = self.reloaded = 0
        now = time.monotonic()
        self.started = self.last_kill = now
        self.next_kill = now + self.rng.expovariate(1 / args.kill_every)
        self.next_freeze = now + (self.rng.expovariate(1 / args.freeze_every) if args.freeze_every else float("inf"))
        self.restart_at = [(k + 1) / (args.redis_restarts + 1) for k in range(args.redis_restarts)]
        self.reload_at = list(RELOAD_AT) if args.fail_every else []
        self.quiet_until = 0.0

    def done(self) -> float:
        """The share of the tasks with an outcome so far (0 while Redis is away)."""
        import redis

        try:
            pipe = self.client.pipeline(transaction=False)
            for channel in CHANNELS:
                pipe.hmget(f"mutitask:stats:{channel}", "succeeded", "failed")
            ended = sum(int(v or 0) for pair in pipe.execute() for v in pair)
        except redis.RedisError:
            return 0.0
        return ended / max(1, self.args.tasks)

    def supervise(self, server: subprocess.Popen[bytes]) -> float:
        """The soak itself, until the server exits; returns when it ended."""
        while server.poll() is None:
            now = time.monotonic()
            if now - self.started > self.args.timeout:
                raise SystemExit(f"the soak did not end within {self.args.timeout:.0f}s")
            self.keep_devices(now)
            done = self.done()
            if self.restart_at and done >= self.restart_at[0] - 0.05 and now >= self.quiet_until:
                self.quiet_until = now + QUIET  # no kill or freeze from now until QUIET after the restart
                if done >= self.restart_at[0]:
                    self.restart_redis()
            if self.reload_at and done >= self.reload_at[0]:
                self.reload()
            if now >= self.quiet_until:
                self.maybe_kill(now)
                self.maybe_freeze(now)
            time.sleep(0.1)  # the supervisor's poll: nothing to block on across many children
        for device in self.devices:
            if device.thaw_at is not None:
                device.thaw()
        return time.monotonic()

    def keep_devices(self, now: float) -> None:
        for device in self.devices:
            if device.thaw_at is not None and now >= device.thaw_at:
                device.thaw()
            if device.dead():
                device.start()

    def maybe_kill(self, now: float) -> None:
        if now < self.next_kill:
            return
        victim = self.rng.choice(self.devices)
        if not victim.dead() and victim.thaw_at is None and victim.proc is not None:
            victim.proc.kill()
            self.kills += 1
            self.last_kill = now
        self.next_kill = now + self.rng.expovariate(1 / self.args.kill_every)

    def maybe_freeze(self, now: float) -> None:
        if now < self.next_freeze:
            return
        victim = self.rng.choice(self.devices)
        if not victim.dead() and victim.thaw_at is None:
            victim.freeze(self.rng.uniform(4.0, 8.0))
            self.freezes += 1
        self.next_freeze = now + self.rng.expovariate(1 / self.args.freeze_every)

    def restart_redis(self) -> None:
        self.restart_at.pop(0)
        self.redis_server.stop()  # SIGTERM: Redis's own shutdown, its file flushed
        self.redis_server.start()
        self.redis_restarts += 1
        self.quiet_until = time.monotonic() + QUIET

    def reload(self) -> None:
        """Let the failing tasks succeed, then reload their records: not the poison ones, and not
        one buried while saving (its device may have saved it: a reload would save it again)."""
        import redis

        from mutitask_celery import runtime

        self.reload_at.pop(0)
        Path(self.env["CHAOS_FAIL_FLAG"]).touch()
        try:
            store = runtime.store()
            flaky = [
                r.id
                for ch in CHANNELS
                for r in store.failed(ch)
                if str(r.data).startswith("f") and not r.reason.startswith("worker lost while saving")
            ]
            self.reloaded += store.reload(ids=flaky)
            self.reloads += 1
        except redis.RedisError as exc:  # Redis restarting: the next look reloads
            print(f"reload skipped: {exc}", file=sys.stderr)


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
        "CHAOS_SAVE_FILE": str(workdir / "saved2.txt"),
        "CHAOS_FAIL_FLAG": str(workdir / "fail.flag"),
    }
    os.environ.update({k: env[k] for k in ("MUTITASK_REDIS_URL", "MUTITASK_BROKER_URL", "MUTITASK_DEAD_AFTER")})
    devices = [Device(n, "prefork" if n == 1 else "threads", env, workdir) for n in range(1, args.devices + 1)]
    server: subprocess.Popen[bytes] | None = None
    try:
        for device in devices:
            device.start()
        chaos = Chaos(args, devices, redis_server, env)
        with open(workdir / "server.log", "wb") as log:
            command = [str(args.tasks), str(args.poison_every), str(args.fail_every), str(args.channel_size)]
            server = subprocess.Popen(
                [sys.executable, str(HERE / "chaos_job.py"), *command],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        ended = chaos.supervise(server)
        out = (workdir / "server.log").read_text(errors="replace")
        if server.returncode != 0:
            raise SystemExit(f"the server exited {server.returncode}:\n{out[-3000:]}")
        summary = json.loads(out.split("SUMMARY ", 1)[1].splitlines()[0])
        leftovers, cleared_after = wait_for_leftovers(chaos.client)
        figures = check(chaos.client, args, summary, Path(env["CHAOS_SAVE_FILE"]))
        figures.update(
            leftovers=leftovers,
            leftovers_cleared_after=cleared_after,
            kills=chaos.kills,
            freezes=chaos.freezes,
            redis_restarts=chaos.redis_restarts,
            reloads=chaos.reloads,
            reloaded=chaos.reloaded,
            device_lives=sum(d.lives for d in devices),
            seconds=round(ended - chaos.started, 1),
            balanced_after_last_kill=round(ended - chaos.last_kill, 1),
        )
        return figures
    finally:
        for device in devices:
            device.signal(signal.SIGCONT)  # a frozen device cannot hear the SIGTERM
        stop_process_groups([p for p in [server, *(d.proc for d in devices)] if p is not None], grace=10)
        redis_server.close()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def leftovers_of(client: Any) -> dict[str, int]:
    """What must be gone once the books balance: tasks counted held, claims of save functions,
    notes of messages in hand, unacked entries of ours whose tasks are all finished."""
    held = sum(int(client.get(f"mutitask:held:{c}") or 0) for c in CHANNELS)
    claims = sum(int(client.hlen(f"mutitask:claims:{c}")) for c in CHANNELS)
    notes = sum(int(client.hlen(f"mutitask:inhand:{n}")) for n in client.hkeys("mutitask:devices:seen"))
    stale = 0
    for raw in client.hvals("unacked"):
        found = messages.carried(json.loads(raw)[0])
        if found is None:
            continue
        channel, items = found
        if not any(client.hexists(f"mutitask:pending:{channel}", task_id) for task_id, _ in items):
            stale += 1
    return {"held": held, "claims": claims, "notes": notes, "stale_unacked": stale}


def wait_for_leftovers(client: Any) -> tuple[dict[str, int], float]:
    """The leftovers once they are all gone, or as they are after LEFTOVERS_WITHIN seconds
    (devices acknowledge just after recording; a thawed device finishes late runs)."""
    started = time.monotonic()
    delay = 0.1
    while True:
        left = leftovers_of(client)
        waited = time.monotonic() - started
        if not any(left.values()) or waited > LEFTOVERS_WITHIN:
            return left, round(waited, 1)
        time.sleep(delay)  # polled with a deadline: they clear within seconds when all is well
        delay = min(delay * 2, 2.0)


def saved_results(client: Any, save_file: Path) -> list[str]:
    """Every result saved: channel 1's default list, then channel 2's save function's lines."""
    saved: list[str] = []
    for start in range(0, client.llen("ResultChannel1"), 10000):
        saved += [json.loads(v) for v in client.lrange("ResultChannel1", start, start + 9999)]
    return saved + (save_file.read_text().split() if save_file.exists() else [])


def check(client: Any, args: argparse.Namespace, summary: dict[str, int], save_file: Path) -> dict[str, Any]:
    """Read the books back and compare them with the tasks that were fed."""
    fed = [name(i, args.poison_every, args.fail_every) for i in range(args.tasks)]
    poison = {t for t in fed if t.startswith("p")}
    saved = saved_results(client, save_file)
    by_save_function = save_file.read_text().split() if save_file.exists() else []
    buried: dict[str, str] = {}
    for channel in CHANNELS:
        for record_id in client.zrange(f"mutitask:dead:index:{channel}", 0, -1):
            record = raw_twin(client).hgetall(f"mutitask:dead:rec:{record_id}")  # a big task's data: a frame
            task = codec.decode(record[b"data"])
            buried[task[0] if isinstance(task, tuple) else task] = record[b"reason"].decode()  # a big task's name
    saved_set = set(saved)
    while_saving = {t for t, reason in buried.items() if reason.startswith("worker lost while saving")}
    healthy_buried = set(buried) - poison - while_saving
    return {
        "published": summary["published"],
        "saved": len(saved),
        "saved_twice": len(saved) - len(saved_set),
        "saved_by_save_function": len(by_save_function),
        "saved_twice_by_save_function": len(by_save_function) - len(set(by_save_function)),
        "saved_twice_names": sorted(t for t, n in Counter(saved).items() if n > 1)[:10],
        "dead_lettered_poison": len(poison & set(buried)),
        "dead_lettered_other": len(healthy_buried),
        "buried_while_saving": len(while_saving),
        "of_those_saved": len(while_saving & set(by_save_function)),
        "poison_fed": len(poison),
        "run_twice": summary["duplicates"],
        "revived": sum(int(client.hget(f"mutitask:stats:{c}", "revived") or 0) for c in CHANNELS),
        "lost": sum(1 for t in fed if t not in saved_set and t not in buried),
        "wrongly_buried": len({t for t in healthy_buried if not t.startswith("f")}),
        "wrongly_buried_reasons": sorted({buried[t].splitlines()[0][:200] for t in healthy_buried}),
        "failed_after_reloads": len({t for t in healthy_buried if t.startswith("f")}),
        "poison_saved": len(poison & saved_set),
        "outstanding": sum(int(client.hlen(f"mutitask:pending:{c}")) for c in CHANNELS),
        "channels": {str(c): sum(1 for i in range(args.tasks) if channel_of(i) == c) for c in CHANNELS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between SIGKILLs")
    parser.add_argument("--freeze-every", type=float, default=6.0, help="mean seconds between freezes (0: none)")
    parser.add_argument("--redis-restarts", type=int, default=2, help="Redis restarts, spread over the run")
    parser.add_argument("--poison-every", type=int, default=100, help="one task in N is poison (0: none)")
    parser.add_argument("--fail-every", type=int, default=50, help="one task in N fails until reloaded (0: none)")
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
