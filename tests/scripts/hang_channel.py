"""Loaded by ``celery -A mutitask_celery worker -I hang_channel``: channel 1 with a time limit.

The task function prints ``START <task> <time>``; a task starting with "hang" then sleeps
$HANG_SECONDS (60); every task returns itself. $TIME_LIMIT (2) and $RETRIES (0) are
passed to register_channel.
"""

import os
import time

import mutitask_celery


def work(task):
    print(f"START {task} {time.time()!r}", flush=True)
    if task.startswith("hang"):
        time.sleep(float(os.environ.get("HANG_SECONDS", "60")))
    return task


mutitask_celery.register_channel(
    1,
    work,
    time_limit=float(os.environ.get("TIME_LIMIT", "2")),
    retries=int(os.environ.get("RETRIES", "0")),
    retry_backoff=0.01,
)
