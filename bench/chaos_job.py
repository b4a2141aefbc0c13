"""The chaos soak's job (bench/chaos.py).

Imported by ``celery -A mutitask_celery worker -I chaos_job``, it makes the worker a device
of channels 1 and 2: a task ``p<i>`` is a poison task (it kills the process running it, as a
segfault would), a task ``f<i>`` fails (returns None) until the file ``$CHAOS_FAIL_FLAG``
exists (the soak reloads those from the dead-letter store mid-run), a task ``t<i>`` returns
itself. One task in 20 comes as ``(name, 70,000 bytes)`` (native form): big, kept in the
books as a binary frame and carried by reference. Channel 1 keeps results with the default
save function (``ResultChannel1``); channel 2 has a user's save function that appends each
result as a line to ``$CHAOS_SAVE_FILE``, so the soak counts what a save function saved
twice.

Run as a script, it is the server: ``python bench/chaos_job.py COUNT POISON_EVERY FAIL_EVERY
CHANNEL_SIZE`` feeds task i of COUNT to channel 1 when i is even and to channel 2 when it is
odd, and prints the summary as a JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import mutitask_celery

CHANNELS = (1, 2)
BIG_EVERY = 20  # one task in N carries more data than a message holds (messages.REF_BYTES): by reference
PAD = 70_000


def work(task: str | tuple[str, bytes]) -> str | None:
    if isinstance(task, tuple):  # a big task: its name, and its data (not part of its name)
        task = task[0]
    if task.startswith("p"):
        os._exit(3)
    if task.startswith("f") and not os.path.exists(os.environ.get("CHAOS_FAIL_FLAG", "")):
        return None
    return task


def save(result: str) -> None:
    """Append the result as one line (one write: lines from several devices never interleave)."""
    fd = os.open(os.environ["CHAOS_SAVE_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{result}\n".encode())
    finally:
        os.close(fd)


def name(i: int, poison_every: int, fail_every: int = 0) -> str:
    """Task i of the soak: one in ``poison_every`` is poison, one in ``fail_every`` fails until reloaded."""
    if poison_every and i % poison_every == poison_every // 2:
        return f"p{i}"
    if fail_every and i % fail_every == fail_every // 3:
        return f"f{i}"
    return f"t{i}"


def channel_of(i: int) -> int:
    return CHANNELS[i % len(CHANNELS)]


def tasks_of(channel: int, count: int, poison_every: int, fail_every: int) -> Iterator[str | tuple[str, bytes]]:
    """The channel's share of the soak's ``count`` tasks, in order."""
    return (padded(name(i, poison_every, fail_every), i) for i in range(count) if channel_of(i) == channel)


def padded(task: str, i: int) -> str | tuple[str, bytes]:
    """Task ``i`` as fed: one in :data:`BIG_EVERY` with :data:`PAD` bytes of data, so the soak
    sends big tasks (kept in the books as binary frames, by reference in their messages)
    beside small ones."""
    return (task, i.to_bytes(4, "big") * (PAD // 4)) if i % BIG_EVERY == 7 else task


mutitask_celery.register_channel(1, work, task_format="native")
mutitask_celery.register_channel(2, work, save_function=save, task_format="native")

if __name__ == "__main__":
    from Mutitask.server import BaseConfig, Terminal

    count, poison_every, fail_every, size = (int(a) for a in sys.argv[1:5])
    summary = Terminal(baseConfig=BaseConfig(deviceNumb=8, ChannelSize=size)).run(
        [tasks_of(ch, count, poison_every, fail_every) for ch in CHANNELS]
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
