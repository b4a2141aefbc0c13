"""The chaos soak: many devices, random SIGKILLs, frozen devices, Redis restarts or failovers,
poison tasks, a reload mid-run; every task must still end exactly once, and nothing be left behind.

    python bench/chaos.py [--tasks 100000] [--devices 8] [--kill-every 3] [--freeze-every 6]
                          [--redis-restarts 2] [--poison-every 100] [--fail-every 50] [--sentinel]

A private redis-server with its append-only file on (with ``--sentinel``: a private Redis
Sentinel group, below); devices are ``celery -A mutitask_celery worker -I chaos_job`` on
channels 1 and 2 (one on Celery's default prefork pool, the others on threads), each restarted
under its own name whenever it dies, as systemd would; the server is a legacy server script
(bench/chaos_job.py). Channel 1 keeps its results with the default save function, channel 2
with a user's save function that appends them to a file. What happens, at random but from
``--seed``:

- every ``--kill-every`` seconds (on average) a random device is SIGKILLed;
- every ``--freeze-every`` seconds a random device is frozen (SIGSTOP) for 4 to 8 s, longer
  than it takes to be taken for dead (3 s here), then thawed: it finishes late what it held;
- ``--redis-restarts`` times, spread over the run, Redis is stopped and started again, with
  no kill or freeze in the 5 s around it (the faults a restart alone makes);
- one task in ``--fail-every`` fails until, half-way, the soak lets them succeed and reloads
  their records (twice: at 55 % and 80 %, or once no Redis fault is under way), as the README
  tells an operator: not the poison tasks, and not a task buried ``worker lost while saving``
  (its result may have been saved).

``--sentinel``: the books live on a Redis Sentinel group of the soak's own (a master, two
replicas, three sentinels; passwords on the data nodes and on the sentinels, as a deployment
has them; bench/chaos_redis.py). The devices, the server and the soak's own reads find the
master through the sentinels (``MUTITASK_REDIS_URL=sentinel://...``,
``MUTITASK_SENTINEL_MASTER``, ``MUTITASK_SENTINEL_PASSWORD``), and every step of the books
waits for the replicas. Each of the ``--redis-restarts`` is a failover instead, the three
kinds in turn: ``kill`` (the master SIGKILLed, then, once a replica is promoted, started again
and waited for until it is a replica of the new master), ``handover`` (``SENTINEL FAILOVER``)
and ``freeze`` (the master frozen for 12 s: promoted past, then demoted once thawed). No kill
or freeze from 5 s before a failover until 5 s after the group is whole again.

Then the books are read back from the master now and checked against the tasks that were
fed, and what must be left behind once they balance (nothing held, no claim, no note, no stale
unacked entry) is waited for. Prints published, saved, saved twice (by the default save
function and by the user's), dead-lettered (poison / other), run twice, lost (no outcome at
all: must be 0), wrongly buried (a healthy task dead-lettered: must be 0), buried while saving
(a device died between its claim and its record: it may or may not have saved, and is never
saved again; how many of them the save function's file holds), failed after the reloads (must
be 0), the leftovers, the kills, freezes and Redis restarts (``redis restarts``) or failovers
by kind (``failovers``), and how long after each of them the run went on (50 more outcomes:
min, median, max, and each). ``--json`` prints the figures as one JSON line (the test suite
runs a short soak and reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from chaos_redis import BooksRedis, FaultRun, books_redis
from common import HERE, ROOT

from mutitask_celery import codec
from mutitask_celery.books import messages
from mutitask_celery.errors import BrokerUnavailable
from mutitask_celery.tools.processes import stop_process_groups, worker_command

sys.path.insert(0, str(HERE))
from chaos_job import CHANNELS, channel_of, name  # noqa: E402

DEAD_AFTER = "3"
QUIET = 5.0  # seconds around a Redis fault (a restart, a failover) with no kill and no freeze
GOES_ON = 50  # outcomes more than at a Redis fault: the run has gone on after it
RELOAD_AT = (0.55, 0.80)  # fractions of the outcomes in at which the dead-letter store is reloaded
LEFTOVERS_WITHIN = 60.0  # seconds the leftovers get to clear once the books balance
EPILOG = """\
examples:
  the long soak (100,000 tasks, about 20 minutes):
    python bench/chaos.py --seed 1
  a short one, its figures as one JSON line:
    python bench/chaos.py --tasks 2000 --json
  behind Sentinel: a killed, a handed-over and a frozen master, in one short run:
    python bench/chaos.py --sentinel --tasks 3000 --redis-restarts 3

exit code 0 once the soak ran (read the figures: lost, saved twice and wrongly buried must be
0); 1 with a message when it could not end (the server failed, a timeout, a failover stuck)."""


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

    def __init__(self, args: argparse.Namespace, devices: list[Device], books: BooksRedis, env: dict[str, str]):
        self.args, self.devices, self.books, self.env = args, devices, books, env
        self.rng = random.Random(args.seed)
        self.kills = self.freezes = self.reloads = self.reloaded = 0
        now = time.monotonic()
        self.started = self.last_kill = now
        self.next_kill = now + self.rng.expovariate(1 / args.kill_every)
        self.next_freeze = now + (self.rng.expovariate(1 / args.freeze_every) if args.freeze_every else float("inf"))
        self.fault_at = [(k + 1) / (args.redis_restarts + 1) for k in range(args.redis_restarts)]
        self.reload_at = list(RELOAD_AT) if args.fail_every else []
        self.quiet_until = 0.0
        self.fault: FaultRun | None = None  # the Redis fault under way
        self.fault_watched = False  # whether the run going on after it is watched yet
        self.faults: Counter[str] = Counter()  # the Redis faults done, by kind
        self.watched: list[tuple[str, float, int]] = []  # faults not gone on after yet: kind, when, outcomes then
        self.went_on: list[tuple[str, float]] = []  # kind, seconds from the fault until the run went on
        self.outcomes_seen = 0

    def outcomes(self) -> int | None:
        """The tasks with an outcome so far, as the master now says (None while none answers)."""
        try:
            with self.books.client() as client:
                pipe = client.pipeline(transaction=False)
                for channel in CHANNELS:
                    pipe.hmget(f"mutitask:stats:{channel}", "succeeded", "failed")
                return sum(int(v or 0) for pair in pipe.execute() for v in pair)
        except redis.RedisError:
            return None

    def supervise(self, server: subprocess.Popen[bytes]) -> float:
        """The soak itself, until the server exits; returns when it ended. A Redis fault still
        under way then is let end (Redis whole again) before the books are read."""
        while server.poll() is None:
            self.tick(faults=True)
        ended = time.monotonic()
        while self.fault is not None:
            self.tick(faults=False)
        for device in self.devices:
            if device.thaw_at is not None:
                device.thaw()
        return ended

    def tick(self, faults: bool) -> None:
        """One look: devices kept, progress read, a Redis fault, a reload, a kill or a freeze if due."""
        now = time.monotonic()
        if now - self.started > self.args.timeout:
            raise SystemExit(f"the soak did not end within {self.args.timeout:.0f}s")
        self.keep_devices(now)
        ended = self.outcomes()
        if ended is not None:
            self.outcomes_seen = ended
            self.watch_going_on(now, ended)
        done = (ended or 0) / max(1, self.args.tasks)  # 0 while Redis is away
        self.pace_faults(now, ended, faults)
        if self.reload_at and done >= self.reload_at[0] and self.fault is None:  # an operator waits for Redis
            self.reload()
        if now >= self.quiet_until:
            self.maybe_kill(now)
            self.maybe_freeze(now)
        time.sleep(0.1)  # the supervisor's poll: nothing to block on across many children

    def pace_faults(self, now: float, ended: int | None, start: bool) -> None:
        """Take the fault under way a step further, or (``start``) begin the next one when the
        run is that far (``ended``: the outcomes now): quiet from a little before it until QUIET
        seconds after it ended."""
        if self.fault is not None:
            over = self.fault.poll()
            self.watch_fault(ended)
            if over:
                self.faults[self.fault.kind] += 1
                self.fault = None
                self.quiet_until = time.monotonic() + QUIET
            return
        done = (ended or 0) / max(1, self.args.tasks)
        if start and self.fault_at and done >= self.fault_at[0] - 0.05 and now >= self.quiet_until:
            self.quiet_until = now + QUIET  # no kill or freeze from now until QUIET after the fault
            if done >= self.fault_at[0]:
                self.fault_at.pop(0)
                kinds = self.books.kinds
                kind = kinds[sum(self.faults.values()) % len(kinds)]
                self.fault = FaultRun(kind, self.books.fault(kind))
                self.fault_watched = False
                self.quiet_until = float("inf")  # until the fault has ended

    def watch_fault(self, ended: int | None) -> None:
        """Once the books take writes again after the fault under way, watch for the run to go on
        from the outcomes they hold then (a handed-over master takes some until it is demoted)."""
        fault = self.fault
        if fault is not None and fault.back is not None and not self.fault_watched:
            self.watched.append((fault.kind, fault.started, self.outcomes_seen if ended is None else ended))
            self.fault_watched = True

    def watch_going_on(self, now: float, ended: int) -> None:
        """Note the faults after which GOES_ON more outcomes have come in."""
        for watched in list(self.watched):
            kind, since, base = watched
            if ended >= base + GOES_ON:
                self.went_on.append((kind, round(now - since, 1)))
                self.watched.remove(watched)

    def went_on_after(self) -> dict[str, Any]:
        """Seconds from each Redis fault until the run went on: min, median, max, and each (by kind)."""
        seconds = [s for _, s in self.went_on]
        spread = {"min": min(seconds), "median": statistics.median(seconds), "max": max(seconds)} if seconds else {}
        return {**spread, "each": [list(w) for w in self.went_on], "not_seen": [kind for kind, _, _ in self.watched]}

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

    def reload(self) -> None:
        """Let the failing tasks succeed, then reload their records: not the poison ones, and not
        one buried while saving (its device may have saved it: a reload would save it again)."""
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
        except (redis.RedisError, BrokerUnavailable) as exc:  # Redis away: the next reload takes them
            print(f"reload skipped: {exc}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mutitask-chaos-"))
    books = books_redis(args.sentinel, workdir)
    env = {
        **os.environ,
        **books.env,
        "MUTITASK_BROKER_URL": "",
        "MUTITASK_DEAD_AFTER": DEAD_AFTER,
        "MUTITASK_PROGRESS": "off",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "CHAOS_SAVE_FILE": str(workdir / "saved2.txt"),
        "CHAOS_FAIL_FLAG": str(workdir / "fail.flag"),
    }
    os.environ.update({k: env[k] for k in [*books.env, "MUTITASK_BROKER_URL", "MUTITASK_DEAD_AFTER"]})
    devices = [Device(n, "prefork" if n == 1 else "threads", env, workdir) for n in range(1, args.devices + 1)]
    server: subprocess.Popen[bytes] | None = None
    try:
        books.start()
        for device in devices:
            device.start()
        chaos = Chaos(args, devices, books, env)
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
        leftovers, cleared_after = wait_for_leftovers(books)
        with books.client() as client, books.client(raw=True) as raw:  # the master now, after the run
            figures = check(client, raw, args, summary, Path(env["CHAOS_SAVE_FILE"]))
        figures.update(
            leftovers=leftovers,
            leftovers_cleared_after=cleared_after,
            kills=chaos.kills,
            freezes=chaos.freezes,
            **books.figures(chaos.faults),
            went_on_after=chaos.went_on_after(),
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
        books.close()
        if args.keep:
            print(f"logs and Redis's files kept in {workdir}", file=sys.stderr)
        else:
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


def wait_for_leftovers(books: BooksRedis) -> tuple[dict[str, int], float]:
    """The leftovers once they are all gone, or as they are after LEFTOVERS_WITHIN seconds
    (devices acknowledge just after recording; a thawed device finishes late runs)."""
    started = time.monotonic()
    delay = 0.1
    while True:
        with books.client() as client:
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


def check(client: Any, raw: Any, args: argparse.Namespace, summary: dict[str, int], save_file: Path) -> dict[str, Any]:
    """Read the books back (``raw``: the same Redis, replies as bytes) and compare them with the tasks that were fed."""
    fed = [name(i, args.poison_every, args.fail_every) for i in range(args.tasks)]
    poison = {t for t in fed if t.startswith("p")}
    saved = saved_results(client, save_file)
    by_save_function = save_file.read_text().split() if save_file.exists() else []
    buried: dict[str, str] = {}
    for channel in CHANNELS:
        for record_id in client.zrange(f"mutitask:dead:index:{channel}", 0, -1):
            record = raw.hgetall(f"mutitask:dead:rec:{record_id}")  # a big task's data: a frame
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
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between SIGKILLs")
    parser.add_argument("--freeze-every", type=float, default=6.0, help="mean seconds between freezes (0: none)")
    parser.add_argument(
        "--redis-restarts",
        type=int,
        default=2,
        help="Redis restarts, spread over the run (with --sentinel: failovers, kill / handover / freeze in turn)",
    )
    parser.add_argument(
        "--sentinel",
        action="store_true",
        help="keep the books on a Redis Sentinel group (a master, two replicas, three sentinels) "
        "and fail its master over instead of restarting Redis",
    )
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
        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
        print(f"{key.replace('_', ' '):>{width}}: {shown}")


if __name__ == "__main__":
    main()
