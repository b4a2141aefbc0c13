"""The guide's task module (docs/deployment.md, "Devices as services"), for the containers:
``install -D -m 644 deploy/mytasks.example.py app/mytasks.py`` puts it where compose.yaml's
devices import it (``-I mytasks``, from ``/opt/mutitask/app``). Replace it with your own;
a Kubernetes device's image carries it instead (docs/deployment.md, "Containers and Kubernetes").
"""

import mutitask_celery


def work(task):
    return task.upper()


def measure(task):
    return len(task)


mutitask_celery.register_channel(1, work)  # also save_function=, task_format=, retries=, retry_backoff=
mutitask_celery.register_channel(2, measure)
