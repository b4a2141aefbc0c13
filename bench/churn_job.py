"""The churn benchmark's job (bench/churn.py): imported by ``celery -A mutitask_celery worker -I
churn_job``, it makes the worker a device of channel 1 whose task sleeps $CHURN_TASK_SECONDS
(0.05) and returns itself; results are kept with the default save function (``ResultChannel1``)."""

from __future__ import annotations

import os
import time

import mutitask_celery

SECONDS = float(os.environ.get("CHURN_TASK_SECONDS", "0.05"))


def work(task: str) -> str:
    time.sleep(SECONDS)
    return task


mutitask_celery.register_channel(1, work)
