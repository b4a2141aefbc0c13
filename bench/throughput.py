"""No-op tasks end to end: this facade against plain Celery, same broker, same run.

    python bench/throughput.py [--tasks 100000] [--slow-tasks 10000] [--runs 3]

Every figure comes from one invocation, on a private redis-server, with two workers on
this machine and tasks published from one process until each has run:

* mutitask_celery at ``ChannelSize`` 50 (the seed's default: its server and device
  scripts as written) and at 1000: the legacy server (``Terminal.run`` over a generator)
  and two legacy devices with the default save function;
* the same at 1000 with one task a message, so what batching brings is visible;
* plain Celery: ``apply_async`` in a loop and two workers with Celery's defaults.

The original MutiTask's ceiling (it sleeps 50 ms after every task) is 20 tasks/s. Prints
min / median / max tasks/s over the runs and the ratios to plain Celery, and draws
bench/results/throughput.png with matplotlib (skipped when it is not installed).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import time
from collections.abc import Callable

from common import HERE, devices_up, parse_args, private_redis, processes, spread, wait_for

from mutitask_celery.tools.processes import worker_command

ORIGINAL_CEILING = 20.0


def ours(count: int, channel_size: int, max_batch: int | None = None) -> float:
    from mutitask_celery import runtime
    from mutitask_celery.books import ledger
    from mutitask_celery.serving import serve

    runtime.ledger().client.flushdb()
    host = socket.gethostname()
    cmds = [[sys.executable, str(HERE / "noop_device.py"), str(n)] for n in (1, 2)]
    saved = ledger.MAX_BATCH
    if max_batch is not None:
        ledger.MAX_BATCH = max_batch  # this process is the server: its messages carry one task
    try:
        with processes(cmds):
            devices_up([f"device1@{host}", f"device2@{host}"])
            start = time.perf_counter()
            summary = serve.serve(
                (str(n) for n in range(count)), channel_size=channel_size, stdin=io.StringIO(""), out=io.StringIO()
            )
            elapsed = time.perf_counter() - start
    finally:
        ledger.MAX_BATCH = saved
    assert summary.succeeded == count, summary
    return count / elapsed


def plain(count: int) -> float:
    from mutitask_celery import runtime

    client = runtime.ledger().client
    client.flushdb()
    sys.path.insert(0, str(HERE))
    import plain_celery_app

    host = socket.gethostname()
    names = [f"plain1@{host}", f"plain2@{host}"]
    cmds = [
        worker_command(name, queues="plain", pool=None, app="plain_celery_app", extra=["-l", "WARNING"])
        for name in names
    ]
    with processes(cmds, env={"PYTHONPATH": str(HERE)}):
        devices_up(names, app=plain_celery_app.app)
        start = time.perf_counter()
        for n in range(count):
            plain_celery_app.noop.apply_async((n,), queue="plain")
        wait_for(lambda: int(client.get("plain:done") or 0) >= count, 600, "plain Celery to finish")
        elapsed = time.perf_counter() - start
    return count / elapsed


def chart(rows: list[tuple[str, tuple[float, float, float]]], path: str) -> None:
    """Bars of the medians, min to max as error bars, on a log scale (plain Celery is 20x smaller)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart; pip install matplotlib)")
        return
    labels = [label for label, _ in rows]
    medians = [m for _, (_, m, _) in rows]
    low = [m - lo for _, (lo, m, _) in rows]
    high = [hi - m for _, (_, m, hi) in rows]
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(rows) + 1.6))
    ax.barh(labels, medians, xerr=[low, high], color="#3c6ebe", capsize=4)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("no-op tasks/s, end to end (median; bars: min to max)")
    ax.set_title("2 workers, local Redis, one machine of 2 cores")
    for y, value in enumerate(medians):
        ax.text(value * 1.08, y, f"{value:,.0f}", va="center")
    ax.set_xlim(right=max(medians) * 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart: {path}")


def measure(runs: int, what: Callable[[], float]) -> tuple[float, float, float]:
    return spread([what() for _ in range(runs)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks a run of mutitask_celery (batched)")
    parser.add_argument(
        "--slow-tasks",
        type=int,
        default=10_000,
        help="tasks a run of plain Celery and of mutitask_celery one task a message",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--chart", help="where to save the chart (default: bench/results/throughput.png; none with --quick)"
    )
    args = parse_args(parser, tasks=300, slow_tasks=300, runs=1)
    with private_redis():
        rows = [
            ("mutitask_celery, ChannelSize 50 (the seed's default)", measure(args.runs, lambda: ours(args.tasks, 50))),
            ("mutitask_celery, ChannelSize 1000", measure(args.runs, lambda: ours(args.tasks, 1000))),
            (
                "mutitask_celery, ChannelSize 1000, one task a message",
                measure(args.runs, lambda: ours(args.slow_tasks, 1000, max_batch=1)),
            ),
            ("plain Celery (defaults)", measure(args.runs, lambda: plain(args.slow_tasks))),
        ]
    celery = rows[-1][1]
    print(f"no-op tasks/s over {args.runs} run(s) (min / median / max); ratio to plain Celery's median:")
    width = max(len(label) for label, _ in rows)
    for label, (lo, med, hi) in rows:
        print(f"  {label:<{width}}  {lo:>8.0f} {med:>8.0f} {hi:>8.0f}   {med / celery[1]:6.1f}x")
    print(f"  {'original MutiTask (ceiling: 50 ms sleep per task)':<{width}}  {ORIGINAL_CEILING:>8.0f}")
    print(
        f"worst against best, ChannelSize 50: {rows[0][1][0] / celery[2]:.1f}x; "
        f"ChannelSize 1000: {rows[1][1][0] / celery[2]:.1f}x"
    )
    path = args.chart or (None if args.quick else str(HERE / "results" / "throughput.png"))
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        chart([*rows, ("original MutiTask (ceiling)", (ORIGINAL_CEILING,) * 3)], path)


if __name__ == "__main__":
    main()
