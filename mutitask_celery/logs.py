"""Make the package's log lines visible in a script that never set up logging.

A legacy MutiTask script is an application that never calls
``logging.basicConfig``: without a handler, Python shows only warnings, bare,
and the run's progress lines (INFO) would vanish. So a run gives the package's
logger one stderr handler, but only when nobody configured logging, so an
application's own set-up always wins.
"""

from __future__ import annotations

import logging
import sys

PACKAGE_LOGGER = "mutitask_celery"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def ensure_visible(level: int = logging.INFO) -> None:
    """Attach a stderr handler to the package's logger unless logging is already set up."""
    package = logging.getLogger(PACKAGE_LOGGER)
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    package.addHandler(handler)
    if package.level == logging.NOTSET or package.level > level:
        package.setLevel(level)
