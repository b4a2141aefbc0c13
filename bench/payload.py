"""Data-heavy tasks end to end: numpy arrays of 64 KiB, 1 MiB and 8 MiB (issue 23).

    python bench/payload.py [--sizes 64K 1M 8M] [--mib 64 | --tasks N ...] [--runs 3] [--profile DIR]

Each task is a numpy uint8 array of random bytes; its task function returns
``int(array.sum())``. Every figure is MB/s of array bytes (1 MB = 10**6 bytes), from one
invocation, on one private redis-server, for three ways of moving the same arrays:

* the raw-bytes floor: this process RPUSHes each array's bytes onto a Redis list, then
  LPOPs them all back and ``np.frombuffer``s each, one command per array on one
  connection: what the bytes alone cost through redis-py and this Redis;
* mutitask_celery: a legacy server script (``Mutitask.server.Terminal``, ``ChannelSize``
  50, the seed's default) publishes the arrays, two legacy device scripts
  (``Mutitask.client``, ``task_format='native'``) sum them. The devices are real
  processes started before the run; the server is its own process, which builds the
  arrays first and times ``Terminal(...).run(generator)`` from the call until it returns
  (every task finished). Checked: every task succeeded, none failed, and the results the
  default save function stored are the arrays' sums;
* Dask distributed: a ``LocalCluster`` of 2 worker processes, 1 thread each, started
  before the run, then what a typical user writes: ``client.gather(client.map(f,
  arrays))``, the arrays passed as arguments (not scattered first; Dask then warns of a
  large graph, which we silence). Checked: the sums. Skipped, with how to install it,
  when ``distributed`` is not importable: it is installed only for this benchmark.

A run moves ``--mib`` MiB of arrays at each size (default 200: 3200, 200 and 25 tasks,
about two minutes in all with three runs). ``--task-delay S`` makes the devices sleep S
seconds a task (slow devices: the channel's byte budget then bounds Redis's memory), and
``--chart PNG`` draws the medians (the README's is bench/results/payload.png). Prints min /
median / max over ``--runs`` and the ratio of mutitask_celery's median to the floor's and
to Dask's. During each mutitask_celery run it also watches Redis: ``used_memory`` sampled
every 20 ms (and ``used_memory_peak`` when the run set a new record), printed as the peak
and its growth over the run's start; the CPU Redis spent; and the slowest reply to a
sample, how long Redis kept every client waiting at once (our clients give up after
``connection.SOCKET_TIMEOUT``, 5 s).

``--profile DIR``: one more mutitask_celery run at ``--profile-size`` (not in the
table), the server process and device1 recorded by py-spy (``pip install py-spy``):
``DIR/server.txt`` and ``DIR/device1.txt``, collapsed stacks of every thread, idle
included (so shares are of wall time). Prints, for each thread that does more than wait,
its top leaf functions with the frame of ours (or kombu's, Celery's) that called them, and
Redis's command time per command and per Lua script (SLOWLOG, every command logged during
that run). Draw a flame graph from a file with ``inferno-flamegraph`` or ``flamegraph.pl``.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import redis
from common import HERE, devices_up, parse_args, private_redis, processes, spread, wait_for

CHANNEL_SIZE = 50  # the seed's server script: Terminal(baseConfig=BaseConfig(deviceNumb=2, ChannelSize=50))
# MiB of arrays a run at each size: today's codec moves about 2 MB/s, so 64 MiB (1024, 64
# and 8 tasks) keeps a default invocation to a few minutes here; give more (--mib) once it is fast.
DEFAULT_MIB = 200
SEED = 23
RESULT_MARK = "payload-bench-result"  # the line the server script ends with, its figures as JSON
MB = 1e6

SERVER = f"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from payload import make_arrays
from Mutitask.server import BaseConfig, Terminal

arrays = make_arrays(int(sys.argv[2]), int(sys.argv[3]))
start = time.perf_counter()
summary = Terminal(baseConfig=BaseConfig(deviceNumb=2, ChannelSize={CHANNEL_SIZE})).run(a for a in arrays)
elapsed = time.perf_counter() - start
counts = dict(published=summary.published, succeeded=summary.succeeded, failed=summary.failed)
print({RESULT_MARK!r}, json.dumps(dict(elapsed=elapsed, **counts)), flush=True)
"""

DEVICE = """
import sys
import time
from Mutitask.client import BaseConfig, FuncItem, Terminal

DELAY = float(sys.argv[2])

def total(task):
    if DELAY:
        time.sleep(DELAY)
    return int(task.sum())

base = BaseConfig(deviceID=int(sys.argv[1]), TaskChannelID=1, task_format="native")
funcitem = FuncItem(baseConfig=base)
funcitem.load_task_function(total)
Terminal(baseConfig=base, funcItem=funcitem).run()
"""


def make_arrays(size: int, count: int) -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    """``count`` arrays of ``size`` random bytes, the same in every process that asks."""
    rng = np.random.default_rng([SEED, size])
    return [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(count)]


def total(array: np.ndarray[Any, np.dtype[np.uint8]]) -> int:
    """The task function: what every device (and Dask worker) computes."""
    return int(array.sum())


def parse_size(text: str) -> int:
    """``64K``, ``1M``, ``8M`` (binary units) or a number of bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    suffix = text[-1:].upper()
    try:
        size = int(text[:-1]) * units[suffix] if suffix in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64K, 1M, 8M or bytes)") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return size


def label(size: int) -> str:
    for unit, name in ((2**20, "MiB"), (2**10, "KiB")):
        if size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def default_count(size: int, mib: int) -> int:
    return max(2, mib * 2**20 // size)


class RedisWatch:
    """Redis while a run goes: its ``used_memory`` sampled from a thread, and taken from
    ``used_memory_peak`` when the run set a new record (exact then; CONFIG RESETSTAT does
    not reset that peak, so an earlier, higher one hides it and the samples decide); the
    CPU seconds it spent (``used_cpu_user`` + ``used_cpu_sys``); and the slowest reply to a
    sample, how long Redis made every client wait at once (our clients give up at
    ``connection.SOCKET_TIMEOUT``; this one, of its own, waits as long as it takes)."""

    def __init__(self, url: str, every: float = 0.02) -> None:
        self.client = redis.Redis.from_url(url)
        self.every = every
        self.start = self.peak = 0
        self.cpu = self.seconds = self.slowest = 0.0
        self._peak_before = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="redis-memory", daemon=True)

    def _memory(self) -> tuple[int, int]:
        info = self.client.info("memory")
        return int(info["used_memory"]), int(info["used_memory_peak"])

    def _cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def _sample(self) -> None:
        while not self._done.wait(self.every):  # the sampling period, not a wait for something
            asked = time.perf_counter()
            used = self._memory()[0]
            self.slowest = max(self.slowest, time.perf_counter() - asked)
            self.peak = max(self.peak, used)

    def __enter__(self) -> RedisWatch:
        self.start, self._peak_before = self._memory()
        self.peak = self.start
        self.cpu = -self._cpu()
        self.seconds = -time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.seconds += time.perf_counter()
        self.cpu += self._cpu()
        used, peak = self._memory()
        self.peak = max(self.peak, used, peak if peak > self._peak_before else 0)
        self.client.close()

    @property
    def growth(self) -> int:
        return self.peak - self.start


@dataclass
class OursRun:
    mb_per_s: float
    redis_peak: int
    redis_growth: int
    redis_busy: float  # Redis's CPU seconds over the seconds the server process lived
    redis_slowest: float  # seconds of the slowest reply to a sample


def floor(client: redis.Redis, arrays: Sequence[np.ndarray[Any, Any]], sums: Sequence[int]) -> float:
    """The raw-bytes floor: RPUSH every array's bytes, LPOP them back, ``np.frombuffer`` each."""
    key = "payload-bench:floor"
    client.delete(key)
    back = []
    start = time.perf_counter()
    for array in arrays:
        client.rpush(key, array.tobytes())
    for _ in arrays:
        back.append(np.frombuffer(client.lpop(key), dtype=np.uint8))  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    if [total(a) for a in back] != list(sums):
        raise SystemExit("floor: the arrays read back differ from those pushed")
    return sum(a.nbytes for a in arrays) / elapsed / MB


TASK_DELAY = 0.0  # seconds each device task sleeps (--task-delay: slow devices, to watch memory)


def device_commands() -> list[list[str]]:
    return [[sys.executable, "-c", DEVICE, str(n), str(TASK_DELAY)] for n in (1, 2)]


def server_command(size: int, count: int) -> list[str]:
    return [sys.executable, "-c", SERVER, str(HERE), str(size), str(count)]


def run_server(command: list[str]) -> dict[str, Any]:
    """Run the legacy server script to its end; its figures from its last line."""
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=os.environ.copy())
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the server script failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    figures: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARK) :])
    return figures


def check_outcomes(figures: dict[str, Any], sums: Sequence[int]) -> None:
    """Every task published and succeeded, none failed, and the stored results are the sums."""
    import mutitask_celery as mt

    count = len(sums)
    counts = (figures["published"], figures["succeeded"], figures["failed"])
    if counts != (count, count, 0):
        raise SystemExit(f"mutitask_celery: published/succeeded/failed {counts}, expected ({count}, {count}, 0)")
    results = mt.results(1, limit=None)
    if sorted(results) != sorted(sums):
        raise SystemExit(f"mutitask_celery: {len(results)} results stored, not the {count} sums of the arrays")


def ours(url: str, size: int, sums: Sequence[int], profile: Path | None = None) -> OursRun:
    """One run of the legacy scripts; with ``profile``, under py-spy."""
    from mutitask_celery import runtime

    client = runtime.ledger().client
    client.flushdb()
    host = socket.gethostname()
    command = server_command(size, len(sums))
    with processes(device_commands()) as devices:
        devices_up([f"device1@{host}", f"device2@{host}"])
        with recording(devices[0].pid, profile) as wrap, RedisWatch(url) as watch:
            figures = run_server(wrap(command))
    check_outcomes(figures, sums)
    mb_per_s = size * len(sums) / figures["elapsed"] / MB
    return OursRun(mb_per_s, watch.peak, watch.growth, watch.cpu / watch.seconds, watch.slowest)


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def spy_args(path: Path) -> list[str]:
    # --idle: waiting threads count too, so a function's share is of wall time;
    # --nonblocking: the profiled process never pauses for a sample.
    return ["record", "--idle", "--threads", "--nonblocking", "--rate", "200", "--format", "raw", "-o", str(path)]


@contextmanager
def recording(device_pid: int, profile: Path | None) -> Iterator[Callable[[list[str]], list[str]]]:
    """Record the device (attached) and give how to start the server under py-spy."""
    if profile is None:
        yield lambda command: command
        return
    spy = py_spy()
    if spy is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    profile.mkdir(parents=True, exist_ok=True)
    attached = subprocess.Popen(
        [spy, *spy_args(profile / "device1.txt"), "--pid", str(device_pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield lambda command: [spy, *spy_args(profile / "server.txt"), "--", *command]
    finally:
        attached.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            attached.wait(60)
        except subprocess.TimeoutExpired:
            attached.kill()
            attached.wait()
    if not (profile / "device1.txt").exists():
        raise SystemExit(f"py-spy wrote no device profile: {attached.stderr.read() if attached.stderr else ''}")


WAITING = ("Condition.wait (threading.py)", "_worker (concurrent/futures/thread.py)", "_epoll.poll (kombu/")
OURS = ("mutitask_celery/", "kombu/", "celery/", "<string>")  # the frames that say who waits or works


def breakdown(path: Path, rows: int = 8) -> Iterator[str]:
    """Lines of a py-spy raw profile: for each thread that does more than wait, the share of
    its samples (= wall time, with ``--idle``) per leaf function and the nearest frame of
    ours, kombu's or Celery's above it (who called it)."""
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *where = stack.split(";")
        frames = [short(f) for f in where]
        leaf = frames[-1] if frames else "?"
        owner = next((f for f in reversed(frames[:-1]) if f.split(" (", 1)[-1].startswith(OURS)), "")
        threads[thread][f"{leaf}  <- {owner}" if owner else leaf] += int(count)
    for thread, costs in sorted(threads.items(), key=lambda kv: -kv[1].total()):
        samples = costs.total()
        waiting = sum(n for key, n in costs.items() if key.startswith(WAITING))
        if samples - waiting < 0.1 * samples:
            continue
        yield f"  {thread}: {samples} samples, {100 * waiting / samples:.0f}% waiting for work"
        yield from (f"    {100 * n / samples:5.1f}%  {key}" for key, n in costs.most_common(rows))


def short(frame: str) -> str:
    """``encode (.../site-packages/mutitask_celery/codec.py:151)`` -> ``encode (mutitask_celery/codec.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].split('site-packages/')[-1]})" if where else name


class RedisCommands:
    """Where Redis spends its command time during a run: SLOWLOG with every command logged
    (threshold 0), summed per command, with each Lua script named by its file."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.saved: list[Any] = []
        self.entries: list[Any] = []
        self.seconds = 0.0

    def __enter__(self) -> RedisCommands:
        names = ("slowlog-log-slower-than", "slowlog-max-len")
        self.saved = [(name, self.client.config_get(name)[name]) for name in names]
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.config_set("slowlog-max-len", 1_000_000)
        self.client.slowlog_reset()
        self.seconds = -time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter()
        self.entries = self.client.slowlog_get(-1)  # -1: every entry
        for name, value in self.saved:
            self.client.config_set(name, value)

    def lines(self, rows: int = 8) -> Iterator[str]:
        from mutitask_celery.books.scripts import source

        lua = resources.files("mutitask_celery.books").joinpath("lua")
        files = [f.name for f in lua.iterdir() if f.name.endswith(".lua")]
        scripts = {hashlib.sha1(source(f[: -len(".lua")]).encode()).hexdigest(): f for f in files}
        spent: collections.Counter[str] = collections.Counter()
        longest = (0, "")
        for entry in self.entries:
            command = entry["command"]
            args = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split(" ")
            name = args[0].upper()
            if name == "EVALSHA" and len(args) > 1:
                name = f"EVALSHA {scripts.get(args[1], args[1][:12] + ' (not ours)')}"
            spent[name] += int(entry["duration"])
            longest = max(longest, (int(entry["duration"]), name))
        busy = spent.total() / 1e6
        yield (
            f"  commands took {busy:.1f}s of the run's {self.seconds:.1f}s ({busy / self.seconds:.0%}); "
            f"the longest, {longest[1]}, {longest[0] / 1e6:.2f}s"
        )
        yield from (f"    {100 * us / 1e6 / self.seconds:5.1f}%  {name}" for name, us in spent.most_common(rows))


@contextmanager
def dask_client() -> Iterator[Any]:
    """A LocalCluster of 2 worker processes, 1 thread each; None without ``distributed``."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        print('Dask distributed is not installed: its column is skipped (pip install "dask[distributed]")')
        yield None
        return
    import logging

    with (
        LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


def dask(client: Any, arrays: Sequence[np.ndarray[Any, Any]], sums: Sequence[int]) -> float:
    """``client.gather(client.map(total, arrays))``, the arrays passed as arguments."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
        futures = client.map(total, arrays)
        got = client.gather(futures)
    elapsed = time.perf_counter() - start
    client.cancel(futures)
    del futures  # forgotten before the next run submits the same keys (map is pure by default)
    wait_for(lambda: not client.run_on_scheduler(scheduler_tasks), 60, "Dask to forget the run's tasks")
    if got != list(sums):
        raise SystemExit("Dask: the results are not the arrays' sums")
    return sum(a.nbytes for a in arrays) / elapsed / MB


def scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


@dataclass
class SizeFigures:
    size: int
    count: int
    floor: tuple[float, float, float]
    ours: tuple[float, float, float]
    dask: tuple[float, float, float] | None
    runs: list[OursRun]


def measure(url: str, size: int, count: int, runs: int, client: Any) -> SizeFigures:
    import mutitask_celery as mt

    raw = redis.Redis.from_url(url)
    arrays = make_arrays(size, count)
    sums = [total(a) for a in arrays]
    print(f"{label(size)}: {count} tasks, {runs} run(s)...", flush=True)
    mine = [ours(url, size, sums) for _ in range(runs)]
    mt.clear_results(1)
    floors = [floor(raw, arrays, sums) for _ in range(runs)]
    dasks = [dask(client, arrays, sums) for _ in range(runs)] if client is not None else None
    return SizeFigures(
        size,
        count,
        spread(floors),
        spread([r.mb_per_s for r in mine]),
        spread(dasks) if dasks else None,
        mine,
    )


KINDS = (
    "raw-bytes floor (RPUSH, LPOP, frombuffer)",
    f"mutitask_celery (ChannelSize {CHANNEL_SIZE}, 2 devices)",
    "Dask distributed (2 workers x 1 thread)",
)


def print_table(rows: list[SizeFigures], runs: int) -> None:
    width = max(len(k) for k in KINDS)
    print(f"\nMB/s of array bytes end to end (1 MB = 10^6 B), {runs} run(s): min / median / max")
    print(f"{'size':<8} {'tasks':>6}  {'':<{width}} {'min':>8} {'median':>8} {'max':>8}")
    for row in rows:
        for n, (what, figures) in enumerate(zip(KINDS, (row.floor, row.ours, row.dask), strict=True)):
            head = f"{label(row.size):<8} {row.count:>6}" if n == 0 else ""
            shown = " ".join(f"{v:>8.1f}" for v in figures) if figures else f"{'(not installed)':>26}"
            print(f"{head:<15}  {what:<{width}} {shown}")
        ratios = [f"{row.ours[1] / row.floor[1]:.3f}x the floor"]
        if row.dask:
            ratios.append(f"{row.ours[1] / row.dask[1]:.3f}x Dask")
        print(f"{'':15}  mutitask_celery's median: {', '.join(ratios)}")
        peak = max(r.redis_peak for r in row.runs)
        growth = max(r.redis_growth for r in row.runs)
        busy = statistics.median(r.redis_busy for r in row.runs)
        slowest = max(r.redis_slowest for r in row.runs)
        print(
            f"{'':15}  Redis during mutitask_celery: peak used_memory {peak / 2**20:.1f} MiB, "
            f"{growth / 2**20:+.1f} over the run's start ({growth / (row.size * row.count):.1f}x the arrays' bytes)"
        )
        print(f"{'':15}  {'':<29}busy {busy:.0%} of a core (median), slowest reply {slowest:.2f} s")


def chart(rows: list[SizeFigures], path: Path) -> None:
    """Bars of the medians per size (min to max as error bars): the floor, ours, Dask."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart; pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.27
    for n, (what, colour) in enumerate(zip(KINDS, ("#999999", "#3c6ebe", "#e08a2c"), strict=True)):
        spreads = [(r.floor, r.ours, r.dask)[n] for r in rows]
        xs = [i + (n - 1) * width for i, f in enumerate(spreads) if f]
        shown = [f for f in spreads if f]
        if not shown:
            continue
        medians = [m for _, m, _ in shown]
        errors = [[m - lo for lo, m, _ in shown], [hi - m for _, m, hi in shown]]
        ax.bar(xs, medians, width, yerr=errors, capsize=3, color=colour, label=what)
        for x, value in zip(xs, medians, strict=True):
            ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), [f"{label(r.size)} a task" for r in rows])
    ax.set_ylabel("MB/s of array bytes (median)")
    ax.set_title("numpy arrays end to end: 2 devices or workers, local Redis, 2 cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}")


def profile_run(url: str, size: int, count: int, where: Path) -> None:
    sums = [total(a) for a in make_arrays(size, count)]
    print(f"\nprofiling one run at {label(size)} ({count} tasks) with py-spy...", flush=True)
    with RedisCommands(url) as commands:
        run = ours(url, size, sums, profile=where)
    print(f"profiled run: {run.mb_per_s:.1f} MB/s (py-spy sampling at 200 Hz, all commands logged; not in the table)")
    for name in ("server", "device1"):
        print(f"\n{name} ({where / name}.txt), % of wall time: leaf function  <- its caller of ours/kombu/Celery")
        for line in breakdown(where / f"{name}.txt"):
            print(line)
    print("\nRedis, % of the run's wall time, per command (a Lua script by its file):")
    for line in commands.lines():
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", nargs="+", type=parse_size, default=[2**16, 2**20, 2**23], help="array sizes (default 64K 1M 8M)"
    )
    parser.add_argument(
        "--mib", type=int, default=DEFAULT_MIB, help=f"MiB of arrays a run at each size (default {DEFAULT_MIB})"
    )
    parser.add_argument("--tasks", nargs="+", type=int, help="or tasks a run, one number per size")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind at each size (default 3)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also record one profiled run with py-spy, here")
    parser.add_argument("--profile-size", type=parse_size, default=2**20, help="array size of that run (default 1M)")
    parser.add_argument(
        "--task-delay", type=float, default=0.0, help="seconds each device task sleeps: slow devices (default 0)"
    )
    parser.add_argument("--chart", type=Path, metavar="PNG", help="draw the medians as a bar chart here")
    args = parse_args(parser, sizes=[2**10, 2**16], tasks=[20, 4], runs=1)
    global TASK_DELAY
    TASK_DELAY = args.task_delay
    counts = args.tasks or [default_count(s, args.mib) for s in args.sizes]
    if len(counts) != len(args.sizes):
        parser.error(f"--tasks: one number per size ({len(args.sizes)}), got {len(counts)}")
    if args.profile is not None and py_spy() is None:
        print("py-spy is not installed: no profile (pip install py-spy)")
        args.profile = None
    with private_redis() as url, dask_client() as client:
        rows = [measure(url, size, count, args.runs, client) for size, count in zip(args.sizes, counts, strict=True)]
        print_table(rows, args.runs)
        if args.chart is not None:
            chart(rows, args.chart)
        if args.profile is not None:
            count = dict(zip(args.sizes, counts, strict=True)).get(args.profile_size)
            profile_run(url, args.profile_size, count or default_count(args.profile_size, args.mib), args.profile)


if __name__ == "__main__":
    main()
