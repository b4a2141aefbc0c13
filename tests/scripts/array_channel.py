"""Loaded by ``celery -A mutitask_celery worker -I array_channel``: a slow device of channel 1
for numpy arrays (native form). Each task takes ``ARRAY_TASK_DELAY`` seconds (0.1 by default)
and returns the array's sum, so a run holds many big tasks in flight at once."""

import os
import time

import mutitask_celery

DELAY = float(os.environ.get("ARRAY_TASK_DELAY", "0.1"))


def work(array):
    time.sleep(DELAY)
    return int(array.sum())


mutitask_celery.register_channel(1, work, task_format="native")
