"""The chaos soak's job (bench/chaos.py).

Imported by ``celery -A mutitask_celery worker -I chaos_job``, it makes the worker a device
of channel 1: a task ``p<i>`` is a poison task (it kills the process running it, as a
segfault would), a task ``t<i>`` returns itself. Run as a script, it is the server:
``python bench/chaos_job.py COUNT POISON_EVERY CHANNEL_SIZE`` feeds COUNT tasks, one in
POISON_EVERY a poison task, and prints the summary as a JSON line.
"""

from __future__ import annotations

import json
import os
import sys

import mutitask_celery


def work(task: str) -> str:
    if task.startswith("p"):
        os._exit(3)
    return task


def name(i: int, poison_every: int) -> str:
    """Task i of the soak: one in ``poison_every`` is poison."""
    return f"p{i}" if poison_every and i % poison_every == poison_every // 2 else f"t{i}"


mutitask_celery.register_channel(1, work)

if __name__ == "__main__":
    from Mutitask.server import BaseConfig, Terminal

    count, poison_every, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    summary = Terminal(baseConfig=BaseConfig(deviceNumb=8, ChannelSize=size)).run(
        name(i, poison_every) for i in range(count)
    )
    print(
        "SUMMARY "
        + json.dumps(
            {
                "published": summary.published,
                "succeeded": summary.succeeded,
                "failed": summary.failed,
                "duplicates": sum(c.duplicates for c in summary.channels.values()),
            }
        ),
        flush=True,
    )
