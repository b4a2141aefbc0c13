"""``python -m mutitask_celery``: the ``mutitask`` command."""

from .cli import main

raise SystemExit(main())
