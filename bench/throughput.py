"""No-op tasks end to end: this facade against plain Celery, same broker, same run.

    python bench/throughput.py [--tasks 20000] [--runs 3] [--channel-size 1000]

Both sides: a private redis-server, two workers on this machine, tasks
published from one process until each has run. Ours: the legacy server
(``Terminal.run`` over a generator) and two legacy devices with the default save
function. Plain Celery: ``apply_async`` in a loop and two workers with Celery's
defaults. The original MutiTask's ceiling (it sleeps 50 ms after every task) is
20 tasks/s. Prints min / median / max tasks/s and the ratios, and draws
bench/results/throughput.png.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

from common import HERE, devices_up, parse_args, private_redis, processes, spread, wait_for

ORIGINAL_CEILING = 20.0


def ours(count: int, channel_size: int) -> float:
    import socket

    from mutitask_celery import runtime, serve

    runtime.ledger().client.flushdb()
    host = socket.gethostname()
    cmds = [[sys.executable, str(HERE / "noop_device.py"), str(n)] for n in (1, 2)]
    with processes(cmds):
        devices_up([f"device1@{host}", f"device2@{host}"])
        start = time.perf_counter()
        summary = serve.serve((str(n) for n in range(count)), channel_size=channel_size,
                              stdin=io.StringIO(""), out=io.StringIO())
        elapsed = time.perf_counter() - start
    assert summary.succeeded == count, summary
    return count / elapsed


def plain(count: int) -> float:
    import socket

    from mutitask_celery import runtime

    client = runtime.ledger().client
    client.flushdb()
    sys.path.insert(0, str(HERE))
    import plain_celery_app

    host = socket.gethostname()
    names = [f"plain1@{host}", f"plain2@{host}"]
    cmds = [[sys.executable, "-m", "celery", "-A", "plain_celery_app", "worker", "-Q", "plain", "-c", "1",
             "-n", name, "--without-mingle", "--without-gossip", "-l", "WARNING"] for name in names]
    with processes(cmds, env={"PYTHONPATH": str(HERE)}):
        devices_up(names, app=plain_celery_app.app)
        start = time.perf_counter()
        for n in range(count):
            plain_celery_app.noop.apply_async((n,), queue="plain")
        wait_for(lambda: int(client.get("plain:done") or 0) >= count, 600, "plain Celery to finish")
        elapsed = time.perf_counter() - start
    return count / elapsed


def chart(rows: list[tuple[str, float]], path: str) -> None:
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("(pillow not installed: no chart)")
        return
    width, bar_h, gap, left = 760, 44, 18, 230
    height = gap + len(rows) * (bar_h + gap) + 30
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    top = max(v for _, v in rows)
    for i, (label, value) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = max(2, int((width - left - 110) * value / top))
        draw.rectangle([left, y, left + w, y + bar_h], fill=(60, 110, 190))
        draw.text((10, y + bar_h // 3), label, fill="black")
        draw.text((left + w + 8, y + bar_h // 3), f"{value:,.0f} tasks/s", fill="black")
    draw.text((10, height - 22), "no-op tasks end to end, 2 workers, local Redis, median of runs", fill="gray")
    img.save(path)
    print(f"chart: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--channel-size", type=int, default=1000)
    parser.add_argument("--chart", help="where to save the chart (default: bench/results/throughput.png; "
                        "none with --quick)")
    args = parse_args(parser, tasks=300, runs=1)
    with private_redis():
        mine = [ours(args.tasks, args.channel_size) for _ in range(args.runs)]
        theirs = [plain(args.tasks) for _ in range(args.runs)]
    m, p = spread(mine), spread(theirs)
    print(f"{args.tasks} no-op tasks, {args.runs} runs, tasks/s (min / median / max):")
    print(f"  mutitask_celery   {m[0]:>8.0f} {m[1]:>8.0f} {m[2]:>8.0f}")
    print(f"  plain Celery      {p[0]:>8.0f} {p[1]:>8.0f} {p[2]:>8.0f}")
    print(f"  original MutiTask {ORIGINAL_CEILING:>8.0f} (ceiling: 50 ms sleep per task)")
    print(f"ratio to plain Celery: {m[1] / p[1]:.1f}x (median), {m[0] / p[2]:.1f}x (worst against best)")
    print(f"ratio to the original: {m[1] / ORIGINAL_CEILING:.0f}x")
    path = args.chart or (None if args.quick else str(HERE / "results" / "throughput.png"))
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        chart([("mutitask_celery", m[1]), ("plain Celery", p[1]), ("original MutiTask", ORIGINAL_CEILING)], path)


if __name__ == "__main__":
    main()
