"""``python -m mutitask_celery``: the ``mutitask`` command."""

from mutitask_celery.tools.cli import main

raise SystemExit(main())
