"""Loaded by ``celery -A mutitask_celery worker -I padded_channel``: a device of channel 1 whose
results are big (``RESULT_PAD`` bytes of padding, 4000 by default), to fill a Redis with a
``maxmemory``; tasks that are multiples of 10 fail (dead-lettered)."""

import os

import mutitask_celery

PAD = int(os.environ.get("RESULT_PAD", "4000"))


def work(task):
    if int(task) % 10 == 0:
        return None
    return task + "|" + "x" * PAD


mutitask_celery.register_channel(1, work)
