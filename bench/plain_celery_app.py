"""Plain Celery, as its defaults come, for comparison: ``celery -A plain_celery_app worker``.

The task counts itself in Redis (one INCR, as cheap as our device's own write)
so the benchmark knows when every task has run: an empty queue would not say so.
"""

import os

import redis
from celery import Celery

URL = os.environ["MUTITASK_REDIS_URL"]
app = Celery("plain", broker=URL)
counter = redis.Redis.from_url(URL)


@app.task(name="plain.noop", ignore_result=True)
def noop(x):
    counter.incr("plain:done")
    return x
