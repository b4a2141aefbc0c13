"""A device's side: the Celery worker (``worker``), the one task it runs (``tasks``), what it
does at start and stop (``lifecycle``: heartbeat, reaping, wanted state), and the tuning of
how much it holds (``prefetch``) and of what runs alone (``isolation``).
"""
