"""A device's side: the Celery worker (``worker``), the one task it runs (``tasks``), and the
device itself (``lifecycle``: one ``DeviceLife`` per worker, from start to stop: heartbeat,
reaping), which owns its wanted state (``wanted``), its rate limits (``pacing``), what runs
alone (``isolation``), how much it holds (``prefetch``) and its late task functions
(``time_limits``). Only workers load these modules (the app's ``include``).
"""
