"""Loaded by ``celery -A mutitask_celery worker -I poison_tasks``: a device of channel 1 whose
task "poison" kills the process running it (``os._exit``, as a segfault would); the task "long"
takes $LONG_SECONDS (30); any other task takes $TASK_SECONDS (0.05) and returns itself."""

import os
import time

import mutitask_celery


def work(task):
    if task == "poison":
        os._exit(3)
    seconds = os.environ.get("LONG_SECONDS", "30") if task == "long" else os.environ.get("TASK_SECONDS", "0.05")
    time.sleep(float(seconds))
    return task


mutitask_celery.register_channel(1, work)
