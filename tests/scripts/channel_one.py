"""Loaded by ``celery -A mutitask_celery worker -I channel_one``: makes the worker a device of channel 1."""

import os
import time

import mutitask_celery


def work(task):
    time.sleep(0.02)
    return [os.environ.get("DEVICE_TAG", "celery"), task]


mutitask_celery.register_channel(1, work)
