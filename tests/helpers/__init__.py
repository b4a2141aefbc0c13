"""What the tests import: ``from helpers.processes import Processes``.

``tests/`` is on ``sys.path`` while pytest runs (``conftest.py`` lives there, and pytest's
default import mode puts its folder first), so every test folder imports these the same way.

- :mod:`helpers.paths`: where things are (the repository, the scripts the tests run, artifacts);
- :mod:`helpers.processes`: ``Processes``, the real processes a test starts and always stops;
- :mod:`helpers.waits`: ``wait_until`` (a deadline and growing delays) and ``device_is_up``;
- :mod:`helpers.settings`: ``fresh_settings`` and ``FAST`` (a silent device dead after 3 s);
- :mod:`helpers.services`: the servers behind the fixtures (the session's redis-server, a
  restartable one, RabbitMQ and its vhosts, the ``Broker`` a test runs on);
- :mod:`helpers.runs`: a server run in a thread, the poison-task run;
- :mod:`helpers.sentinels`: a Redis Sentinel group (the ``sentinel_group`` fixture), redis-py's
  ``Sentinel`` over it, and how long a promotion took;
- :mod:`helpers.browser`, :mod:`helpers.netns`, :mod:`helpers.shipped_redis`: headless
  Chromium, hosts in network namespaces, Redis from the shipped config.

The scripts the tests run as processes are not here: they are in ``tests/scripts/``.
"""
