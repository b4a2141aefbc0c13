"""Your settings for mutitask_celery and Celery, in one place: copy this file as
``celeryconfig.py`` (the name Celery looks for) and uncomment what you need.

The app loads this module with ``config_from_object('celeryconfig', silent=True)``:
keep it in the directory you start the server and the devices from (or anywhere on
``PYTHONPATH``). Everything here is optional; the environment variables
(``MUTITASK_REDIS_URL``, ``MUTITASK_BROKER_URL``) override it, and the legacy
``BaseConfig(host=..., port=..., db=..., password=...)`` arguments override both.
Never commit a password here: use the environment.
"""

# Redis holding the dead-letter store, results and the books (and, by default, the broker):
# mutitask_redis_url = "redis://127.0.0.1:6379/0"

# A broker other than that Redis (Celery's own setting name also works: broker_url):
# mutitask_broker_url = "amqp://guest@127.0.0.1:5672//"

# Put in front of every Redis key of this deployment (kombu's too), so that another
# deployment can share the same Redis without seeing it (every process of one deployment
# needs the same prefix):
# mutitask_key_prefix = "team2:"

# RabbitMQ only: the channel queues as quorum queues (a cluster of 3 or more nodes; the
# same on every host, see docs/deployment.md):
# mutitask_quorum_queues = True

# Modules that call mutitask_celery.register_channel(...) at import, so that
# `celery -A mutitask_celery worker -Q channel1` knows the channel's function:
# imports = ["mytasks"]

# Any Celery setting, e.g. the visibility timeout of a Redis broker (seconds):
# broker_transport_options = {"visibility_timeout": 3600}
