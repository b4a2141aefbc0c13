"""Loaded by ``celery -A mutitask_celery worker -I hold_channel``: channel 1, results saved to Redis.

The task function prints ``START <task> <time>``; a task starting with "hold" then waits until
the file $RELEASE_FILE exists; every task returns itself.
"""

import os
import time

import mutitask_celery


def work(task):
    print(f"START {task} {time.time()!r}", flush=True)
    while task.startswith("hold") and not os.path.exists(os.environ["RELEASE_FILE"]):
        time.sleep(0.05)  # a task that runs until the test lets it go
    return task


mutitask_celery.register_channel(1, work)
